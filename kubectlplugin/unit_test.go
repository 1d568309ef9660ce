package kubectlplugin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/localdns/localdns/nodecache"
	"github.com/localdns/localdns/webhook"
)

// These tests need no API server: the pure parts, and the decisions on the
// rendered overlays.

func TestExpandArgs(t *testing.T) {
	env := map[string]string{"POD_NAMESPACE": "localdns-system", "IMAGE": "localdns/stub:dev"}
	tests := []struct{ arg, want string }{
		{"--namespace=$(POD_NAMESPACE)", "--namespace=localdns-system"},
		{"--stub-image=$(IMAGE)", "--stub-image=localdns/stub:dev"},
		{"$(POD_NAMESPACE)/$(IMAGE)", "localdns-system/localdns/stub:dev"},
		{"--x=$(UNSET)", "--x=$(UNSET)"},
		{"--x=$$(POD_NAMESPACE)", "--x=$(POD_NAMESPACE)"},
		{"--x=$POD_NAMESPACE", "--x=$POD_NAMESPACE"},
		{"--plain", "--plain"},
	}
	for _, tt := range tests {
		if got := expandArgs([]string{tt.arg}, env)[0]; got != tt.want {
			t.Errorf("expandArgs(%q) = %q, want %q", tt.arg, got, tt.want)
		}
	}
}

func TestLabelSetAt(t *testing.T) {
	at := func(s string) *metav1.Time {
		tm := metav1.NewTime(time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC).Add(mustDuration(t, s)))
		return &tm
	}
	owns := metav1.NewFieldsV1(`{"f:metadata":{"f:labels":{".":{},"f:localdns.io/inject":{}}}}`)
	other := metav1.NewFieldsV1(`{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{}}`)
	tests := []struct {
		name    string
		entries []metav1.ManagedFieldsEntry
		want    *metav1.Time
	}{
		{"none", nil, nil},
		{"another label", []metav1.ManagedFieldsEntry{{Manager: "a", Time: at("1h"), FieldsV1: other}}, nil},
		{"one owner", []metav1.ManagedFieldsEntry{{Manager: "a", Time: at("0s"), FieldsV1: other}, {Manager: "kubectl-label", Time: at("2h"), FieldsV1: owns}}, at("2h")},
		{"shared, the latest", []metav1.ManagedFieldsEntry{{Manager: "a", Time: at("3h"), FieldsV1: owns}, {Manager: "b", Time: at("1h"), FieldsV1: owns}}, at("3h")},
		{"no time", []metav1.ManagedFieldsEntry{{Manager: "a", FieldsV1: owns}}, nil},
		{"not JSON", []metav1.ManagedFieldsEntry{{Manager: "a", Time: at("1h"), FieldsV1: metav1.NewFieldsV1("{")}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := labelSetAt(tt.entries, webhook.LabelInject)
			var want time.Time
			if tt.want != nil {
				want = tt.want.Time
			}
			if !got.Equal(want) {
				t.Errorf("labelSetAt = %v, want %v", got, want)
			}
		})
	}
}

func mustDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// shippedInstallation reads the webhook Deployment and configuration of a
// rendered overlay, as the cluster would hold them.
func shippedInstallation(t *testing.T, overlay string) *installation {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "manifests", "testdata", overlay+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	in := &installation{namespace: DefaultSystemNamespace, kubeDNSIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatal(err)
		}
		switch head.Kind {
		case "Deployment":
			var d appsv1.Deployment
			if err := yaml.Unmarshal([]byte(doc), &d); err != nil {
				t.Fatal(err)
			}
			if d.Name == webhookAppName {
				in.webhook = &d
			}
		case "MutatingWebhookConfiguration":
			in.webhookConfig = &admissionregistrationv1.MutatingWebhookConfiguration{}
			if err := yaml.Unmarshal([]byte(doc), in.webhookConfig); err != nil {
				t.Fatal(err)
			}
		}
	}
	if in.webhook == nil || in.webhookConfig == nil {
		t.Fatalf("overlay %s: webhook Deployment or configuration missing", overlay)
	}
	if in.config, err = webhookFlags(in.webhook); err != nil {
		t.Fatal(err)
	}
	return in
}

// TestJudgeShippedOverlays applies the API server's selection and the
// webhook's decision to pods of every opt-in state, under both overlays.
func TestJudgeShippedOverlays(t *testing.T) {
	ns := func(name, inject string) *corev1.Namespace {
		n := namespace(name, inject)
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		n.Labels[corev1.LabelMetadataName] = name // the API server sets it
		return n
	}
	podLabelled := func(labels map[string]string) *corev1.Pod { return pod("", "p", labels) }
	in, out := map[string]string{webhook.LabelInject: "true"}, map[string]string{webhook.LabelInject: "false"}
	own := map[string]string{"app.kubernetes.io/part-of": "localdns"}
	hostNetwork := podLabelled(nil)
	hostNetwork.Spec.HostNetwork = true
	tests := []struct {
		overlay string
		name    string
		pod     *corev1.Pod
		ns      *corev1.Namespace
		entry   string
		reason  string // "" when injected
		optIn   optIn
	}{
		{"default", "enabled namespace", podLabelled(nil), ns("a", "enabled"), "namespace.localdns.io", "", optInNamespaceLabel},
		{"default", "unlabelled namespace", podLabelled(nil), ns("a", ""), "", string(webhook.SkipNotOptedIn), ""},
		{"default", "unlabelled namespace, pod in", podLabelled(in), ns("a", ""), "pod.localdns.io", "", optInPodLabel},
		{"default", "disabled namespace, pod in", podLabelled(in), ns("a", "disabled"), "pod.localdns.io", "", optInPodLabel},
		{"default", "enabled namespace, pod out", podLabelled(out), ns("a", "enabled"), "", string(webhook.SkipOptedOut), ""},
		{"default", "localdns's own pod", podLabelled(own), ns("a", "enabled"), "", ReasonNotSelected, ""},
		{"default", "kube-system, pod in", podLabelled(in), ns("kube-system", ""), "", string(webhook.SkipSystemNamespace), ""},
		{"default", "localdns-system", podLabelled(nil), ns("localdns-system", "disabled"), "", string(webhook.SkipOwnNamespace), ""},
		{"default", "hostNetwork", hostNetwork, ns("a", "enabled"), "namespace.localdns.io", string(webhook.SkipHostNetwork), ""},
		{"cluster-wide", "unlabelled namespace", podLabelled(nil), ns("a", ""), "namespace.localdns.io", "", optInClusterWide},
		{"cluster-wide", "enabled namespace", podLabelled(nil), ns("a", "enabled"), "namespace.localdns.io", "", optInClusterWide},
		{"cluster-wide", "disabled namespace", podLabelled(nil), ns("a", "disabled"), "", string(webhook.SkipOptedOut), ""},
		{"cluster-wide", "disabled namespace, pod in", podLabelled(in), ns("a", "disabled"), "pod.localdns.io", "", optInPodLabel},
		{"cluster-wide", "unlabelled namespace, pod out", podLabelled(out), ns("a", ""), "", string(webhook.SkipOptedOut), ""},
	}
	installations := map[string]*installation{"default": shippedInstallation(t, "default"), "cluster-wide": shippedInstallation(t, "cluster-wide")}
	for _, tt := range tests {
		t.Run(tt.overlay+"/"+tt.name, func(t *testing.T) {
			in := installations[tt.overlay]
			v := in.judge(tt.pod, tt.ns)
			if v.entry != tt.entry || v.reason() != tt.reason || v.inject() != (tt.reason == "") {
				t.Errorf("judge: entry %q reason %q inject %v, want entry %q reason %q", v.entry, v.reason(), v.inject(), tt.entry, tt.reason)
			}
			if tt.optIn != "" {
				if got := in.optInOf(tt.pod, tt.ns); got != tt.optIn {
					t.Errorf("optInOf = %q, want %q", got, tt.optIn)
				}
			}
		})
	}
}

func TestCheckMode(t *testing.T) {
	defaultOverlay, clusterWide := shippedInstallation(t, "default"), shippedInstallation(t, "cluster-wide")
	mismatch := *clusterWide
	mismatch.webhookConfig = defaultOverlay.webhookConfig // --cluster-wide, namespace opt-in selectors
	tests := []struct {
		name string
		in   *installation
		want State
	}{
		{"default", defaultOverlay, StateOK},
		{"cluster-wide", clusterWide, StateOK},
		{"flags and selectors disagree", &mismatch, StateWarn},
	}
	for _, tt := range tests {
		if got := checkMode(tt.in); got.State != tt.want {
			t.Errorf("%s: %+v, want %s", tt.name, got, tt.want)
		}
	}
}

func TestParseNodeCacheMetrics(t *testing.T) {
	const text = `# TYPE localdns_nodecache_cache_hits_total counter
localdns_nodecache_cache_hits_total 90
# TYPE localdns_nodecache_cache_misses_total counter
localdns_nodecache_cache_misses_total 10
# TYPE localdns_nodecache_cache_stale_total counter
localdns_nodecache_cache_stale_total 3
# TYPE localdns_nodecache_requests_total counter
localdns_nodecache_requests_total{proto="udp",qtype="A",rcode="NOERROR"} 80
localdns_nodecache_requests_total{proto="udp",qtype="A",rcode="SERVFAIL"} 4
localdns_nodecache_requests_total{proto="tcp",qtype="AAAA",rcode="SERVFAIL"} 1
# TYPE localdns_nodecache_upstream_healthy gauge
localdns_nodecache_upstream_healthy{server="10.96.0.10:53"} 1
localdns_nodecache_upstream_healthy{server="10.96.0.11:53"} 0
`
	m, err := parseNodeCacheMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	ratio, servfail, stale, upstream := m.cells()
	if got, want := []string{ratio, servfail, stale, upstream}, []string{"90.0%", "5", "3", "1/2 healthy (down: 10.96.0.11:53)"}; !slices.Equal(got, want) {
		t.Errorf("cells %q, want %q", got, want)
	}

	fresh, err := parseNodeCacheMetrics(strings.NewReader("# TYPE localdns_nodecache_cache_hits_total counter\nlocaldns_nodecache_cache_hits_total 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if ratio, _, _, upstream := fresh.cells(); ratio != "-" || upstream != "0/0 healthy" {
		t.Errorf("no queries yet: ratio %q upstream %q, want - and 0/0 healthy", ratio, upstream)
	}

	for _, bad := range []string{"go_goroutines 12\n", "localdns_nodecache_cache_hits_total{ 1\n"} {
		if _, err := parseNodeCacheMetrics(strings.NewReader(bad)); err == nil {
			t.Errorf("parseNodeCacheMetrics(%q): no error", bad)
		}
	}
}

func TestOpsPort(t *testing.T) {
	probe := func(port intstr.IntOrString) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: port}}}
	}
	annotated := map[string]string{scrapePortAnnotation: "9300"}
	tests := []struct {
		name        string
		liveness    *corev1.Probe
		annotations map[string]string
		want        string
	}{
		{"liveness probe", probe(intstr.FromInt32(9999)), annotated, "9999"},
		{"named probe port, annotation", probe(intstr.FromString("ops")), annotated, "9300"},
		{"annotation", nil, annotated, "9300"},
		{"default", nil, nil, "9253"},
	}
	for _, tt := range tests {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: tt.annotations}}
		if got := opsPort(pod, &corev1.Container{LivenessProbe: tt.liveness}); got != tt.want {
			t.Errorf("%s: opsPort = %q, want %q", tt.name, got, tt.want)
		}
	}
}

// TestNodeCacheNames: the names the plugin reads are the node cache's.
func TestNodeCacheNames(t *testing.T) {
	if metricsPrefix != nodecache.MetricsNamespace {
		t.Errorf("metricsPrefix %q, the node cache uses %q", metricsPrefix, nodecache.MetricsNamespace)
	}
	if want := ":" + defaultOpsPort; nodecache.DefaultMetricsAddr != want {
		t.Errorf("defaultOpsPort %s, the node cache's default --metrics-addr is %s", defaultOpsPort, nodecache.DefaultMetricsAddr)
	}
}

func TestImageVersion(t *testing.T) {
	for image, want := range map[string]string{
		"localdns/nodecache:dev":                 "dev",
		"registry.example:5000/localdns/stub":    "latest",
		"registry.example:5000/localdns/stub:v2": "v2",
		"localdns/webhook@sha256:0123abcd":       "sha256:0123abcd",
	} {
		if got := imageVersion(image); got != want {
			t.Errorf("imageVersion(%q) = %q, want %q", image, got, want)
		}
	}
}

func TestCheckCABundle(t *testing.T) {
	now := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	ca := func(cn string, notBefore, notAfter time.Time) []byte {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: notBefore, NotAfter: notAfter,
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	year := 365 * 24 * time.Hour
	valid := ca("valid", now.Add(-year), now.Add(4*year))
	expired := ca("expired", now.Add(-2*year), now.Add(-time.Hour))
	soon := ca("soon", now.Add(-year), now.Add(10*24*time.Hour))
	future := ca("future", now.Add(time.Hour), now.Add(year))
	config := func(bundles ...[]byte) *admissionregistrationv1.MutatingWebhookConfiguration {
		whc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		for i, b := range bundles {
			whc.Webhooks = append(whc.Webhooks, admissionregistrationv1.MutatingWebhook{
				Name: string(rune('a'+i)) + ".localdns.io", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: b},
			})
		}
		return whc
	}
	tests := []struct {
		name   string
		whc    *admissionregistrationv1.MutatingWebhookConfiguration
		state  State
		detail string
	}{
		{"no configuration", nil, StateFail, "no webhook configuration"},
		{"not written yet", config(valid, nil), StateFail, "webhook b.localdns.io has no caBundle"},
		{"not PEM", config([]byte("garbage")), StateFail, "does not parse"},
		{"expired", config(expired), StateFail, `no CA of the bundle is valid now: CA "expired" expired 2026-12-31 (60m ago)`},
		{"not yet valid", config(future), StateFail, "no CA of the bundle is valid now"},
		{"expires within 30 days", config(soon), StateWarn, `expires soon: CA "soon" expires 2027-01-11 (in 10d)`},
		{"valid", config(valid, valid), StateOK, `CA "valid" expires 2030-12-31 (in 4y`},
		{"rotation: old expired, new valid", config(append(append([]byte{}, valid...), expired...)), StateOK, `CA "expired" expired`},
		{"entries differ", config(valid, soon), StateWarn, "webhooks a.localdns.io and b.localdns.io carry different caBundles"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := checkCABundle(tt.whc, now)
			if got.State != tt.state || !strings.Contains(got.Detail, tt.detail) {
				t.Errorf("checkCABundle: %s %q, want %s containing %q", got.State, got.Detail, tt.state, tt.detail)
			}
		})
	}
}

func TestValidOutput(t *testing.T) {
	for format, ok := range map[string]bool{"": true, "json": true, "yaml": true, "kyaml": true, "wide": false, "jsonpath={.x}": false} {
		if err := validOutput(format); (err == nil) != ok {
			t.Errorf("validOutput(%q) = %v", format, err)
		}
	}
}

// TestPortableImports: the plugin runs on operators' workstations (the krew
// manifest ships it for Linux, macOS and Windows), so it must not import the
// DNS side, which builds for Linux only. go list resolves the imports per
// platform without compiling.
func TestPortableImports(t *testing.T) {
	allowed := []string{
		"github.com/localdns/localdns/cmd/kubectl-localdns", "github.com/localdns/localdns/kubectlplugin",
		"github.com/localdns/localdns/webhook", "github.com/localdns/localdns/internal/cli", "github.com/localdns/localdns/internal/version",
		"github.com/localdns/localdns/internal/flagutil", "github.com/localdns/localdns/internal/contract",
	}
	for _, goos := range []string{"darwin", "windows"} {
		cmd := exec.Command("go", "list", "-deps", "../cmd/kubectl-localdns")
		cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH=amd64", "CGO_ENABLED=0")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("GOOS=%s go list -deps: %v", goos, err)
		}
		for _, pkg := range strings.Fields(string(out)) {
			if strings.HasPrefix(pkg, "github.com/localdns/localdns/") && !slices.Contains(allowed, pkg) {
				t.Errorf("GOOS=%s: the plugin imports %s", goos, pkg)
			}
		}
	}
}

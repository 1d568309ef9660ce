package webhook

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	testKubeDNS = "10.96.0.10"
	testNS      = "team-a"
)

// testConfig parses flags the way the binary does, with no POD_NAMESPACE.
func testConfig(t *testing.T, args ...string) Config {
	t.Helper()
	cfg, err := Parse("test", args, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	return cfg
}

// podOpt edits a test pod.
type podOpt func(*corev1.Pod)

func newPod(opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: testNS},
		Spec: corev1.PodSpec{
			DNSPolicy:  corev1.DNSClusterFirst,
			Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1.0"}},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func annotate(kv ...string) podOpt {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		for i := 0; i < len(kv); i += 2 {
			p.Annotations[kv[i]] = kv[i+1]
		}
	}
}

func podLabel(v string) podOpt {
	return func(p *corev1.Pod) { p.Labels = map[string]string{LabelInject: v} }
}

func dnsPolicy(d corev1.DNSPolicy) podOpt { return func(p *corev1.Pod) { p.Spec.DNSPolicy = d } }

func hostNetwork(p *corev1.Pod) { p.Spec.HostNetwork = true }

func osName(name corev1.OSName) podOpt {
	return func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: name} }
}

func nodeSelector(key, value string) podOpt {
	return func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{key: value} }
}

func image(img string) podOpt { return func(p *corev1.Pod) { p.Spec.Containers[0].Image = img } }

func ownDNSConfig(c corev1.PodDNSConfig) podOpt {
	return func(p *corev1.Pod) { p.Spec.DNSConfig = &c }
}

func enabledNS() Namespace {
	return Namespace{Name: testNS, Labels: map[string]string{LabelInject: namespaceEnabled}}
}

func nsWith(name, label string) Namespace {
	ns := Namespace{Name: name}
	if label != "" {
		ns.Labels = map[string]string{LabelInject: label}
	}
	return ns
}

var nativeEnv = Env{KubeDNSIPs: ips(testKubeDNS), NativeSidecars: true}

// ips parses addresses, as the kube-dns Service's clusterIPs.
func ips(list ...string) []netip.Addr {
	out := make([]netip.Addr, len(list))
	for i, s := range list {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// optionString renders options as resolv.conf does: "ndots:5 timeout:1 ...".
func optionString(opts []corev1.PodDNSConfigOption) string {
	parts := make([]string, 0, len(opts))
	for _, o := range opts {
		if o.Value == nil {
			parts = append(parts, o.Name)
			continue
		}
		parts = append(parts, o.Name+":"+*o.Value)
	}
	return strings.Join(parts, " ")
}

// TestDecideOptIn covers every opt-in combination and every skip reason.
func TestDecideOptIn(t *testing.T) {
	t.Parallel()
	stubContainer := func(p *corev1.Pod) {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: StubContainerName, Image: "x"})
	}
	stubInit := func(p *corev1.Pod) {
		p.Spec.InitContainers = []corev1.Container{{Name: StubContainerName, Image: "x"}}
	}
	tests := []struct {
		name     string
		flags    []string
		pod      *corev1.Pod
		ns       Namespace
		env      Env
		want     SkipReason // "" = inject
		warnings []string   // substrings, one per expected warning
	}{
		{name: "namespace enabled", pod: newPod(), ns: enabledNS(), env: nativeEnv},
		{name: "namespace unlabelled", pod: newPod(), ns: nsWith(testNS, ""), env: nativeEnv, want: SkipNotOptedIn},
		{name: "namespace disabled", pod: newPod(), ns: nsWith(testNS, namespaceDisabled), env: nativeEnv, want: SkipOptedOut},
		{name: "pod true in unlabelled namespace", pod: newPod(podLabel("true")), ns: nsWith(testNS, ""), env: nativeEnv},
		{name: "pod true in disabled namespace", pod: newPod(podLabel("true")), ns: nsWith(testNS, namespaceDisabled), env: nativeEnv},
		{name: "pod false in enabled namespace", pod: newPod(podLabel("false")), ns: enabledNS(), env: nativeEnv, want: SkipOptedOut},
		{name: "cluster-wide unlabelled namespace", flags: []string{"--cluster-wide"}, pod: newPod(), ns: nsWith(testNS, ""), env: nativeEnv},
		{name: "cluster-wide disabled namespace", flags: []string{"--cluster-wide"}, pod: newPod(), ns: nsWith(testNS, namespaceDisabled), env: nativeEnv, want: SkipOptedOut},
		{name: "cluster-wide pod false", flags: []string{"--cluster-wide"}, pod: newPod(podLabel("false")), ns: nsWith(testNS, ""), env: nativeEnv, want: SkipOptedOut},
		{name: "cluster-wide pod true in disabled namespace", flags: []string{"--cluster-wide"}, pod: newPod(podLabel("true")), ns: nsWith(testNS, namespaceDisabled), env: nativeEnv},
		{
			name: "bad pod label value is ignored with a warning", pod: newPod(podLabel("yes")), ns: nsWith(testNS, ""), env: nativeEnv,
			want: SkipNotOptedIn, warnings: []string{`pod label localdns.io/inject="yes"`},
		},
		{
			name: "bad namespace label value is ignored with a warning", pod: newPod(), ns: nsWith(testNS, "on"), env: nativeEnv,
			want: SkipNotOptedIn, warnings: []string{`namespace label localdns.io/inject="on"`},
		},
		{name: "kube-system", pod: newPod(podLabel("true")), ns: nsWith("kube-system", namespaceEnabled), env: nativeEnv, want: SkipSystemNamespace},
		{name: "own namespace", pod: newPod(podLabel("true")), ns: nsWith("localdns-system", namespaceEnabled), env: nativeEnv, want: SkipOwnNamespace},
		{name: "own namespace from --namespace", flags: []string{"--namespace=dns"}, pod: newPod(), ns: nsWith("dns", namespaceEnabled), env: nativeEnv, want: SkipOwnNamespace},
		{name: "already injected", pod: newPod(annotate(AnnotationInjected, "nodecache")), ns: enabledNS(), env: nativeEnv, want: SkipAlreadyInjected},
		{name: "dnsPolicy Default", pod: newPod(dnsPolicy(corev1.DNSDefault)), ns: enabledNS(), env: nativeEnv, want: SkipDNSPolicy},
		{name: "dnsPolicy None", pod: newPod(dnsPolicy(corev1.DNSNone)), ns: enabledNS(), env: nativeEnv, want: SkipDNSPolicy},
		{name: "dnsPolicy empty means ClusterFirst", pod: newPod(dnsPolicy("")), ns: enabledNS(), env: nativeEnv},
		{name: "hostNetwork with ClusterFirst", pod: newPod(hostNetwork), ns: enabledNS(), env: nativeEnv, want: SkipHostNetwork},
		{name: "hostNetwork with ClusterFirstWithHostNet", pod: newPod(hostNetwork, dnsPolicy(corev1.DNSClusterFirstWithHostNet)), ns: enabledNS(), env: nativeEnv},
		{name: "ClusterFirstWithHostNet without hostNetwork", pod: newPod(dnsPolicy(corev1.DNSClusterFirstWithHostNet)), ns: enabledNS(), env: nativeEnv},
		{name: "spec.os windows", pod: newPod(osName(corev1.Windows)), ns: enabledNS(), env: nativeEnv, want: SkipWindows},
		{name: "spec.os windows asking for the stub", pod: newPod(osName(corev1.Windows), annotate(AnnotationMode, "stub")), ns: enabledNS(), env: nativeEnv, want: SkipWindows},
		{name: "windows node selector", pod: newPod(nodeSelector(corev1.LabelOSStable, "windows")), ns: enabledNS(), env: nativeEnv, want: SkipWindows},
		{name: "spec.os linux", pod: newPod(osName(corev1.Linux)), ns: enabledNS(), env: nativeEnv},
		{name: "linux node selector", pod: newPod(nodeSelector(corev1.LabelOSStable, "linux")), ns: enabledNS(), env: nativeEnv},
		{name: "windows in another node label", pod: newPod(nodeSelector("example.com/os", "windows")), ns: enabledNS(), env: nativeEnv},
		{name: "windows pod not opted in counts as not opted in", pod: newPod(osName(corev1.Windows)), ns: nsWith(testNS, ""), env: nativeEnv, want: SkipNotOptedIn},
		{
			name: "container named localdns-stub", pod: newPod(stubContainer), ns: enabledNS(), env: nativeEnv,
			want: SkipStubExists, warnings: []string{"already has a container named localdns-stub"},
		},
		{
			name: "init container named localdns-stub", pod: newPod(stubInit), ns: enabledNS(), env: nativeEnv,
			want: SkipStubExists, warnings: []string{"already has a container named localdns-stub"},
		},
		{name: "kube-dns unknown", pod: newPod(), ns: enabledNS(), env: Env{}, want: SkipKubeDNSUnknown, warnings: []string{"kube-dns ClusterIP for the fallback is not known"}},
		{name: "kube-dns unknown in stub mode", pod: newPod(annotate(AnnotationMode, "stub")), ns: enabledNS(), env: Env{}, want: SkipKubeDNSUnknown, warnings: []string{"kube-dns ClusterIP for the fallback is not known"}},
		{name: "kube-dns unknown but no fallback wanted", pod: newPod(annotate(AnnotationFallback, "false")), ns: enabledNS(), env: Env{}},
		{name: "kube-dns from flag needs no discovery", flags: []string{"--kube-dns-ip=10.0.0.10"}, pod: newPod(), ns: enabledNS(), env: Env{KubeDNSIPs: ips("10.0.0.10")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := Decide(tt.pod, tt.ns, testConfig(t, tt.flags...), tt.env)
			if plan.Inject != (tt.want == "") || plan.SkipReason != tt.want {
				t.Fatalf("Decide: inject=%v reason=%q, want reason %q", plan.Inject, plan.SkipReason, tt.want)
			}
			assertWarnings(t, plan.Warnings, tt.warnings)
		})
	}
}

// assertWarnings checks one warning per expected substring, in order.
func assertWarnings(t *testing.T, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("warnings = %q, want %d matching %q", got, len(want), want)
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("warning %d = %q, want it to contain %q", i, got[i], want[i])
		}
	}
}

// TestDecideDNSConfig covers the merge: precedence flags < pod dnsConfig <
// annotations, dedupe, every annotation and every bad value, and the limits.
func TestDecideDNSConfig(t *testing.T) {
	t.Parallel()
	many := func(n int, format string) string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf(format, i))
		}
		return strings.Join(out, ",")
	}
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) // 182 chars
	base := []string{"team-a.svc.cluster.local", "svc.cluster.local", "cluster.local"}
	tests := []struct {
		name        string
		flags       []string
		pod         *corev1.Pod
		nameservers []string
		searches    []string // nil: the base three
		options     string
		warnings    []string
	}{
		{
			name:        "defaults",
			pod:         newPod(),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			options:     "ndots:5 timeout:1 attempts:2 single-request-reopen",
		},
		{
			name:        "flags",
			flags:       []string{"--local-ip=169.254.0.53", "--cluster-domain=k8s.example", "--ndots=2", "--timeout=3", "--attempts=4", "--options=edns0,rotate"},
			pod:         newPod(),
			nameservers: []string{"169.254.0.53", testKubeDNS},
			searches:    []string{"team-a.svc.k8s.example", "svc.k8s.example", "k8s.example"},
			options:     "ndots:2 timeout:3 attempts:4 edns0 rotate",
		},
		{
			name:        "--options overrides the dedicated flag",
			flags:       []string{"--ndots=2", "--options=ndots:3"},
			pod:         newPod(),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			options:     "ndots:3 timeout:1 attempts:2",
		},
		{
			name: "pod dnsConfig over flags, merged and deduped",
			pod: newPod(ownDNSConfig(corev1.PodDNSConfig{
				Nameservers: []string{"169.254.20.10", "192.0.2.1"},
				Searches:    []string{"svc.cluster.local", "corp.example", "Corp.Example."},
				Options:     []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr("2")}, {Name: "edns0"}},
			})),
			nameservers: []string{"169.254.20.10", testKubeDNS, "192.0.2.1"},
			searches:    append(slices.Clone(base), "corp.example"),
			options:     "ndots:2 timeout:1 attempts:2 single-request-reopen edns0",
		},
		{
			name: "annotations over pod dnsConfig",
			pod: newPod(
				ownDNSConfig(corev1.PodDNSConfig{
					Searches: []string{"corp.example"},
					Options:  []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr("2")}, {Name: "timeout", Value: ptr("4")}},
				}),
				annotate(AnnotationNdots, "3", AnnotationTimeout, "7", AnnotationAttempts, "5",
					AnnotationOptions, "use-vc, no-aaaa,edns0", AnnotationSearches, "extra.example, corp.example")),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			searches:    append(slices.Clone(base), "corp.example", "extra.example"),
			options:     "ndots:3 timeout:7 attempts:5 single-request-reopen use-vc no-aaaa edns0",
		},
		{
			name:  "--searches come after the cluster's, before the pod's own and the annotation's",
			flags: []string{"--searches=corp.example,lab.example"},
			pod: newPod(ownDNSConfig(corev1.PodDNSConfig{Searches: []string{"Lab.Example.", "team.example"}}),
				annotate(AnnotationSearches, "x.example,corp.example")),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			searches:    append(slices.Clone(base), "corp.example", "lab.example", "team.example", "x.example"),
			options:     "ndots:5 timeout:1 attempts:2 single-request-reopen",
		},
		{
			name:        "over the limit the flags' domains give way to the annotation's",
			flags:       []string{"--searches=" + many(20, "f%d.example")},
			pod:         newPod(annotate(AnnotationSearches, many(15, "a%d.example"))),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			searches:    slices.Concat(base, strings.Split(many(14, "f%d.example"), ","), strings.Split(many(15, "a%d.example"), ",")),
			options:     "ndots:5 timeout:1 attempts:2 single-request-reopen",
			warnings:    []string{"dropped f14.example, f15.example, f16.example, f17.example, f18.example, f19.example"},
		},
		{
			name:        "a domain named by the flag and the annotation keeps the flag's place and the annotation's precedence",
			flags:       []string{"--searches=" + many(29, "f%d.example")},
			pod:         newPod(annotate(AnnotationSearches, "f28.example,new.example")),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			searches:    slices.Concat(base, strings.Split(many(27, "f%d.example"), ","), []string{"f28.example", "new.example"}),
			options:     "ndots:5 timeout:1 attempts:2 single-request-reopen",
			warnings:    []string{"dropped f27.example"},
		},
		{
			name:        "dedicated annotation wins over the same option in localdns.io/options",
			pod:         newPod(annotate(AnnotationOptions, "ndots:1,attempts:3", AnnotationNdots, "4")),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			options:     "ndots:4 timeout:1 attempts:3 single-request-reopen",
		},
		{
			name:        "fallback false drops the ClusterIP",
			pod:         newPod(annotate(AnnotationFallback, "false")),
			nameservers: []string{"169.254.20.10"},
			options:     "ndots:5 timeout:1 attempts:2 single-request-reopen",
		},
		{
			name:        "fallback true keeps it",
			pod:         newPod(annotate(AnnotationFallback, "true")),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			options:     "ndots:5 timeout:1 attempts:2 single-request-reopen",
		},
		{
			name:        "too many nameservers are cut with a warning",
			pod:         newPod(ownDNSConfig(corev1.PodDNSConfig{Nameservers: []string{"192.0.2.1", "192.0.2.2"}})),
			nameservers: []string{"169.254.20.10", testKubeDNS, "192.0.2.1"},
			options:     "ndots:5 timeout:1 attempts:2 single-request-reopen",
			warnings:    []string{"allows 3 nameservers; dropped 192.0.2.2"},
		},
		{
			name:        "more than 32 search domains are cut with a warning",
			pod:         newPod(annotate(AnnotationSearches, many(31, "d%d.example"))),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			searches:    append(slices.Clone(base), strings.Split(many(29, "d%d.example"), ",")...),
			options:     "ndots:5 timeout:1 attempts:2 single-request-reopen",
			warnings:    []string{"allows 32 search domains and 2048 characters; dropped d29.example, d30.example"},
		},
		{
			name: "search list over 2048 characters is cut with a warning",
			pod: newPod(annotate(AnnotationSearches, strings.Join([]string{
				"a1." + long, "a2." + long, "a3." + long, "a4." + long, "a5." + long, "a6." + long,
				"a7." + long, "a8." + long, "a9." + long, "a0." + long, "short.example",
			}, ","))),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			// 24+1+17+1+13 = 56 chars, then 10 x (185+1): room for 10 of them
			// would be 1916; the 11th long one does not fit, short.example does.
			searches: append(slices.Clone(base), "a1."+long, "a2."+long, "a3."+long, "a4."+long, "a5."+long,
				"a6."+long, "a7."+long, "a8."+long, "a9."+long, "a0."+long, "short.example"),
			options: "ndots:5 timeout:1 attempts:2 single-request-reopen",
		},
		{
			name: "a domain that would pass 2048 characters is dropped, later short ones kept",
			pod: newPod(annotate(AnnotationSearches, strings.Join([]string{
				"a1." + long, "a2." + long, "a3." + long, "a4." + long, "a5." + long, "a6." + long,
				"a7." + long, "a8." + long, "a9." + long, "a0." + long, "b1." + long, "short.example",
			}, ","))),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			searches: append(slices.Clone(base), "a1."+long, "a2."+long, "a3."+long, "a4."+long, "a5."+long,
				"a6."+long, "a7."+long, "a8."+long, "a9."+long, "a0."+long, "short.example"),
			options:  "ndots:5 timeout:1 attempts:2 single-request-reopen",
			warnings: []string{"dropped b1." + long},
		},
		{
			name: "every bad value is ignored with its own warning naming key and value",
			pod: newPod(annotate(
				AnnotationMode, "fast",
				AnnotationNdots, "0",
				AnnotationTimeout, "31",
				AnnotationAttempts, "many",
				AnnotationOptions, "edns0,Bad Name,timeout:99,:x,attempts,trust-ad:a b",
				AnnotationSearches, "ok.example,-bad-.example,under_score.example",
				AnnotationFallback, "maybe",
			)),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			searches:    append(slices.Clone(base), "ok.example", "under_score.example"),
			options:     "ndots:5 timeout:1 attempts:2 single-request-reopen edns0",
			warnings: []string{
				`localdns.io/mode="fast"`,
				`localdns.io/fallback="maybe"`,
				`localdns.io/searches="-bad-.example"`,
				`localdns.io/options="Bad Name"`,
				`localdns.io/options="timeout:99"`,
				`localdns.io/options=":x"`,
				`localdns.io/options="attempts"`,
				`localdns.io/options="trust-ad:a b"`,
				`localdns.io/ndots="0"`,
				`localdns.io/timeout="31"`,
				`localdns.io/attempts="many"`,
			},
		},
		{
			name:        "range edges are accepted",
			pod:         newPod(annotate(AnnotationNdots, "15", AnnotationTimeout, "30", AnnotationAttempts, "1")),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			options:     "ndots:15 timeout:30 attempts:1 single-request-reopen",
		},
		{
			name:        "range edges plus one are refused",
			pod:         newPod(annotate(AnnotationNdots, "16", AnnotationTimeout, "0", AnnotationAttempts, "6")),
			nameservers: []string{"169.254.20.10", testKubeDNS},
			options:     "ndots:5 timeout:1 attempts:2 single-request-reopen",
			warnings:    []string{`localdns.io/ndots="16"`, `localdns.io/timeout="0"`, `localdns.io/attempts="6"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := Decide(tt.pod, enabledNS(), testConfig(t, tt.flags...), nativeEnv)
			if !plan.Inject {
				t.Fatalf("skipped: %s", plan.SkipReason)
			}
			if plan.Mode != ModeNodeCache || plan.Stub != nil {
				t.Errorf("mode %s, stub %v; want nodecache without stub", plan.Mode, plan.Stub)
			}
			if !slices.Equal(plan.Nameservers, tt.nameservers) {
				t.Errorf("nameservers = %q, want %q", plan.Nameservers, tt.nameservers)
			}
			wantSearches := tt.searches
			if wantSearches == nil {
				wantSearches = base
			}
			if !slices.Equal(plan.Searches, wantSearches) {
				t.Errorf("searches = %q, want %q", plan.Searches, wantSearches)
			}
			if got := optionString(plan.Options); got != tt.options {
				t.Errorf("options = %q, want %q", got, tt.options)
			}
			assertWarnings(t, plan.Warnings, tt.warnings)
			if n, chars := len(plan.Searches), len(strings.Join(plan.Searches, " ")); n > maxSearches || chars > maxSearchListChars {
				t.Errorf("search list beyond the API server's limits: %d domains, %d chars", n, chars)
			}
		})
	}
}

// TestDecideMode covers nodecache, stub and auto, and the stub plan.
func TestDecideMode(t *testing.T) {
	t.Parallel()
	initImage := func(img string) podOpt {
		return func(p *corev1.Pod) { p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: img}} }
	}
	tests := []struct {
		name        string
		flags       []string
		pod         *corev1.Pod
		env         Env
		mode        Mode
		native      bool
		nameservers []string
		fallbackArg bool
		warnings    []string
	}{
		{name: "default nodecache", pod: newPod(), env: nativeEnv, mode: ModeNodeCache, nameservers: []string{"169.254.20.10", testKubeDNS}},
		{name: "explicit nodecache on alpine", pod: newPod(image("alpine:3.20"), annotate(AnnotationMode, "nodecache")), env: nativeEnv, mode: ModeNodeCache, nameservers: []string{"169.254.20.10", testKubeDNS}},
		{name: "stub native", pod: newPod(annotate(AnnotationMode, "stub")), env: nativeEnv, mode: ModeStub, native: true, nameservers: []string{"127.0.0.1", "169.254.20.10"}, fallbackArg: true},
		{name: "stub regular container", pod: newPod(annotate(AnnotationMode, "stub")), env: Env{KubeDNSIPs: ips(testKubeDNS)}, mode: ModeStub, nameservers: []string{"127.0.0.1", "169.254.20.10"}, fallbackArg: true},
		{name: "stub without fallback", pod: newPod(annotate(AnnotationMode, "stub", AnnotationFallback, "false")), env: Env{NativeSidecars: true}, mode: ModeStub, native: true, nameservers: []string{"127.0.0.1", "169.254.20.10"}},
		{name: "auto alpine image", pod: newPod(image("docker.io/library/alpine:3.20"), annotate(AnnotationMode, "auto")), env: nativeEnv, mode: ModeStub, native: true, nameservers: []string{"127.0.0.1", "169.254.20.10"}, fallbackArg: true},
		{name: "auto musl tag", pod: newPod(image("registry.example/tool:2-MUSL"), annotate(AnnotationMode, "auto")), env: nativeEnv, mode: ModeStub, native: true, nameservers: []string{"127.0.0.1", "169.254.20.10"}, fallbackArg: true},
		{name: "auto alpine init container", pod: newPod(initImage("alpine"), annotate(AnnotationMode, "auto")), env: nativeEnv, mode: ModeStub, native: true, nameservers: []string{"127.0.0.1", "169.254.20.10"}, fallbackArg: true},
		{name: "auto glibc image", pod: newPod(image("debian:12"), annotate(AnnotationMode, "auto")), env: nativeEnv, mode: ModeNodeCache, nameservers: []string{"169.254.20.10", testKubeDNS}},
		{name: "auto custom patterns", flags: []string{"--musl-image-patterns=distroless-static"}, pod: newPod(image("gcr.io/distroless-static:nonroot"), annotate(AnnotationMode, "auto")), env: nativeEnv, mode: ModeStub, native: true, nameservers: []string{"127.0.0.1", "169.254.20.10"}, fallbackArg: true},
		{name: "auto custom patterns replace the defaults", flags: []string{"--musl-image-patterns=distroless-static"}, pod: newPod(image("alpine"), annotate(AnnotationMode, "auto")), env: nativeEnv, mode: ModeNodeCache, nameservers: []string{"169.254.20.10", testKubeDNS}},
		{
			name: "stub with hostNetwork falls back to nodecache", pod: newPod(hostNetwork, dnsPolicy(corev1.DNSClusterFirstWithHostNet), annotate(AnnotationMode, "stub")),
			env: nativeEnv, mode: ModeNodeCache, nameservers: []string{"169.254.20.10", testKubeDNS}, warnings: []string{"not possible with hostNetwork"},
		},
		{
			name: "bad mode is nodecache with a warning", pod: newPod(image("alpine"), annotate(AnnotationMode, "Stub")),
			env: nativeEnv, mode: ModeNodeCache, nameservers: []string{"169.254.20.10", testKubeDNS}, warnings: []string{`localdns.io/mode="Stub"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := Decide(tt.pod, enabledNS(), testConfig(t, tt.flags...), tt.env)
			if !plan.Inject {
				t.Fatalf("skipped: %s", plan.SkipReason)
			}
			if plan.Mode != tt.mode {
				t.Fatalf("mode = %s, want %s", plan.Mode, tt.mode)
			}
			if !slices.Equal(plan.Nameservers, tt.nameservers) {
				t.Errorf("nameservers = %q, want %q", plan.Nameservers, tt.nameservers)
			}
			assertWarnings(t, plan.Warnings, tt.warnings)
			if tt.mode != ModeStub {
				if plan.Stub != nil {
					t.Fatalf("stub planned in mode %s", plan.Mode)
				}
				return
			}
			if plan.Stub.Native != tt.native {
				t.Errorf("native = %v, want %v", plan.Stub.Native, tt.native)
			}
			c := plan.Stub.Container
			if native := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways; native != tt.native {
				t.Errorf("restartPolicy Always = %v, want %v", native, tt.native)
			}
			if hasFallback := slices.Contains(c.Args, "--fallback"); hasFallback != tt.fallbackArg {
				t.Errorf("args %q: --fallback present = %v, want %v", c.Args, hasFallback, tt.fallbackArg)
			}
		})
	}
}

// TestDecideStubSysctl covers the merge with the pod's own sysctls.
func TestDecideStubSysctl(t *testing.T) {
	t.Parallel()
	sysctls := func(kv ...string) podOpt {
		return func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{}
			for i := 0; i < len(kv); i += 2 {
				p.Spec.SecurityContext.Sysctls = append(p.Spec.SecurityContext.Sysctls, corev1.Sysctl{Name: kv[i], Value: kv[i+1]})
			}
		}
	}
	tests := []struct {
		name     string
		pod      *corev1.Pod
		want     []corev1.Sysctl
		warnings []string
	}{
		{name: "none", pod: newPod(), want: []corev1.Sysctl{{Name: unprivPortName, Value: "53"}}},
		{
			name: "others kept", pod: newPod(sysctls("net.ipv4.tcp_syncookies", "1")),
			want: []corev1.Sysctl{{Name: "net.ipv4.tcp_syncookies", Value: "1"}, {Name: unprivPortName, Value: "53"}},
		},
		{name: "lower kept", pod: newPod(sysctls(unprivPortName, "0")), want: []corev1.Sysctl{{Name: unprivPortName, Value: "0"}}},
		{
			name: "higher replaced", pod: newPod(sysctls(unprivPortName, "1024")),
			want: []corev1.Sysctl{{Name: unprivPortName, Value: "53"}}, warnings: []string{`net.ipv4.ip_unprivileged_port_start="1024" replaced by 53`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := tt.pod
			annotate(AnnotationMode, "stub")(pod)
			before := pod.DeepCopy()
			plan := Decide(pod, enabledNS(), testConfig(t), nativeEnv)
			if plan.Stub == nil {
				t.Fatalf("no stub planned: %+v", plan)
			}
			if !slices.Equal(plan.Stub.Sysctls, tt.want) {
				t.Errorf("sysctls = %v, want %v", plan.Stub.Sysctls, tt.want)
			}
			assertWarnings(t, plan.Warnings, tt.warnings)
			if fmt.Sprint(before) != fmt.Sprint(pod) {
				t.Errorf("Decide modified its input pod")
			}
		})
	}
}

// TestDecideIPFamilies covers the addresses of each cluster kind, forced or
// followed from kube-dns, in both modes, and what gives way under the
// 3-nameserver limit.
func TestDecideIPFamilies(t *testing.T) {
	t.Parallel()
	const (
		nodeCache4 = "169.254.20.10"
		nodeCache6 = "fd6c:6f63:616c::10"
		kubeDNS4   = "10.96.0.10"
		kubeDNS6   = "fd00:10:96::a"
	)
	stub := annotate(AnnotationMode, "stub")
	noFallback := annotate(AnnotationFallback, "false")
	ownNameservers := func(ns ...string) podOpt { return ownDNSConfig(corev1.PodDNSConfig{Nameservers: ns}) }
	// The stub's arguments before --cluster-domain, and its probe's address.
	const (
		stubArgs4      = "--listen 127.0.0.1:53 --node-cache 169.254.20.10:53 --fallback 10.96.0.10:53"
		stubArgs6      = "--listen [::1]:53 --listen 127.0.0.1:53 --node-cache [fd6c:6f63:616c::10]:53 --fallback [fd00:10:96::a]:53"
		probe4, probe6 = "127.0.0.1:53", "[::1]:53"
	)
	tests := []struct {
		name        string
		flags       []string
		kubeDNS     []string // the Service's clusterIPs
		pod         *corev1.Pod
		skip        SkipReason
		nameservers []string
		stubArgs    string // stub mode only
		probe       string
		warnings    []string
	}{
		{name: "IPv4 cluster", kubeDNS: []string{kubeDNS4}, pod: newPod(),
			nameservers: []string{nodeCache4, kubeDNS4}},
		{name: "IPv4 cluster, stub", kubeDNS: []string{kubeDNS4}, pod: newPod(stub),
			nameservers: []string{"127.0.0.1", nodeCache4}, stubArgs: stubArgs4, probe: probe4},
		{name: "IPv6 cluster", kubeDNS: []string{kubeDNS6}, pod: newPod(),
			nameservers: []string{nodeCache6, kubeDNS6}},
		{name: "IPv6 cluster, stub", kubeDNS: []string{kubeDNS6}, pod: newPod(stub),
			nameservers: []string{"::1", nodeCache6}, stubArgs: stubArgs6, probe: probe6},
		{name: "IPv6 cluster, stub without fallback", kubeDNS: []string{kubeDNS6}, pod: newPod(stub, noFallback),
			nameservers: []string{"::1", nodeCache6}, probe: probe6,
			stubArgs: "--listen [::1]:53 --listen 127.0.0.1:53 --node-cache [fd6c:6f63:616c::10]:53"},
		{name: "IPv6 cluster, own --local-ipv6", flags: []string{"--local-ipv6=FD00:0:0:53::"}, kubeDNS: []string{kubeDNS6}, pod: newPod(),
			nameservers: []string{"fd00:0:0:53::", kubeDNS6}},
		{name: "IPv6 cluster, hostNetwork with ClusterFirstWithHostNet", kubeDNS: []string{kubeDNS6},
			pod:         newPod(hostNetwork, dnsPolicy(corev1.DNSClusterFirstWithHostNet)),
			nameservers: []string{nodeCache6, kubeDNS6}},
		{name: "dual-stack, IPv4 primary", kubeDNS: []string{kubeDNS4, kubeDNS6}, pod: newPod(),
			nameservers: []string{nodeCache4, nodeCache6, kubeDNS4}},
		{name: "dual-stack, IPv6 primary", kubeDNS: []string{kubeDNS6, kubeDNS4}, pod: newPod(),
			nameservers: []string{nodeCache6, nodeCache4, kubeDNS6}},
		{name: "dual-stack, IPv4 primary, stub: IPv4 only", kubeDNS: []string{kubeDNS4, kubeDNS6}, pod: newPod(stub),
			nameservers: []string{"127.0.0.1", nodeCache4}, stubArgs: stubArgs4, probe: probe4},
		{name: "dual-stack, IPv6 primary, stub: IPv6 only", kubeDNS: []string{kubeDNS6, kubeDNS4}, pod: newPod(stub),
			nameservers: []string{"::1", nodeCache6}, stubArgs: stubArgs6, probe: probe6},
		{name: "dual-stack: the pod's own nameservers give way", kubeDNS: []string{kubeDNS4, kubeDNS6}, pod: newPod(ownNameservers("192.0.2.1", "2001:db8::1")),
			nameservers: []string{nodeCache4, nodeCache6, kubeDNS4}, warnings: []string{"allows 3 nameservers; dropped 192.0.2.1, 2001:db8::1"}},
		{name: "dual-stack without fallback: room for one of the pod's own", kubeDNS: []string{kubeDNS4, kubeDNS6},
			pod:         newPod(noFallback, ownNameservers("192.0.2.1", "2001:db8::1")),
			nameservers: []string{nodeCache4, nodeCache6, "192.0.2.1"}, warnings: []string{"dropped 2001:db8::1"}},
		{name: "dual-stack: the pod naming ours in another spelling is deduped", kubeDNS: []string{kubeDNS4, kubeDNS6},
			pod:         newPod(ownNameservers("FD6C:6F63:616C:0:0::10")),
			nameservers: []string{nodeCache4, nodeCache6, kubeDNS4}},
		{name: "dual-stack, stub: room for the pod's own", kubeDNS: []string{kubeDNS6, kubeDNS4}, pod: newPod(stub, ownNameservers("2001:db8::1", "192.0.2.1")),
			nameservers: []string{"::1", nodeCache6, "2001:db8::1"}, stubArgs: stubArgs6, probe: probe6, warnings: []string{"dropped 192.0.2.1"}},
		{name: "forced dual on a single-stack IPv4 kube-dns", flags: []string{"--ip-families=dual"}, kubeDNS: []string{kubeDNS4}, pod: newPod(),
			nameservers: []string{nodeCache4, nodeCache6, kubeDNS4}},
		{name: "forced dual on a single-stack IPv6 kube-dns", flags: []string{"--ip-families=dual"}, kubeDNS: []string{kubeDNS6}, pod: newPod(),
			nameservers: []string{nodeCache6, nodeCache4, kubeDNS6}},
		{name: "forced dual, stub", flags: []string{"--ip-families=dual"}, kubeDNS: []string{kubeDNS6}, pod: newPod(stub),
			nameservers: []string{"::1", nodeCache6}, stubArgs: stubArgs6, probe: probe6},
		{name: "forced ipv4 on dual-stack kube-dns", flags: []string{"--ip-families=ipv4"}, kubeDNS: []string{kubeDNS6, kubeDNS4}, pod: newPod(),
			nameservers: []string{nodeCache4, kubeDNS4}},
		{name: "forced ipv6 on dual-stack kube-dns", flags: []string{"--ip-families=ipv6"}, kubeDNS: []string{kubeDNS4, kubeDNS6}, pod: newPod(stub),
			nameservers: []string{"::1", nodeCache6}, stubArgs: stubArgs6, probe: probe6},
		{name: "forced ipv4 on IPv6 kube-dns: no fallback to give", flags: []string{"--ip-families=ipv4"}, kubeDNS: []string{kubeDNS6}, pod: newPod(),
			skip: SkipKubeDNSUnknown, warnings: []string{"kube-dns has no IPv4 ClusterIP for the fallback (it has fd00:10:96::a); pod left unchanged"}},
		{name: "forced ipv4 on IPv6 kube-dns, no fallback wanted", flags: []string{"--ip-families=ipv4"}, kubeDNS: []string{kubeDNS6}, pod: newPod(noFallback),
			nameservers: []string{nodeCache4}},
		{name: "auto with kube-dns unknown, no fallback wanted: IPv4", pod: newPod(noFallback),
			nameservers: []string{nodeCache4}},
		{name: "forced ipv6 with kube-dns unknown, no fallback wanted", flags: []string{"--ip-families=ipv6"}, pod: newPod(noFallback),
			nameservers: []string{nodeCache6}},
		{name: "forced dual with kube-dns unknown, no fallback wanted: IPv4 first", flags: []string{"--ip-families=dual"}, pod: newPod(noFallback),
			nameservers: []string{nodeCache4, nodeCache6}},
		{name: "kube-dns unknown", flags: []string{"--ip-families=dual"}, pod: newPod(),
			skip: SkipKubeDNSUnknown, warnings: []string{"the kube-dns ClusterIP for the fallback is not known"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := Decide(tt.pod, enabledNS(), testConfig(t, tt.flags...), Env{KubeDNSIPs: ips(tt.kubeDNS...), NativeSidecars: true})
			assertWarnings(t, plan.Warnings, tt.warnings)
			if plan.SkipReason != tt.skip || plan.Inject != (tt.skip == "") {
				t.Fatalf("inject=%v reason=%q, want reason %q", plan.Inject, plan.SkipReason, tt.skip)
			}
			if !slices.Equal(plan.Nameservers, tt.nameservers) {
				t.Errorf("nameservers = %q, want %q", plan.Nameservers, tt.nameservers)
			}
			if (plan.Stub != nil) != (tt.stubArgs != "") {
				t.Fatalf("stub planned = %v, want %v", plan.Stub != nil, tt.stubArgs != "")
			}
			if plan.Stub == nil {
				return
			}
			c := plan.Stub.Container
			args := strings.Join(c.Args, " ")
			if want := tt.stubArgs + " --cluster-domain cluster.local --cache-size 1000"; args != want {
				t.Errorf("stub args\n got %s\nwant %s", args, want)
			}
			if got, want := c.StartupProbe.Exec.Command, []string{StubBinary, "probe", "--listen", tt.probe}; !slices.Equal(got, want) {
				t.Errorf("probe %q, want %q", got, want)
			}
		})
	}
}

package sidecar

import (
	"fmt"
	"io"
	"maps"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/localdns/localdns/webhook"
)

// TestWebhookContract: the stub container the webhook injects, for every
// cluster kind, is parsed by the stub's own parser into the intended config
// (the rest left at the stub's defaults), and agrees with the resolv.conf the
// webhook writes: the first nameserver is an address the stub serves on, the
// second the node cache the stub asks; the startup probe asks that first
// nameserver.
func TestWebhookContract(t *testing.T) {
	tests := []struct {
		name       string
		flags      []string
		kubeDNS    []string // the kube-dns Service's clusterIPs
		noFallback bool
		// The intended config.
		listen        []string
		nodeCache     string
		fallback      string // empty: none
		clusterDomain string
	}{
		{name: "IPv4 cluster", kubeDNS: []string{"10.96.0.10"},
			listen: []string{"127.0.0.1:53"}, nodeCache: "169.254.20.10:53", fallback: "10.96.0.10:53"},
		{name: "IPv4 cluster, no fallback", kubeDNS: []string{"10.96.0.10"}, noFallback: true,
			listen: []string{"127.0.0.1:53"}, nodeCache: "169.254.20.10:53"},
		{name: "IPv6 cluster", kubeDNS: []string{"fd00:10:96::a"},
			listen: []string{"[::1]:53", "127.0.0.1:53"}, nodeCache: "[fd6c:6f63:616c::10]:53", fallback: "[fd00:10:96::a]:53"},
		{name: "IPv6 cluster, no fallback", kubeDNS: []string{"fd00:10:96::a"}, noFallback: true,
			listen: []string{"[::1]:53", "127.0.0.1:53"}, nodeCache: "[fd6c:6f63:616c::10]:53"},
		{name: "dual-stack, IPv4 primary", kubeDNS: []string{"10.96.0.10", "fd00:10:96::a"},
			listen: []string{"127.0.0.1:53"}, nodeCache: "169.254.20.10:53", fallback: "10.96.0.10:53"},
		{name: "dual-stack, IPv6 primary", kubeDNS: []string{"fd00:10:96::a", "10.96.0.10"},
			listen: []string{"[::1]:53", "127.0.0.1:53"}, nodeCache: "[fd6c:6f63:616c::10]:53", fallback: "[fd00:10:96::a]:53"},
		{
			name:    "every flag the stub's arguments depend on",
			flags:   []string{"--ip-families=dual", "--local-ip=169.254.0.53", "--local-ipv6=fd00:53::53", "--cluster-domain=k8s.example"},
			kubeDNS: []string{"fd00:10:96::a"},
			listen:  []string{"[::1]:53", "127.0.0.1:53"}, nodeCache: "[fd00:53::53]:53", fallback: "[fd00:10:96::a]:53", clusterDomain: "k8s.example.",
		},
	}
	defaults, err := Parse([]string{"--listen", "127.0.0.1:53"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			annotations := map[string]string{}
			if tt.noFallback {
				annotations[webhook.AnnotationFallback] = "false"
			}
			plan := webhookStubPlan(t, tt.flags, tt.kubeDNS, annotations)
			c := plan.Stub.Container

			got, err := Parse(c.Args, io.Discard)
			if err != nil {
				t.Fatalf("the stub refuses the webhook's arguments %q: %v", c.Args, err)
			}
			want := defaults
			want.Listen = nil
			for _, l := range tt.listen {
				want.Listen = append(want.Listen, netip.MustParseAddrPort(l))
			}
			want.NodeCache = netip.MustParseAddrPort(tt.nodeCache)
			if tt.fallback != "" {
				want.Fallback = netip.MustParseAddrPort(tt.fallback)
			}
			if tt.clusterDomain != "" {
				want.ClusterDomain = tt.clusterDomain
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("the stub parses %q into\n%+v\nwant\n%+v", c.Args, got, want)
			}

			resolvConf := plan.Nameservers
			if len(resolvConf) < 2 {
				t.Fatalf("nameservers %q: want the stub and the node cache", resolvConf)
			}
			first := netip.AddrPortFrom(netip.MustParseAddr(resolvConf[0]), 53)
			if got.Listen[0] != first {
				t.Errorf("resolv.conf's first nameserver %s is not the stub's first listen address %s", first, got.Listen[0])
			}
			if second := netip.AddrPortFrom(netip.MustParseAddr(resolvConf[1]), 53); got.NodeCache != second {
				t.Errorf("resolv.conf's second nameserver %s is not the stub's node cache %s", second, got.NodeCache)
			}

			probe := c.StartupProbe.Exec.Command
			if probe[0] != webhook.StubBinary || c.Command[0] != webhook.StubBinary {
				t.Errorf("command %q, probe %q: want both to run %s", c.Command, probe, webhook.StubBinary)
			}
			probeCfg, err := Parse(probe[1:], io.Discard)
			if err != nil {
				t.Fatalf("the stub refuses the webhook's probe %q: %v", probe, err)
			}
			if probeCfg.Command != CommandProbe || probeCfg.Probe.Addr != first {
				t.Errorf("probe %q parses into %+v, want a probe of %s", probe, probeCfg, first)
			}
		})
	}
}

// webhookStubPlan is what the webhook decides, with these flags, for a
// stub-mode pod (plus annotations) in an opted-in namespace "default" of a
// cluster whose kube-dns Service has these clusterIPs.
func webhookStubPlan(t *testing.T, flags, kubeDNS []string, annotations map[string]string) webhook.Plan {
	t.Helper()
	cfg, err := webhook.ParseFlags("localdns-webhook", flags, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var env webhook.Env
	for _, ip := range kubeDNS {
		env.KubeDNSIPs = append(env.KubeDNSIPs, netip.MustParseAddr(ip))
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "default", Annotations: map[string]string{webhook.AnnotationMode: "stub"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "alpine:3.20"}}},
	}
	maps.Copy(pod.Annotations, annotations)
	ns := webhook.Namespace{Name: "default", Labels: map[string]string{webhook.LabelInject: "enabled"}}
	plan := webhook.Decide(pod, ns, cfg, env)
	if plan.Stub == nil {
		t.Fatalf("the webhook planned no stub: %+v", plan)
	}
	return plan
}

// resolvConf renders the webhook's dnsConfig as kubelet writes resolv.conf.
func resolvConf(plan webhook.Plan) string {
	var b strings.Builder
	for _, ns := range plan.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	fmt.Fprintf(&b, "search %s\n", strings.Join(plan.Searches, " "))
	options := make([]string, len(plan.Options))
	for i, o := range plan.Options {
		options[i] = o.Name
		if o.Value != nil {
			options[i] += ":" + *o.Value
		}
	}
	fmt.Fprintf(&b, "options %s\n", strings.Join(options, " "))
	return b.String()
}

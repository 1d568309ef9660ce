package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestConfigDefaultsAndValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"zero takes defaults", Config{}, false},
		{"nftables", Config{ProxyMode: ProxyNFTables}, false},
		{"ipvs is not in this kernel", Config{ProxyMode: "ipvs"}, true},
		{"IPv6", Config{IPFamilies: IPv6}, false},
		{"dual-stack", Config{IPFamilies: DualStack}, false},
		{"unknown family", Config{IPFamilies: "ipv5"}, true},
		{"name with a slash", Config{Name: "a/b"}, true},
		{"name too long for interface and socket paths", Config{Name: "abcdefghijklmnopqrstuvwxyz"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.withDefaults()
			if (err != nil) != tt.wantErr {
				t.Fatalf("withDefaults() error = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (got.Name == "" || got.K8sBinDir == "" || got.Progress == nil || got.IPFamilies == "") {
				t.Errorf("defaults not filled: %+v", got)
			}
		})
	}
}

func TestCheckBinariesNamesEveryMissingOne(t *testing.T) {
	cfg, err := Config{K8sBinDir: t.TempDir(), CoreDNSBinary: "/nonexistent/coredns"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.checkBinaries()
	if !errors.Is(err, ErrMissingBinaries) {
		t.Fatalf("checkBinaries() = %v, want ErrMissingBinaries", err)
	}
	for _, want := range []string{"/nonexistent/coredns", "kubelet", "kube-proxy"} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/plain/path", "/plain/path"},
		{`/with\040space`, "/with space"},
		{`/tab\011and\134backslash`, "/tab\tand\\backslash"},
		{`/trailing\04`, `/trailing\04`},
	}
	for _, tt := range tests {
		if got := unescapeMount(tt.in); got != tt.want {
			t.Errorf("unescapeMount(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestProcStartTimeOfSelf(t *testing.T) {
	got, err := procStartTime(os.Getpid())
	if err != nil || got == "" {
		t.Fatalf("procStartTime(self) = %q, %v", got, err)
	}
	if _, err := procStartTime(1 << 30); err == nil {
		t.Error("procStartTime of a pid that cannot exist succeeded")
	}
}

func TestImageSpecArgsAreStable(t *testing.T) {
	spec := ImageSpec{
		Ref:           "localdns.test/unit:1",
		Entrypoint:    []string{"/bin/busybox", "sleep", "1"},
		Files:         map[string]string{"/bin/busybox": "/host/busybox", "/a/first": "/host/a"},
		FilesWithLibs: map[string]string{"/gai": "/host/gai"},
		Symlinks:      map[string]string{"/bin/sh": "busybox", "/bin/cat": "busybox"},
	}
	want := []string{"-ref", "localdns.test/unit:1",
		"-entrypoint", "/bin/busybox", "-entrypoint", "sleep", "-entrypoint", "1",
		"-add", "/host/a:/a/first", "-add", "/host/busybox:/bin/busybox",
		"-add-with-libs", "/host/gai:/gai",
		"-symlink", "/bin/cat=busybox", "-symlink", "/bin/sh=busybox"}
	for range 3 { // map order varies; the flags (and so the cache key) must not
		if got := spec.args(); !reflect.DeepEqual(got, want) {
			t.Fatalf("args() =\n%q\nwant\n%q", got, want)
		}
	}
}

// TestWaitForStopsWhenADaemonDied records a process that has exited and
// checks a wait that would never succeed returns at once, naming it.
func TestWaitForStopsWhenADaemonDied(t *testing.T) {
	c, err := newCluster(Config{BaseDir: t.TempDir(), RepoDir: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(c.dir("pids"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Our own pid with a start time it never had: alive() must say no.
	rec := fmt.Sprintf("1 kubelet %d 1\n", os.Getpid())
	if err := os.WriteFile(filepath.Join(c.dir("pids"), "01-kubelet"), []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	calls := 0
	err = c.waitFor(context.Background(), "never", func(context.Context) error {
		calls++
		return errors.New("not yet")
	})
	if !errors.Is(err, errDaemonExited) || !strings.Contains(err.Error(), "kubelet") {
		t.Fatalf("waitFor() = %v, want errDaemonExited naming kubelet", err)
	}
	if calls != 0 {
		t.Errorf("check ran %d times after the daemon died", calls)
	}
}

// TestKubeDNSAndUpstreamRender checks the lines the scenarios rely on: the
// CoreDNS template's own {{ .Name }} survives Go's templating, every slow
// zone gets its delay, the unanswered zone drops every query, the big zone
// answers every name with its records, and kube-dns keeps the stock plugins.
func TestKubeDNSAndUpstreamRender(t *testing.T) {
	c, err := newCluster(Config{BaseDir: t.TempDir(), RepoDir: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		tmpl string
		want []string
	}{
		{"coredns.yaml.tmpl", []string{
			"health {\n            lameduck 5s\n        }", "ready\n", "prometheus :9153\n", "loop\n", "reload\n", "cache 30\n",
			"forward . " + UpstreamIP.String() + " {\n            max_concurrent 1000\n        }",
			NoCacheZone + `:53 {`, `answer "{{ .Name }} 0 IN A ` + NoCacheA + `"`,
		}},
		{"upstream.Corefile.tmpl", []string{
			"slow100.ext.test:53 {\n    bind 10.100.0.53\n    erratic {\n        delay 1 100ms\n    }\n}",
			"slow300.ext.test:53 {\n    bind 10.100.0.53\n    erratic {\n        delay 1 300ms\n    }\n}",
			UnansweredZone + ":53 {\n    bind 10.100.0.53\n    erratic {\n        drop 1\n    }\n}",
			BigZone + ":53 {\n    bind 10.100.0.53\n    file " + c.runDir + "/big.zone\n}",
		}},
		{"big.zone.tmpl", []string{
			"$ORIGIN " + BigZone + ".\n$TTL 30\n", "* IN A 10.101.0.1\n", "* IN A 10.101.0.250\n",
			"* IN AAAA 2001:db8:b16::1\n", fmt.Sprintf("* IN AAAA 2001:db8:b16::%x", BigZoneRecords),
		}},
	}
	for _, tt := range tests {
		out, err := render(tt.tmpl, c.templateData())
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range tt.want {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s lacks %q:\n%s", tt.tmpl, want, out)
			}
		}
	}
}

// TestFamiliesRender checks what each kind of cluster gives its daemons:
// the families in order (primary first) wherever Kubernetes takes a list,
// the primary family's address wherever it takes one, and every family's
// address where the fake upstream listens and answers.
func TestFamiliesRender(t *testing.T) {
	tests := []struct {
		families string
		want     map[string][]string // template -> lines it must hold
	}{
		{IPv4, map[string][]string{
			"coredns.yaml.tmpl": {"ipFamilyPolicy: SingleStack", "ipFamilies: [IPv4]", `clusterIP: "10.96.0.10"`, `clusterIPs: ["10.96.0.10"]`,
				"forward . 10.100.0.53 {"},
			"kube-proxy.yaml.tmpl":   {`clusterCIDR: "10.244.0.0/24"`, `bindAddress: "10.100.0.2"`},
			"kubelet.yaml.tmpl":      {`address: "10.100.0.2"`, `clusterDNS: ["10.96.0.10"]`},
			"upstream.Corefile.tmpl": {"bind 10.100.0.53\n", "10.100.0.53 upstream.test", "10.100.1.1 big.large.test", "10.100.1.100 big.large.test"},
			"dnscheck.yaml.tmpl":     {"nslookup kubernetes.default.svc.cluster.local 10.96.0.10 && nslookup upstream.test 10.96.0.10"},
		}},
		{IPv6, map[string][]string{
			"coredns.yaml.tmpl": {"ipFamilyPolicy: SingleStack", "ipFamilies: [IPv6]", `clusterIP: "fd00:10:96::a"`, `clusterIPs: ["fd00:10:96::a"]`,
				"forward . fd00:10:100::53 {"},
			"kube-proxy.yaml.tmpl":   {`clusterCIDR: "fd00:10:244::/64"`, `bindAddress: "fd00:10:100::2"`},
			"kubelet.yaml.tmpl":      {`address: "fd00:10:100::2"`, `clusterDNS: ["fd00:10:96::a"]`},
			"upstream.Corefile.tmpl": {"bind fd00:10:100::53\n", "fd00:10:100::53 upstream.test", "fd00:10:101::1 big.large.test", "fd00:10:101::64 big.large.test"},
			"dnscheck.yaml.tmpl":     {"nslookup kubernetes.default.svc.cluster.local fd00:10:96::a && nslookup upstream.test fd00:10:96::a"},
		}},
		{DualStack, map[string][]string{
			"coredns.yaml.tmpl": {"ipFamilyPolicy: RequireDualStack", "ipFamilies: [IPv4, IPv6]", `clusterIP: "10.96.0.10"`,
				`clusterIPs: ["10.96.0.10", "fd00:10:96::a"]`, "forward . 10.100.0.53 {"},
			"kube-proxy.yaml.tmpl": {`clusterCIDR: "10.244.0.0/24,fd00:10:244::/64"`, `bindAddress: "10.100.0.2"`},
			"kubelet.yaml.tmpl":    {`address: "10.100.0.2"`, `clusterDNS: ["10.96.0.10"]`},
			"upstream.Corefile.tmpl": {"bind 10.100.0.53 fd00:10:100::53\n", "10.100.0.53 upstream.test", "fd00:10:100::53 upstream.test", "10.100.1.100 big.large.test", "fd00:10:101::64 big.large.test",
				BigZone + ":53 {\n    bind 10.100.0.53 fd00:10:100::53\n"},
			"dnscheck.yaml.tmpl": {"nslookup kubernetes.default.svc.cluster.local 10.96.0.10 && nslookup kubernetes.default.svc.cluster.local fd00:10:96::a &&" +
				" nslookup upstream.test 10.96.0.10"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.families, func(t *testing.T) {
			c, err := newCluster(Config{BaseDir: t.TempDir(), RepoDir: "/nonexistent", IPFamilies: tt.families})
			if err != nil {
				t.Fatal(err)
			}
			for tmpl, lines := range tt.want {
				out, err := render(tmpl, c.templateData())
				if err != nil {
					t.Fatal(err)
				}
				for _, want := range lines {
					if !strings.Contains(string(out), want) {
						t.Errorf("%s lacks %q:\n%s", tmpl, want, out)
					}
				}
			}
		})
	}
}

// TestBigZoneParsesPerFamily parses the fake upstream's big zone as
// CoreDNS's file plugin does: its name server has an address of each of
// the cluster's families, every name BigZoneRecords A and AAAA records.
func TestBigZoneParsesPerFamily(t *testing.T) {
	for families, wantNS := range map[string][]string{
		IPv4:      {"10.100.0.53"},
		IPv6:      {"fd00:10:100::53"},
		DualStack: {"10.100.0.53", "fd00:10:100::53"},
	} {
		t.Run(families, func(t *testing.T) {
			c, err := newCluster(Config{BaseDir: t.TempDir(), RepoDir: "/nonexistent", IPFamilies: families})
			if err != nil {
				t.Fatal(err)
			}
			zone, err := render("big.zone.tmpl", c.templateData())
			if err != nil {
				t.Fatal(err)
			}
			var ns []string
			wildcard := map[uint16]int{}
			zp := dns.NewZoneParser(bytes.NewReader(zone), "", "big.zone")
			for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
				switch h := rr.Header(); {
				case h.Name == "ns."+BigZone+".":
					ns = append(ns, strings.TrimPrefix(rr.String(), rr.Header().String()))
				case h.Name == "*."+BigZone+".":
					wildcard[h.Rrtype]++
				}
			}
			if err := zp.Err(); err != nil {
				t.Fatalf("parse big.zone: %v\n%s", err, zone)
			}
			if !reflect.DeepEqual(ns, wantNS) {
				t.Errorf("ns.%s addresses %v, want %v", BigZone, ns, wantNS)
			}
			if wildcard[dns.TypeA] != BigZoneRecords || wildcard[dns.TypeAAAA] != BigZoneRecords {
				t.Errorf("wildcard records %d A, %d AAAA; want %d of each", wildcard[dns.TypeA], wildcard[dns.TypeAAAA], BigZoneRecords)
			}
		})
	}
}

// TestCNIConfigPerFamily parses the rendered CNI configuration: one
// host-local range and one default route per family, in the cluster's order.
func TestCNIConfigPerFamily(t *testing.T) {
	for families, want := range map[string]struct{ ranges, routes []string }{
		IPv4:      {[]string{"10.244.0.0/24"}, []string{"0.0.0.0/0"}},
		IPv6:      {[]string{"fd00:10:244::/64"}, []string{"::/0"}},
		DualStack: {[]string{"10.244.0.0/24", "fd00:10:244::/64"}, []string{"0.0.0.0/0", "::/0"}},
	} {
		c, err := newCluster(Config{BaseDir: t.TempDir(), RepoDir: "/nonexistent", IPFamilies: families})
		if err != nil {
			t.Fatal(err)
		}
		out, err := render("cni.conflist.tmpl", c.templateData())
		if err != nil {
			t.Fatal(err)
		}
		var conf struct {
			Plugins []struct {
				IPAM struct {
					Ranges [][]struct{ Subnet string }
					Routes []struct{ Dst string }
				}
			}
		}
		if err := json.Unmarshal(out, &conf); err != nil {
			t.Fatalf("%s: %v:\n%s", families, err, out)
		}
		var ranges, routes []string
		for _, r := range conf.Plugins[0].IPAM.Ranges {
			for _, sub := range r {
				ranges = append(ranges, sub.Subnet)
			}
		}
		for _, r := range conf.Plugins[0].IPAM.Routes {
			routes = append(routes, r.Dst)
		}
		if !reflect.DeepEqual(ranges, want.ranges) || !reflect.DeepEqual(routes, want.routes) {
			t.Errorf("%s: ranges %v routes %v, want %v %v", families, ranges, routes, want.ranges, want.routes)
		}
	}
}

// TestNodeIPAMFlags checks the controller-manager gets each family's node
// mask flag alone (it refuses a family's flag in a cluster without it) and
// the API server and kubelet their lists, primary first.
func TestNodeIPAMFlags(t *testing.T) {
	tests := []struct {
		families                   string
		ipam                       []string
		serviceCIDRs, nodeIPs, api string
	}{
		{IPv4, []string{"--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/24", "--service-cluster-ip-range=10.96.0.0/16",
			"--node-cidr-mask-size-ipv4=24"}, "10.96.0.0/16", "10.100.0.2", "10.100.0.2:6443"},
		{IPv6, []string{"--allocate-node-cidrs=true", "--cluster-cidr=fd00:10:244::/64", "--service-cluster-ip-range=fd00:10:96::/112",
			"--node-cidr-mask-size-ipv6=64"}, "fd00:10:96::/112", "fd00:10:100::2", "[fd00:10:100::2]:6443"},
		{DualStack, []string{"--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/24,fd00:10:244::/64",
			"--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112", "--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64"},
			"10.96.0.0/16,fd00:10:96::/112", "10.100.0.2,fd00:10:100::2", "10.100.0.2:6443"},
	}
	for _, tt := range tests {
		c, err := newCluster(Config{BaseDir: t.TempDir(), RepoDir: "/nonexistent", IPFamilies: tt.families})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.nodeIPAMFlags(); !reflect.DeepEqual(got, tt.ipam) {
			t.Errorf("%s: nodeIPAMFlags() = %q, want %q", tt.families, got, tt.ipam)
		}
		if got := c.serviceCIDRs(); got != tt.serviceCIDRs {
			t.Errorf("%s: serviceCIDRs() = %q, want %q", tt.families, got, tt.serviceCIDRs)
		}
		if got := c.nodeIPs(); got != tt.nodeIPs {
			t.Errorf("%s: nodeIPs() = %q, want %q", tt.families, got, tt.nodeIPs)
		}
		if got := c.apiServer(); got != tt.api {
			t.Errorf("%s: apiServer() = %q, want %q", tt.families, got, tt.api)
		}
		kubeconfig, err := render("kubeconfig.tmpl", kubeconfigData{Name: "n", Server: c.apiServer(), User: "u"})
		if err != nil || !strings.Contains(string(kubeconfig), "server: https://"+tt.api+"\n") {
			t.Errorf("%s: kubeconfig lacks server https://%s (%v):\n%s", tt.families, tt.api, err, kubeconfig)
		}
	}
}

// TestAttachTakesTheBootedFamilies: a cluster booted as IPv6 is attached as
// IPv6 whatever the caller's config says (the CLI's default is IPv4), and
// a run directory without the record (nothing booted) attaches as given.
func TestAttachTakesTheBootedFamilies(t *testing.T) {
	base := t.TempDir()
	cfg := Config{BaseDir: base, RepoDir: "/nonexistent"}
	c, err := Attach(cfg)
	if err != nil || c.IPFamilies() != IPv4 {
		t.Fatalf("Attach() without a record = %v, %v; want IPv4", c, err)
	}
	if err := os.MkdirAll(c.runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.dir(ipFamiliesFile), []byte(IPv6+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = Attach(cfg)
	if err != nil || c.IPFamilies() != IPv6 || c.Primary().KubeDNSIP != IPv6Family.KubeDNSIP {
		t.Fatalf("Attach() of an IPv6 cluster: %v; families %v", err, c.Families())
	}
}

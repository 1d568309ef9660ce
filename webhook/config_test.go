package webhook

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/version"
)

func TestParseFlagsDefaults(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	if cfg.Port != 9443 || cfg.MetricsAddr != ":9254" || cfg.LocalIP != "169.254.20.10" || cfg.ClusterDomain != "cluster.local" ||
		cfg.Namespace != "localdns-system" || cfg.NativeSidecars != NativeSidecarsAuto || cfg.ClusterWide || cfg.KubeDNSIPs != nil ||
		cfg.LocalIPv6 != "fd6c:6f63:616c::10" || cfg.IPFamilies != IPFamiliesAuto {
		t.Errorf("unexpected defaults: %+v", cfg)
	}
	if want := (types.NamespacedName{Namespace: "kube-system", Name: "kube-dns"}); cfg.KubeDNSService != want {
		t.Errorf("kube-dns service %v, want %v", cfg.KubeDNSService, want)
	}
	if got := optionString(cfg.Options); got != "ndots:5 timeout:1 attempts:2 single-request-reopen" {
		t.Errorf("default options %q", got)
	}
	if got := strings.Join(cfg.MuslImagePatterns, ","); got != "alpine,musl" {
		t.Errorf("musl patterns %q", got)
	}
	req, lim := cfg.StubResources.Requests, cfg.StubResources.Limits
	if req.Cpu().String() != "10m" || req.Memory().String() != "16Mi" || lim.Memory().String() != "32Mi" {
		t.Errorf("stub resources %v", cfg.StubResources)
	}
}

func TestParseFlagsNamespaceFromEnv(t *testing.T) {
	t.Parallel()
	getenv := func(k string) string {
		if k == "POD_NAMESPACE" {
			return "dns-system"
		}
		return ""
	}
	cfg, err := Parse("test", nil, getenv, io.Discard)
	if err != nil || cfg.Namespace != "dns-system" {
		t.Fatalf("namespace %q, err %v", cfg.Namespace, err)
	}
}

// TestParseFlagsInvalid: every bad flag is reported, all at once.
func TestParseFlagsInvalid(t *testing.T) {
	t.Parallel()
	_, err := Parse("test", []string{
		"--port=0", "--local-ip=node", "--kube-dns-ip=10.0.0", "--kube-dns-service=kube-dns",
		"--cluster-domain=Bad_Domain", "--ndots=0", "--timeout=31", "--attempts=6", "--options=ok,BAD",
		"--namespace=", "--stub-image=", "--native-sidecars=maybe", "--stub-memory-request=64Mi",
		"--shutdown-timeout=0s", "--searches=ok.example,-bad-.example",
	}, func(string) string { return "" }, io.Discard)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"--port 0", `--local-ip: "node"`, `--kube-dns-ip: "10.0.0"`, `--kube-dns-service "kube-dns"`,
		`--cluster-domain "Bad_Domain"`, "--ndots", "--timeout", "--attempts", `--options "BAD"`,
		`--namespace ""`, "--stub-image", `--native-sidecars "maybe"`, "exceeds --stub-memory-limit",
		"--shutdown-timeout", `--searches "-bad-.example"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// TestParseFlagsSearches: --searches must leave room for the cluster's own
// three domains under the API server's limits.
func TestParseFlagsSearches(t *testing.T) {
	t.Parallel()
	domains := func(n, size int) string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("d%02d.%s", i, strings.Repeat("x", size)))
		}
		return strings.Join(out, ",")
	}
	tests := []struct {
		flag    string
		want    int // domains kept; -1: an error
		problem string
	}{
		{"", 0, ""},
		{" corp.example , , lab.example. ", 2, ""},
		{"_srv.example", 1, ""},
		{domains(29, 10), 29, ""},
		{domains(30, 10), -1, "at most 32 domains"},
		// With a 63-character namespace the cluster's own take 113
		// characters; 29 domains of 65 characters (plus spaces) make 2027,
		// of 66 characters 2056.
		{domains(29, 61), 29, ""},
		{domains(29, 62), -1, "2048 characters"},
		{"Bad Domain", -1, `--searches "Bad Domain"`},
	}
	for _, tt := range tests {
		cfg, err := Parse("test", []string{"--searches=" + tt.flag}, func(string) string { return "" }, io.Discard)
		if tt.want < 0 {
			if err == nil || !strings.Contains(err.Error(), tt.problem) {
				t.Errorf("--searches=%.40q: error %v, want one naming %q", tt.flag, err, tt.problem)
			}
			continue
		}
		if err != nil || len(cfg.Searches) != tt.want {
			t.Errorf("--searches=%.40q: %d domains (%q), error %v; want %d", tt.flag, len(cfg.Searches), cfg.Searches, err, tt.want)
		}
	}
}

// TestParseFlagsIPFamilies: the node cache's address of each family, the
// fixed kube-dns addresses and the forced families.
func TestParseFlagsIPFamilies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		flags      []string
		localIP    string
		localIPv6  string
		kubeDNS    string // the parsed --kube-dns-ip, as fmt prints it
		ipFamilies string
		problem    string // a substring of the error; empty: valid
	}{
		{flags: nil, localIP: "169.254.20.10", localIPv6: "fd6c:6f63:616c::10", kubeDNS: "[]", ipFamilies: "auto"},
		{flags: []string{"--local-ip=169.254.0.53", "--local-ipv6=FD00:0:0:0::0053", "--ip-families=dual"},
			localIP: "169.254.0.53", localIPv6: "fd00::53", kubeDNS: "[]", ipFamilies: "dual"},
		{flags: []string{"--kube-dns-ip= fd00:10:96::a , 10.96.0.10"}, localIP: "169.254.20.10", localIPv6: "fd6c:6f63:616c::10",
			kubeDNS: "[fd00:10:96::a 10.96.0.10]", ipFamilies: "auto"},
		{flags: []string{"--kube-dns-ip=::ffff:10.96.0.10", "--ip-families=ipv4"}, localIP: "169.254.20.10", localIPv6: "fd6c:6f63:616c::10",
			kubeDNS: "[10.96.0.10]", ipFamilies: "ipv4"},
		{flags: []string{"--kube-dns-ip=10.96.0.10", "--ip-families=dual"}, localIP: "169.254.20.10", localIPv6: "fd6c:6f63:616c::10",
			kubeDNS: "[10.96.0.10]", ipFamilies: "dual"},
		{flags: []string{"--local-ip=fd00::53"}, problem: `--local-ip "fd00::53": not an IPv4 address`},
		{flags: []string{"--local-ipv6=169.254.20.10"}, problem: `--local-ipv6 "169.254.20.10": not an IPv6 address`},
		{flags: []string{"--local-ipv6=fe80::10%eth0"}, problem: "zoned addresses are not supported"},
		{flags: []string{"--local-ipv6="}, problem: `--local-ipv6: "" is not an IP address`},
		{flags: []string{"--ip-families=both"}, problem: `--ip-families "both": must be auto, ipv4, ipv6 or dual`},
		{flags: []string{"--kube-dns-ip=10.96.0.10,10.96.0.11"}, problem: "at most one address per IP family"},
		{flags: []string{"--kube-dns-ip=10.96.0.10,fd00::a,fd00::b"}, problem: "at most one address per IP family"},
		{flags: []string{"--ip-families=ipv6", "--kube-dns-ip=10.96.0.10"}, problem: "--kube-dns-ip 10.96.0.10 has no IPv6 address for the fallback"},
		{flags: []string{"--ip-families=ipv4", "--kube-dns-ip=fd00::a"}, problem: "--kube-dns-ip fd00::a has no IPv4 address for the fallback"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.flags, " "), func(t *testing.T) {
			cfg, err := Parse("test", tt.flags, func(string) string { return "" }, io.Discard)
			if tt.problem != "" {
				if err == nil || !strings.Contains(err.Error(), tt.problem) {
					t.Fatalf("error %v, want one containing %q", err, tt.problem)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.LocalIP != tt.localIP || cfg.LocalIPv6 != tt.localIPv6 || fmt.Sprint(cfg.KubeDNSIPs) != tt.kubeDNS || cfg.IPFamilies != tt.ipFamilies {
				t.Errorf("local IPs %s %s, kube-dns %q, families %s; want %s %s, %q, %s", cfg.LocalIP, cfg.LocalIPv6,
					fmt.Sprint(cfg.KubeDNSIPs), cfg.IPFamilies, tt.localIP, tt.localIPv6, tt.kubeDNS, tt.ipFamilies)
			}
		})
	}
}

func TestParseFlagsHelpAndArgs(t *testing.T) {
	t.Parallel()
	if _, err := Parse("test", []string{"-h"}, func(string) string { return "" }, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
	if _, err := Parse("test", []string{"extra"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Error("positional argument accepted")
	}
}

type fakeVersion struct {
	gitVersion string
	err        error
}

func (f fakeVersion) ServerVersion() (*version.Info, error) {
	return &version.Info{GitVersion: f.gitVersion}, f.err
}

func TestResolveNativeSidecars(t *testing.T) {
	t.Parallel()
	tests := []struct {
		flag    string
		server  fakeVersion
		want    bool
		wantErr bool
	}{
		{NativeSidecarsTrue, fakeVersion{err: errors.New("never asked")}, true, false},
		{NativeSidecarsFalse, fakeVersion{err: errors.New("never asked")}, false, false},
		{NativeSidecarsAuto, fakeVersion{gitVersion: "v1.37.2"}, true, false},
		{NativeSidecarsAuto, fakeVersion{gitVersion: "v1.29.0"}, true, false},
		{NativeSidecarsAuto, fakeVersion{gitVersion: "v1.28.9-eks-1234"}, false, false},
		{NativeSidecarsAuto, fakeVersion{gitVersion: "v0.0.0-master+$Format:%H$"}, false, false},
		{NativeSidecarsAuto, fakeVersion{gitVersion: "garbage"}, false, true},
		{NativeSidecarsAuto, fakeVersion{err: errors.New("unreachable")}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.flag+"/"+tt.server.gitVersion, func(t *testing.T) {
			got, err := resolveNativeSidecars(tt.flag, tt.server)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("got %v, %v; want %v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

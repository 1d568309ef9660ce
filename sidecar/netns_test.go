package sidecar

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/systest"
	"github.com/localdns/localdns/webhook"
)

// topology is the closed network of TestStubInNetns for one IP family;
// nothing in it routes anywhere else.
type topology struct {
	iptables       string // iptables or ip6tables
	podIP, nodeIP  string // the veth pair's ends
	prefix         string // their prefix length
	hostPrefix     string // a single address's prefix length
	serviceRange   string // the Service ClusterIP range
	clusterIP      string // kube-dns Service, DNAT'ed in the node namespace
	kubeDNSPodIP   string // where the fake kube-dns really listens
	addrFlags      []string
	nodeCacheLocal string // the node cache's address: the webhook's default
	// serviceAddr formats Service i's address in fakedns's cluster zone of
	// this family: what getaddrinfo gives a pod of this family.
	serviceAddr string
}

var topologies = map[string]topology{
	"ipv4": {
		iptables: "iptables", podIP: "10.200.0.2", nodeIP: "10.200.0.1", prefix: "/24", hostPrefix: "/32",
		serviceRange: "10.96.0.0/12", clusterIP: "10.96.0.10", kubeDNSPodIP: "10.244.0.10",
		nodeCacheLocal: webhook.DefaultLocalIP, serviceAddr: "10.97.0.%d",
	},
	"ipv6": {
		iptables: "ip6tables", podIP: "fd00:200::2", nodeIP: "fd00:200::1", prefix: "/64", hostPrefix: "/128",
		serviceRange: "fd00:96::/112", clusterIP: "fd00:96::10", kubeDNSPodIP: "fd00:244::10",
		// No duplicate address detection: the addresses are usable at once.
		addrFlags:      []string{"nodad"},
		nodeCacheLocal: webhook.DefaultLocalIPv6, serviceAddr: "fd00:97::%x",
	},
}

const (
	stubMetrics = "127.0.0.1:9254"
	nodeMetrics = "127.0.0.1:9253"
)

// TestStubInNetns runs the real binaries the way a musl pod on a node runs
// them, in two network namespaces joined by a veth pair, once per IP family.
// The pod's resolv.conf, the stub's arguments and its probe are what the
// webhook decides for a stub-mode pod whose kube-dns has that family:
//
//	pod ns: resolv.conf [127.0.0.1, 169.254.20.10]    node ns: localdns-nodecache on 169.254.20.10:53 (its own
//	        localdns-stub on 127.0.0.1:53  --veth-->           interface and NOTRACK rules), upstream the ClusterIP
//	        musl (static) and glibc clients                    fakedns (kube-dns) on 10.244.0.10:53, reached
//	                                                           through iptables DNAT of 10.96.0.10:53
//
// and over IPv6 resolv.conf [::1, fd6c:6f63:616c::10], the stub on [::1]:53
// (and 127.0.0.1:53), the node cache on fd6c:6f63:616c::10, fakedns on
// fd00:244::10 behind ip6tables DNAT of fd00:96::10: no IPv4 address but
// loopback in either namespace.
//
// It checks that real musl and glibc lookups are answered; that with the node
// cache SIGKILLed they still are, through the stub's fallback, which reaches
// the ClusterIP over TCP only (an iptables counter on the pod's UDP to it
// stays 0); and that once the node cache is restarted the stub uses it again.
func TestStubInNetns(t *testing.T) {
	systest.RequireRoot(t)
	for _, tool := range []string{"ip", "iptables", "ip6tables", "dig", "getent", "musl-gcc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (hack/install-deps.sh installs it): %v", tool, err)
		}
	}
	bin := systest.BuildBinaries(t, "github.com/localdns/localdns/cmd/localdns-stub",
		"github.com/localdns/localdns/cmd/localdns-nodecache", "github.com/localdns/localdns/hack/fakedns")
	muslResolve := filepath.Join(t.TempDir(), "resolve-musl")
	if out, err := exec.Command("musl-gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-static", "-o", muslResolve, "testdata/resolve.c").CombinedOutput(); err != nil {
		t.Fatalf("musl-gcc: %v\n%s", err, out)
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		t.Run(fam, func(t *testing.T) { testStubInNetns(t, topologies[fam], bin, muslResolve) })
	}
}

func testStubInNetns(t *testing.T, top topology, bin map[string]string, muslResolve string) {
	plan := webhookStubPlan(t, nil, []string{top.clusterIP}, nil)
	nodeCacheIP := plan.Nameservers[1]
	if nodeCacheIP != top.nodeCacheLocal {
		t.Fatalf("the webhook's nameservers %q: want the node cache %s second", plan.Nameservers, top.nodeCacheLocal)
	}

	node, pod := systest.NewNetns(t, "node"), systest.NewNetns(t, "pod")
	addr := func(ns, cidr, dev string) {
		systest.NetnsRun(t, ns, append([]string{"ip", "addr", "add", cidr, "dev", dev}, top.addrFlags...)...)
	}
	systest.NetnsRun(t, node, "ip", "link", "add", "veth-node", "type", "veth", "peer", "name", "veth-pod", "netns", pod)
	addr(node, top.nodeIP+top.prefix, "veth-node")
	systest.NetnsRun(t, node, "ip", "link", "set", "veth-node", "up")
	addr(node, top.kubeDNSPodIP+top.hostPrefix, "lo")
	// Service IPs need a route for a node's own connections to be routed at
	// all before DNAT rewrites them (a real node has a default route).
	systest.NetnsRun(t, node, "ip", "route", "add", top.serviceRange, "dev", "veth-node")
	addr(pod, top.podIP+top.prefix, "veth-pod")
	systest.NetnsRun(t, pod, "ip", "link", "set", "veth-pod", "up")
	systest.NetnsRun(t, pod, "ip", "route", "add", nodeCacheIP+top.hostPrefix, "via", top.nodeIP)
	systest.NetnsRun(t, pod, "ip", "route", "add", top.serviceRange, "via", top.nodeIP)
	// The ClusterIP as kube-proxy's iptables mode makes it: DNAT for traffic
	// from pods (PREROUTING) and from the node itself (OUTPUT: the node cache).
	for _, chain := range []string{"PREROUTING", "OUTPUT"} {
		for _, proto := range []string{"udp", "tcp"} {
			systest.NetnsRun(t, node, top.iptables, "-t", "nat", "-A", chain, "-d", top.clusterIP+top.hostPrefix, "-p", proto, "--dport", "53",
				"-j", "DNAT", "--to-destination", net.JoinHostPort(top.kubeDNSPodIP, "53"))
		}
	}
	// Counters (rules without a target) of every packet from the pod to the ClusterIP.
	for _, proto := range []string{"udp", "tcp"} {
		systest.NetnsRun(t, node, top.iptables, "-t", "mangle", "-A", "PREROUTING", "-i", "veth-node", "-d", top.clusterIP+top.hostPrefix,
			"-p", proto, "--dport", "53", "-m", "comment", "--comment", "pod-to-clusterip-"+proto)
	}
	// What kubelet writes from the webhook's dnsConfig; nsswitch so that glibc asks DNS only.
	systest.WriteNetnsFile(t, pod, "resolv.conf", resolvConf(plan))
	systest.WriteNetnsFile(t, pod, "nsswitch.conf", "hosts: files dns\n")

	systest.Start(t, "fakedns", "ip", "netns", "exec", node, bin["fakedns"], "--listen", net.JoinHostPort(top.kubeDNSPodIP, "53"), "--services", "50")
	nodeCacheArgs := []string{"ip", "netns", "exec", node, bin["localdns-nodecache"], "--listen", net.JoinHostPort(nodeCacheIP, "53"),
		"--upstream", net.JoinHostPort(top.clusterIP, "53"), "--setup-interface", "--setup-rules", "--metrics-addr", nodeMetrics}
	nodeCache := systest.Start(t, "localdns-nodecache", nodeCacheArgs...)
	systest.WaitFor(t, "the node cache to be ready", func() (bool, string) {
		code, body := systest.HTTPGet(t, node, nodeMetrics, "/readyz")
		return code == http.StatusOK, fmt.Sprintf("/readyz: %d %s%s", code, body, nodeCache.Logs())
	})
	// The webhook's container arguments, plus metrics to look inside.
	c := plan.Stub.Container
	stub := systest.Start(t, "localdns-stub", slices.Concat([]string{"ip", "netns", "exec", pod, bin["localdns-stub"]},
		c.Args, []string{"--metrics-addr", stubMetrics})...)
	// The webhook's exec startup probe.
	systest.WaitFor(t, "the stub's probe to pass", func() (bool, string) {
		probe := c.StartupProbe.Exec.Command
		out, err := exec.Command("ip", slices.Concat([]string{"netns", "exec", pod, bin["localdns-stub"]}, probe[1:])...).CombinedOutput()
		return err == nil, string(out) + stub.Logs()
	})

	svc := 0
	// lookup resolves the next Service's short name with musl and glibc
	// (each its own name, so neither is answered from a cache the other filled).
	lookup := func(t *testing.T) {
		t.Helper()
		for _, client := range []struct {
			name string
			argv []string
		}{
			{"musl getaddrinfo", []string{muslResolve}},
			{"glibc getent ahosts", []string{"getent", "ahosts"}},
		} {
			svc++
			name, want := fmt.Sprintf("svc-%d.default", svc), fmt.Sprintf(top.serviceAddr, svc)
			start := time.Now()
			out, err := exec.Command("ip", append([]string{"netns", "exec", pod}, append(client.argv, name)...)...).CombinedOutput()
			// Reported, not asserted: the time includes starting the process.
			t.Logf("%s %s: %v", client.name, name, time.Since(start).Round(time.Millisecond))
			if err != nil || !strings.Contains(string(out), want) {
				t.Errorf("%s %s: %v, output %q; want %s", client.name, name, err, out, want)
			}
		}
	}
	stubSeries := func(server, transport string) string {
		return fmt.Sprintf(`localdns_stub_upstream_requests_total{server="%s",transport="%s"}`, net.JoinHostPort(server, "53"), transport)
	}
	clusterIPPackets := func(proto string) int {
		return iptablesPackets(t, node, top.iptables, "mangle", "PREROUTING", "pod-to-clusterip-"+proto)
	}
	clusterIP := top.clusterIP

	t.Run("answers through the node cache", func(t *testing.T) {
		lookup(t)
		lookup(t)
		if out := systest.NetnsRun(t, pod, "dig", "@"+plan.Nameservers[0], "+time=2", "+tries=1", "+tcp", "+short", "_http._tcp.svc-3.default.svc.cluster.local", "SRV"); out != "0 100 80 svc-3.default.svc.cluster.local.\n" {
			t.Errorf("SRV over TCP to the stub: %q", out)
		}
		m := metricsInNetns(t, pod, stubMetrics)
		if m[stubSeries(nodeCacheIP, "udp")] == 0 {
			t.Errorf("the stub never asked the node cache over UDP:\n%s", upstreamSeries(m))
		}
		if n := m[stubSeries(clusterIP, "tcp")]; n != 0 {
			t.Errorf("the stub asked the fallback %v times while the node cache was up", n)
		}
	})

	t.Run("node cache SIGKILLed: answers through the TCP fallback", func(t *testing.T) {
		nodeCache.Signal(t, syscall.SIGKILL)
		tcpBefore := clusterIPPackets("tcp")
		for range 3 {
			lookup(t)
		}
		m := metricsInNetns(t, pod, stubMetrics)
		if m[stubSeries(clusterIP, "tcp")] == 0 {
			t.Errorf("the stub's fallback was never asked over TCP:\n%s", upstreamSeries(m))
		}
		if got := m[fmt.Sprintf(`localdns_stub_upstream_healthy{server="%s"}`, net.JoinHostPort(nodeCacheIP, "53"))]; got != 0 {
			t.Errorf("node cache health %v in the stub, want 0 (down)", got)
		}
		if clusterIPPackets("tcp") == tcpBefore {
			t.Error("no TCP packet from the pod reached the ClusterIP")
		}
	})

	t.Run("node cache back: used again", func(t *testing.T) {
		restarted := systest.Start(t, "localdns-nodecache (restarted)", nodeCacheArgs...)
		healthy := fmt.Sprintf(`localdns_stub_upstream_healthy{server="%s"}`, net.JoinHostPort(nodeCacheIP, "53"))
		systest.WaitFor(t, "the stub to see the node cache healthy again", func() (bool, string) {
			m := metricsInNetns(t, pod, stubMetrics)
			return m[healthy] == 1, fmt.Sprintf("%s = %v%s", healthy, m[healthy], restarted.Logs())
		})
		before := metricsInNetns(t, pod, stubMetrics)
		lookup(t)
		if out := systest.NetnsRun(t, pod, "dig", "@"+plan.Nameservers[0], "+time=2", "+tries=1", "+short", "svc-40.default.svc.cluster.local"); out != "10.97.0.40\n" {
			t.Errorf("dig through the stub: %q", out)
		}
		after := metricsInNetns(t, pod, stubMetrics)
		if after[stubSeries(nodeCacheIP, "udp")] <= before[stubSeries(nodeCacheIP, "udp")] {
			t.Errorf("the stub did not ask the restarted node cache over UDP (%v before, %v after)",
				before[stubSeries(nodeCacheIP, "udp")], after[stubSeries(nodeCacheIP, "udp")])
		}
		if d := after[stubSeries(clusterIP, "tcp")] - before[stubSeries(clusterIP, "tcp")]; d != 0 {
			t.Errorf("the stub still asked the fallback %v times after the node cache returned", d)
		}
		nm := metricsInNetns(t, node, nodeMetrics)
		if got := nm[`localdns_nodecache_requests_total{proto="udp",qtype="A",rcode="NOERROR"}`]; got == 0 {
			t.Errorf("the restarted node cache counts no UDP A requests:\n%s", seriesWithPrefix(nm, "localdns_nodecache_requests_total"))
		}
	})

	if n := clusterIPPackets("udp"); n != 0 {
		t.Errorf("%d UDP packets from the pod reached the ClusterIP; the stub must reach it over TCP only", n)
	}
	if code := stub.Terminate(t); code != 0 {
		t.Errorf("stub exit status %d after SIGTERM, want 0%s", code, stub.Logs())
	}
}

// iptablesPackets returns the packet counter of the rule with the comment;
// iptables is iptables or ip6tables.
func iptablesPackets(t *testing.T, ns, iptables, table, chain, comment string) int {
	t.Helper()
	for line := range strings.Lines(systest.NetnsRun(t, ns, iptables, "-t", table, "-L", chain, "-v", "-n", "-x")) {
		if strings.Contains(line, "/* "+comment+" */") {
			n, err := strconv.Atoi(strings.Fields(line)[0])
			if err != nil {
				t.Fatalf("iptables counter in %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no rule %q in %s %s", comment, table, chain)
	return 0
}

// metricsInNetns scrapes /metrics inside the namespace into series -> value.
func metricsInNetns(t *testing.T, ns, addr string) map[string]float64 {
	t.Helper()
	code, body := systest.HTTPGet(t, ns, addr, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET %s/metrics in %s: %d %s", addr, ns, code, body)
	}
	series := map[string]float64{}
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(line[i+1:]), 64); err == nil {
			series[line[:i]] = v
		}
	}
	return series
}

// seriesWithPrefix lists the series whose name starts with prefix, for failure messages.
func seriesWithPrefix(m map[string]float64, prefix string) string {
	var lines []string
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			lines = append(lines, fmt.Sprintf("%s %v", k, v))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func upstreamSeries(m map[string]float64) string {
	return seriesWithPrefix(m, "localdns_stub_upstream_")
}

// TestStubNonRootInNetns runs the stub the way the webhook's container spec
// does: uid 65532, every capability dropped but NET_BIND_SERVICE from the
// bounding set, no new privileges. Such a process's effective set is empty,
// so binding port 53 (of ::1 and 127.0.0.1, an IPv6 pod's pair) needs the
// pod sysctl ip_unprivileged_port_start=53, which the webhook sets; without
// it the stub exits 1 at once, saying why.
func TestStubNonRootInNetns(t *testing.T) {
	systest.RequireRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatalf("setpriv (util-linux) is needed: %v", err)
	}
	bin := systest.BuildBinaries(t, "github.com/localdns/localdns/cmd/localdns-stub")["localdns-stub"]
	// t.TempDir's directories are 0700: let uid 65532 reach the binary.
	for dir := filepath.Dir(bin); dir != os.TempDir() && dir != "/"; dir = filepath.Dir(dir) {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pod := systest.NewNetns(t, "pod")
	argv := []string{"ip", "netns", "exec", pod, "setpriv", "--reuid", "65532", "--regid", "65532", "--clear-groups",
		"--bounding-set", "-all,+net_bind_service", "--no-new-privs",
		// An IPv6 pod's pair of addresses: the sysctl, named net.ipv4, governs
		// IPv6 binds too. Nothing at the node cache: SERVFAIL, still an answer.
		bin, "--listen", "[::1]:53", "--listen", "127.0.0.1:53", "--node-cache", "127.0.0.2:53"}

	t.Run("without the sysctl: bind refused", func(t *testing.T) {
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "permission denied") {
			t.Errorf("got %v, want exit status 1 with \"permission denied\":\n%s", err, out)
		}
	})

	t.Run("with ip_unprivileged_port_start=53: serves", func(t *testing.T) {
		systest.NetnsRun(t, pod, "sysctl", "-q", "-w", "net.ipv4.ip_unprivileged_port_start=53")
		stub := systest.Start(t, "localdns-stub (uid 65532)", argv...)
		for _, listen := range []string{"[::1]:53", "127.0.0.1:53"} {
			systest.WaitFor(t, "the stub's probe of "+listen+" to pass", func() (bool, string) {
				out, err := exec.Command("ip", "netns", "exec", pod, bin, "probe", "--listen", listen).CombinedOutput()
				return err == nil, string(out) + stub.Logs()
			})
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", stub.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"Uid:\t65532\t65532\t65532\t65532", "CapEff:\t0000000000000000"} {
			if !strings.Contains(string(status), want) {
				t.Errorf("/proc/<stub>/status lacks %q:\n%s", want, status)
			}
		}
		if code := stub.Terminate(t); code != 0 {
			t.Errorf("exit status %d after SIGTERM, want 0%s", code, stub.Logs())
		}
	})
}

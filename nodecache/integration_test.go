package nodecache

import (
	"fmt"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/localdns/localdns/internal/systest"
)

// TestNodeCacheInNetns runs the real binary the way a node runs it, in a
// closed topology of two namespaces joined by a veth pair:
//
//	client ns (dig, getent)  --veth 192.0.2.0/24, fd00:2::/64-->  node ns: localdns-nodecache on
//	                                                               169.254.20.10:53 and [fd00:20::10]:53,
//	                                                               fakedns (kube-dns) on 127.0.0.1:5301
//
// It checks answers over UDP and TCP, IPv4 and IPv6, through real resolvers,
// the addresses and every rule, that DNS to the listen IPs takes no conntrack
// entry (while other DNS does), repair after a flush,
// metrics and readiness, that SIGTERM exits 0 leaving the setup (so clients
// are refused at once, not left to time out), that a new instance adopts the
// setup, and that `cleanup` removes it.
func TestNodeCacheInNetns(t *testing.T) {
	systest.RequireRoot(t)
	for _, tool := range []string{"ip", "iptables", "dig", "getent", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (hack/install-deps.sh installs it): %v", tool, err)
		}
	}
	bin := systest.BuildBinaries(t, "github.com/localdns/localdns/cmd/localdns-nodecache", "github.com/localdns/localdns/hack/fakedns")
	nodeNS, clientNS := systest.NewNetns(t, "node"), systest.NewNetns(t, "client")
	systest.NetnsRun(t, nodeNS, "ip", "link", "add", "veth-node", "type", "veth", "peer", "name", "veth-client", "netns", clientNS)
	systest.NetnsRun(t, nodeNS, "ip", "addr", "add", "192.0.2.1/24", "dev", "veth-node")
	systest.NetnsRun(t, nodeNS, "ip", "-6", "addr", "add", "fd00:2::1/64", "dev", "veth-node", "nodad")
	systest.NetnsRun(t, nodeNS, "ip", "link", "set", "veth-node", "up")
	systest.NetnsRun(t, clientNS, "ip", "addr", "add", "192.0.2.2/24", "dev", "veth-client")
	// A global IPv6 address makes glibc's AI_ADDRCONFIG ask for AAAA too: A and
	// AAAA in parallel from one socket, the pattern that races in conntrack.
	systest.NetnsRun(t, clientNS, "ip", "-6", "addr", "add", "fd00:2::2/64", "dev", "veth-client", "nodad")
	systest.NetnsRun(t, clientNS, "ip", "link", "set", "veth-client", "up")
	systest.NetnsRun(t, clientNS, "ip", "route", "add", "169.254.20.10/32", "via", "192.0.2.1")
	systest.NetnsRun(t, clientNS, "ip", "-6", "route", "add", "fd00:20::10/128", "via", "fd00:2::1")
	// glibc in the client namespace resolves through the node cache only:
	// `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf.
	systest.WriteNetnsFile(t, clientNS, "resolv.conf", "nameserver 169.254.20.10\n"+
		"search default.svc.cluster.local svc.cluster.local cluster.local\n"+
		"options ndots:5 timeout:2 attempts:2\n")

	// Turn connection tracking on in the node namespace the way any node has
	// it (kube-proxy installs this very rule): NOTRACK as iptables-nft
	// translates it does not, so without this "no entry" would prove nothing.
	// The rule also makes `iptables`'s backend the one holding more rules, so
	// --iptables-mode=auto must pick the backend this test inspects.
	for _, family := range []string{family4, family6} {
		systest.NetnsRun(t, nodeNS, family, "-t", "filter", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	}
	wantBackend := "backend=nft"
	if strings.Contains(systest.Run(t, "iptables", "-V"), "legacy") {
		wantBackend = "backend=legacy"
	}

	upstream := systest.Start(t, "fakedns", "ip", "netns", "exec", nodeNS, bin["fakedns"], "--listen", "127.0.0.1:5301", "--services", "10")
	defer upstream.Terminate(t)
	listen := []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53"), netip.MustParseAddrPort("[fd00:20::10]:53")}
	listenFlag := listen[0].String() + "," + listen[1].String()
	readyFile := filepath.Join(t.TempDir(), "ready")
	isReady := func() bool {
		return exec.Command(bin["localdns-nodecache"], "ready", "--ready-file", readyFile).Run() == nil
	}
	nodecacheArgs := []string{"--listen", listenFlag, "--upstream", "127.0.0.1:5301", "--metrics-addr", "127.0.0.1:9253",
		"--setup-interface", "--setup-rules", "--interface-name", "ldtest0", "--reconcile-interval", "100ms", "--ready-file", readyFile}
	cache := systest.Start(t, "nodecache", append([]string{"ip", "netns", "exec", nodeNS, bin["localdns-nodecache"]}, nodecacheArgs...)...)

	systest.WaitFor(t, "/readyz to turn 200", func() (bool, string) {
		code, body := systest.HTTPGet(t, nodeNS, "127.0.0.1:9253", "/readyz")
		return code == http.StatusOK, fmt.Sprintf("%d %s\n%s", code, body, cache.Logs())
	})
	systest.WaitFor(t, "`localdns-nodecache ready` to pass", func() (bool, string) { return isReady(), cache.Logs() })

	t.Run("answers", func(t *testing.T) {
		digAt := func(server string, args ...string) string {
			return systest.NetnsRun(t, clientNS, append([]string{"dig", "@" + server, "+time=2", "+tries=2"}, args...)...)
		}
		dig := func(args ...string) string { return digAt("169.254.20.10", args...) }
		tests := []struct {
			name   string
			server string
			args   []string
			want   string
		}{
			{"A over UDP", "169.254.20.10", []string{"+short", "svc-1.default.svc.cluster.local", "A"}, "10.97.0.1\n"},
			{"A over UDP, cached", "169.254.20.10", []string{"+short", "svc-1.default.svc.cluster.local", "A"}, "10.97.0.1\n"},
			{"AAAA over TCP", "169.254.20.10", []string{"+tcp", "+short", "svc-2.default.svc.cluster.local", "AAAA"}, "fd00:97::2\n"},
			{"SRV over TCP", "169.254.20.10", []string{"+tcp", "+short", "_http._tcp.svc-3.default.svc.cluster.local", "SRV"}, "0 100 80 svc-3.default.svc.cluster.local.\n"},
			{"IPv6 listen address, UDP", "fd00:20::10", []string{"+short", "svc-7.default.svc.cluster.local", "AAAA"}, "fd00:97::7\n"},
			{"IPv6 listen address, TCP", "fd00:20::10", []string{"+tcp", "+short", "svc-7.default.svc.cluster.local", "A"}, "10.97.0.7\n"},
		}
		for _, tc := range tests {
			if got := digAt(tc.server, tc.args...); got != tc.want {
				t.Errorf("%s: dig @%s %q = %q, want %q", tc.name, tc.server, tc.args, got, tc.want)
			}
		}
		if out := dig("nope.default.svc.cluster.local", "A"); !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "SOA") {
			t.Errorf("NXDOMAIN with SOA expected:\n%s", out)
		}
		// glibc's getaddrinfo: the search list (first candidate NXDOMAIN) and A+AAAA in parallel.
		out := systest.NetnsRun(t, clientNS, "getent", "ahosts", "svc-4.default")
		for _, want := range []string{"10.97.0.4", "fd00:97::4"} {
			if !strings.Contains(out, want) {
				t.Errorf("getent ahosts svc-4.default lacks %s:\n%s", want, out)
			}
		}
	})

	t.Run("setup in place", func(t *testing.T) {
		assertNodeSetup(t, nodeNS, listen, true)
		if !strings.Contains(cache.Logs(), wantBackend) {
			t.Errorf("auto mode did not detect %s:\n%s", wantBackend, cache.Logs())
		}
	})

	t.Run("conntrack bypassed", func(t *testing.T) {
		// Control: DNS to the node's veth address (not a listen IP; nothing
		// listens there) is tracked, which shows tracking is on for both
		// families. DNS to the listen IPs, over UDP and TCP, must have no entry.
		for _, server := range []string{"192.0.2.1", "fd00:2::1"} {
			_ = exec.Command("ip", "netns", "exec", clientNS, "dig", "@"+server, "+time=1", "+tries=1", "control.cluster.local").Run()
		}
		tests := []struct{ family, control, listenIP string }{
			{"ipv4", "dst=192.0.2.1 ", "dst=169.254.20.10 "},
			{"ipv6", "dst=fd00:2::1 ", "dst=fd00:20::10 "},
		}
		for _, tc := range tests {
			udp := systest.NetnsRun(t, nodeNS, "conntrack", "-L", "-f", tc.family, "-p", "udp", "--dport", "53")
			if !strings.Contains(udp, tc.control) {
				t.Errorf("%s: the control query was not tracked; is tracking on?\n%s", tc.family, udp)
			}
			tcp := systest.NetnsRun(t, nodeNS, "conntrack", "-L", "-f", tc.family, "-p", "tcp", "--dport", "53")
			if strings.Contains(udp+tcp, tc.listenIP) {
				t.Errorf("%s: DNS to the listen IP was tracked:\n%s%s", tc.family, udp, tcp)
			}
		}
	})

	t.Run("repairs after a flush", func(t *testing.T) {
		systest.NetnsRun(t, nodeNS, "iptables", "-t", "raw", "-F")
		systest.NetnsRun(t, nodeNS, "iptables", "-t", "filter", "-F", "INPUT")
		systest.NetnsRun(t, nodeNS, "ip", "addr", "del", "169.254.20.10/32", "dev", holder(t, nodeNS, "169.254.20.10/32"))
		systest.WaitFor(t, "the reconcile to restore the setup", func() (bool, string) {
			missing := missingSetup(t, nodeNS, listen)
			return len(missing) == 0, strings.Join(missing, "\n")
		})
		if got := systest.NetnsRun(t, clientNS, "dig", "@169.254.20.10", "+time=2", "+tries=2", "+short", "svc-5.default.svc.cluster.local"); got != "10.97.0.5\n" {
			t.Errorf("after the repair: %q", got)
		}
		_, metrics := systest.HTTPGet(t, nodeNS, "127.0.0.1:9253", "/metrics")
		for _, want := range []string{
			`localdns_nodecache_setup_repairs_total{part="interface"} 1`,
			`localdns_nodecache_setup_repairs_total{part="rules"} 12`, // 8 raw + 4 filter INPUT
			`localdns_nodecache_setup_errors_total{part="rules"} 0`,
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
	})

	t.Run("metrics", func(t *testing.T) {
		code, metrics := systest.HTTPGet(t, nodeNS, "127.0.0.1:9253", "/metrics")
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d", code)
		}
		for _, want := range []string{"localdns_nodecache_requests_total{", "localdns_nodecache_cache_hits_total", "localdns_nodecache_setup_repairs_total", "process_resident_memory_bytes", "go_goroutines"} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		if code, _ := systest.HTTPGet(t, nodeNS, "127.0.0.1:9253", "/healthz"); code != http.StatusOK {
			t.Errorf("/healthz: %d", code)
		}
	})

	t.Run("SIGTERM leaves the setup", func(t *testing.T) {
		if code := cache.Terminate(t); code != 0 {
			t.Fatalf("exit status %d after SIGTERM, want 0:\n%s", code, cache.Logs())
		}
		assertNodeSetup(t, nodeNS, listen, true)
		if isReady() {
			t.Error("`localdns-nodecache ready` passes after the instance stopped: the ready file was left")
		}
		// The IP still exists with nothing behind it: clients are refused at once
		// (ICMP port unreachable) and move to their next nameserver.
		out, _ := exec.Command("ip", "netns", "exec", clientNS, "dig", "@169.254.20.10", "+time=5", "+tries=1", "svc-1.default.svc.cluster.local").CombinedOutput()
		if !strings.Contains(string(out), "connection refused") {
			t.Errorf("with no process listening, dig should be refused:\n%s", out)
		}
	})

	t.Run("a new instance adopts the setup", func(t *testing.T) {
		next := systest.Start(t, "nodecache-2", append([]string{"ip", "netns", "exec", nodeNS, bin["localdns-nodecache"]}, nodecacheArgs...)...)
		systest.WaitFor(t, "the new instance to be ready", func() (bool, string) {
			code, body := systest.HTTPGet(t, nodeNS, "127.0.0.1:9253", "/readyz")
			return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
		})
		if got := systest.NetnsRun(t, clientNS, "dig", "@169.254.20.10", "+time=2", "+tries=2", "+short", "svc-6.default.svc.cluster.local"); got != "10.97.0.6\n" {
			t.Errorf("new instance answered %q", got)
		}
		if code := next.Terminate(t); code != 0 {
			t.Fatalf("exit status %d, want 0", code)
		}
		for _, part := range []string{"interface", "rules"} {
			if want := fmt.Sprintf("part=%s changes=0 adopted=true", part); !strings.Contains(next.Logs(), want) {
				t.Errorf("the new instance did not adopt the %s (no %q in its log):\n%s", part, want, next.Logs())
			}
		}
		assertNodeSetup(t, nodeNS, listen, true)
	})

	t.Run("cleanup removes the setup", func(t *testing.T) {
		out, err := exec.Command("ip", "netns", "exec", nodeNS, bin["localdns-nodecache"], "cleanup",
			"--listen", listenFlag, "--interface-name", "ldtest0").CombinedOutput()
		if err != nil {
			t.Fatalf("cleanup: %v\n%s", err, out)
		}
		assertNodeSetup(t, nodeNS, listen, false)
	})
}

// missingSetup lists what of the node setup is absent: an address, or a
// rule (by chain and comment) as `iptables -S` / `ip6tables -S` show it.
func missingSetup(t *testing.T, ns string, listen []netip.AddrPort) []string {
	t.Helper()
	var missing []string
	for _, ap := range listen {
		if holder(t, ns, netip.PrefixFrom(ap.Addr(), ap.Addr().BitLen()).String()) == "" {
			missing = append(missing, "address "+ap.Addr().String())
		}
	}
	for _, family := range []string{family4, family6} {
		for _, table := range []string{"raw", "filter"} {
			present := commentsIn([]byte(systest.NetnsRun(t, ns, family, "-t", table, "-S")))
			for _, rl := range rulesFor(listen) {
				if rl.family == family && rl.table == table && !present[rl.chain+" "+rl.comment] {
					missing = append(missing, fmt.Sprintf("%s %s %s %q", family, table, rl.chain, rl.comment))
				}
			}
		}
	}
	return missing
}

// assertNodeSetup checks the setup is entirely there (every rule exactly
// once), or entirely gone.
func assertNodeSetup(t *testing.T, ns string, listen []netip.AddrPort, want bool) {
	t.Helper()
	if want {
		if missing := missingSetup(t, ns, listen); len(missing) > 0 {
			t.Errorf("node setup incomplete, missing:\n%s", strings.Join(missing, "\n"))
		}
	}
	for _, family := range []string{family4, family6} {
		for _, table := range []string{"raw", "filter"} {
			listed := systest.NetnsRun(t, ns, family, "-t", table, "-S")
			n := strings.Count(listed, `--comment "localdns:`)
			if wantN := map[bool]int{true: 8, false: 0}[want]; n != wantN {
				t.Errorf("%s -t %s: %d localdns rules, want %d:\n%s", family, table, n, wantN, listed)
			}
		}
	}
	if !want {
		for _, ap := range listen {
			prefix := netip.PrefixFrom(ap.Addr(), ap.Addr().BitLen()).String()
			if dev := holder(t, ns, prefix); dev != "" {
				t.Errorf("%s still on %s after cleanup", prefix, dev)
			}
		}
		if links := systest.NetnsRun(t, ns, "ip", "-o", "link"); slices.Contains(strings.Fields(links), "ldtest0:") {
			t.Errorf("interface ldtest0 still present after cleanup")
		}
	}
}

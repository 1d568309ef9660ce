package nodecache

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
	requireRoot(t)
	for _, tool := range []string{"ip", "iptables", "dig", "getent", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (hack/install-deps.sh installs it): %v", tool, err)
		}
	}
	bin := buildBinaries(t, "github.com/localdns/localdns/cmd/localdns-nodecache", "github.com/localdns/localdns/hack/fakedns")
	nodeNS, clientNS := newNetns(t, "node"), newNetns(t, "client")
	nsRun(t, nodeNS, "ip", "link", "add", "veth-node", "type", "veth", "peer", "name", "veth-client", "netns", clientNS)
	nsRun(t, nodeNS, "ip", "addr", "add", "192.0.2.1/24", "dev", "veth-node")
	nsRun(t, nodeNS, "ip", "-6", "addr", "add", "fd00:2::1/64", "dev", "veth-node", "nodad")
	nsRun(t, nodeNS, "ip", "link", "set", "veth-node", "up")
	nsRun(t, clientNS, "ip", "addr", "add", "192.0.2.2/24", "dev", "veth-client")
	// A global IPv6 address makes glibc's AI_ADDRCONFIG ask for AAAA too: A and
	// AAAA in parallel from one socket, the pattern that races in conntrack.
	nsRun(t, clientNS, "ip", "-6", "addr", "add", "fd00:2::2/64", "dev", "veth-client", "nodad")
	nsRun(t, clientNS, "ip", "link", "set", "veth-client", "up")
	nsRun(t, clientNS, "ip", "route", "add", "169.254.20.10/32", "via", "192.0.2.1")
	nsRun(t, clientNS, "ip", "-6", "route", "add", "fd00:20::10/128", "via", "fd00:2::1")
	// glibc in the client namespace resolves through the node cache only:
	// `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf.
	writeNetnsResolvConf(t, clientNS, "nameserver 169.254.20.10\n"+
		"search default.svc.cluster.local svc.cluster.local cluster.local\n"+
		"options ndots:5 timeout:2 attempts:2\n")

	// Turn connection tracking on in the node namespace the way any node has
	// it (kube-proxy installs this very rule): NOTRACK as iptables-nft
	// translates it does not, so without this "no entry" would prove nothing.
	// The rule also makes `iptables`'s backend the one holding more rules, so
	// --iptables-mode=auto must pick the backend this test inspects.
	for _, family := range []string{family4, family6} {
		nsRun(t, nodeNS, family, "-t", "filter", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	}
	wantBackend := "backend=nft"
	if strings.Contains(run(t, "iptables", "-V"), "legacy") {
		wantBackend = "backend=legacy"
	}

	upstream := startProcess(t, "fakedns", "ip", "netns", "exec", nodeNS, bin["fakedns"], "--listen", "127.0.0.1:5301", "--services", "10")
	defer upstream.stop(t)
	listen := []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53"), netip.MustParseAddrPort("[fd00:20::10]:53")}
	listenFlag := listen[0].String() + "," + listen[1].String()
	nodecacheArgs := []string{"--listen", listenFlag, "--upstream", "127.0.0.1:5301", "--metrics-addr", "127.0.0.1:9253",
		"--setup-interface", "--setup-rules", "--interface-name", "ldtest0", "--reconcile-interval", "100ms"}
	cache := startProcess(t, "nodecache", append([]string{"ip", "netns", "exec", nodeNS, bin["localdns-nodecache"]}, nodecacheArgs...)...)

	waitFor(t, "/readyz to turn 200", func() (bool, string) {
		code, body := httpGetInNetns(t, nodeNS, "127.0.0.1:9253", "/readyz")
		return code == http.StatusOK, fmt.Sprintf("%d %s\n%s", code, body, cache.logs())
	})

	t.Run("answers", func(t *testing.T) {
		digAt := func(server string, args ...string) string {
			return nsRun(t, clientNS, append([]string{"dig", "@" + server, "+time=2", "+tries=2"}, args...)...)
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
		out := nsRun(t, clientNS, "getent", "ahosts", "svc-4.default")
		for _, want := range []string{"10.97.0.4", "fd00:97::4"} {
			if !strings.Contains(out, want) {
				t.Errorf("getent ahosts svc-4.default lacks %s:\n%s", want, out)
			}
		}
	})

	t.Run("setup in place", func(t *testing.T) {
		assertNodeSetup(t, nodeNS, listen, true)
		if !strings.Contains(cache.logs(), wantBackend) {
			t.Errorf("auto mode did not detect %s:\n%s", wantBackend, cache.logs())
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
			udp := nsRun(t, nodeNS, "conntrack", "-L", "-f", tc.family, "-p", "udp", "--dport", "53")
			if !strings.Contains(udp, tc.control) {
				t.Errorf("%s: the control query was not tracked; is tracking on?\n%s", tc.family, udp)
			}
			tcp := nsRun(t, nodeNS, "conntrack", "-L", "-f", tc.family, "-p", "tcp", "--dport", "53")
			if strings.Contains(udp+tcp, tc.listenIP) {
				t.Errorf("%s: DNS to the listen IP was tracked:\n%s%s", tc.family, udp, tcp)
			}
		}
	})

	t.Run("repairs after a flush", func(t *testing.T) {
		nsRun(t, nodeNS, "iptables", "-t", "raw", "-F")
		nsRun(t, nodeNS, "iptables", "-t", "filter", "-F", "INPUT")
		nsRun(t, nodeNS, "ip", "addr", "del", "169.254.20.10/32", "dev", holder(t, nodeNS, "169.254.20.10/32"))
		waitFor(t, "the reconcile to restore the setup", func() (bool, string) {
			missing := missingSetup(t, nodeNS, listen)
			return len(missing) == 0, strings.Join(missing, "\n")
		})
		if got := nsRun(t, clientNS, "dig", "@169.254.20.10", "+time=2", "+tries=2", "+short", "svc-5.default.svc.cluster.local"); got != "10.97.0.5\n" {
			t.Errorf("after the repair: %q", got)
		}
		_, metrics := httpGetInNetns(t, nodeNS, "127.0.0.1:9253", "/metrics")
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
		code, metrics := httpGetInNetns(t, nodeNS, "127.0.0.1:9253", "/metrics")
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d", code)
		}
		for _, want := range []string{"localdns_nodecache_requests_total{", "localdns_nodecache_cache_hits_total", "localdns_nodecache_setup_repairs_total", "process_resident_memory_bytes", "go_goroutines"} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		if code, _ := httpGetInNetns(t, nodeNS, "127.0.0.1:9253", "/healthz"); code != http.StatusOK {
			t.Errorf("/healthz: %d", code)
		}
	})

	t.Run("SIGTERM leaves the setup", func(t *testing.T) {
		if code := cache.terminate(t); code != 0 {
			t.Fatalf("exit status %d after SIGTERM, want 0:\n%s", code, cache.logs())
		}
		assertNodeSetup(t, nodeNS, listen, true)
		// The IP still exists with nothing behind it: clients are refused at once
		// (ICMP port unreachable) and move to their next nameserver.
		out, _ := exec.Command("ip", "netns", "exec", clientNS, "dig", "@169.254.20.10", "+time=5", "+tries=1", "svc-1.default.svc.cluster.local").CombinedOutput()
		if !strings.Contains(string(out), "connection refused") {
			t.Errorf("with no process listening, dig should be refused:\n%s", out)
		}
	})

	t.Run("a new instance adopts the setup", func(t *testing.T) {
		next := startProcess(t, "nodecache-2", append([]string{"ip", "netns", "exec", nodeNS, bin["localdns-nodecache"]}, nodecacheArgs...)...)
		waitFor(t, "the new instance to be ready", func() (bool, string) {
			code, body := httpGetInNetns(t, nodeNS, "127.0.0.1:9253", "/readyz")
			return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
		})
		if got := nsRun(t, clientNS, "dig", "@169.254.20.10", "+time=2", "+tries=2", "+short", "svc-6.default.svc.cluster.local"); got != "10.97.0.6\n" {
			t.Errorf("new instance answered %q", got)
		}
		if code := next.terminate(t); code != 0 {
			t.Fatalf("exit status %d, want 0", code)
		}
		for _, part := range []string{"interface", "rules"} {
			if want := fmt.Sprintf("part=%s changes=0 adopted=true", part); !strings.Contains(next.logs(), want) {
				t.Errorf("the new instance did not adopt the %s (no %q in its log):\n%s", part, want, next.logs())
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

// buildBinaries builds each main package into a temporary directory and
// returns the paths by base name.
func buildBinaries(t *testing.T, pkgs ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	paths := map[string]string{}
	for _, pkg := range pkgs {
		out := filepath.Join(dir, filepath.Base(pkg))
		if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
		paths[filepath.Base(pkg)] = out
	}
	return paths
}

func writeNetnsResolvConf(t *testing.T, ns, content string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// process is a started command whose output is kept for failure messages.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startProcess(t *testing.T, name string, argv ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(argv[0], argv[1:]...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *process) logs() string { return p.name + " output:\n" + p.out.String() }

// terminate sends SIGTERM and returns the exit status. `ip netns exec`
// execs the command, so the signal reaches the program itself.
func (p *process) terminate(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not exit within 30s of SIGTERM:\n%s", p.name, p.logs())
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *process) stop(t *testing.T) {
	t.Helper()
	p.terminate(t)
}

// waitFor polls cond until it holds, failing after a deadline with cond's
// last description of the state.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last state:\n%s", what, state)
		}
		<-tick.C
	}
}

// httpGetInNetns fetches a path from a server inside the namespace; the
// socket is opened on a thread inside it. A failed connection reads as status 0.
func httpGetInNetns(t *testing.T, ns, addr, path string) (int, string) {
	t.Helper()
	var code int
	var body string
	inNetns(t, ns, func() {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			body = err.Error()
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			body = err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		code, body = resp.StatusCode, string(b)
	})
	return code, body
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
			present := commentsIn([]byte(nsRun(t, ns, family, "-t", table, "-S")))
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
			listed := nsRun(t, ns, family, "-t", table, "-S")
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
		if links := nsRun(t, ns, "ip", "-o", "link"); slices.Contains(strings.Fields(links), "ldtest0:") {
			t.Errorf("interface ldtest0 still present after cleanup")
		}
	}
}

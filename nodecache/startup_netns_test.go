package nodecache

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/localdns/localdns/internal/systest"
)

// TestNoGapAtStart starts the real binary and, the instant 169.254.20.10
// appears on the node (a netlink event), a client load, as pods on a node
// send when its node cache starts or restarts. The listen IP must never exist
// without a socket bound to it: the node's `Udp: NoPorts` counter stays
// where it was, and every query is answered (none waits out a pod's 1 s
// resolver timeout).
func TestNoGapAtStart(t *testing.T) {
	systest.RequireRoot(t)
	bin := systest.BuildBinaries(t, "github.com/localdns/localdns/cmd/localdns-nodecache", "github.com/localdns/localdns/hack/fakedns")
	nodeNS, clientNS := closedNode(t, "gap", bin["fakedns"])
	noPortsBefore := udpNoPorts(t, nodeNS)

	appeared := addressAppears(t, nodeNS, netip.MustParseAddr("169.254.20.10"))
	load := startUDPLoad(t, clientNS, "169.254.20.10:53", 16, appeared)
	cache := systest.Start(t, "nodecache", "ip", "netns", "exec", nodeNS, bin["localdns-nodecache"],
		"--listen", "169.254.20.10:53", "--upstream", "127.0.0.1:5301", "--metrics-addr", "127.0.0.1:9253",
		"--interface-name", "ldtest0")
	systest.WaitFor(t, "the node cache to answer the load", func() (bool, string) {
		return load.answered() > 200, cache.Logs()
	})
	results := load.stop()

	if d := udpNoPorts(t, nodeNS) - noPortsBefore; d != 0 {
		t.Errorf("Udp NoPorts rose by %d during start-up: the listen IP existed with no socket bound", d)
	}
	failed := 0
	for _, r := range results {
		if r.err != nil {
			failed++
			if failed <= 5 {
				t.Errorf("query sent %v after the address appeared failed: %v", r.sent.Sub(results[0].sent), r.err)
			}
		}
	}
	t.Logf("%d queries from the instant the address appeared, %d failed", len(results), failed)
	if code := cache.Terminate(t); code != 0 {
		t.Errorf("exit status %d after SIGTERM:\n%s", code, cache.Logs())
	}
}

// closedNode makes a node and a client namespace joined by a veth pair, the
// client routing 169.254.20.10 to the node, and starts fakedns as kube-dns
// on the node's 127.0.0.1:5301. Nothing has a route out.
func closedNode(t *testing.T, role, fakedns string) (nodeNS, clientNS string) {
	t.Helper()
	nodeNS, clientNS = systest.NewNetns(t, role+"node"), systest.NewNetns(t, role+"client")
	systest.NetnsRun(t, nodeNS, "ip", "link", "add", "veth-node", "type", "veth", "peer", "name", "veth-client", "netns", clientNS)
	systest.NetnsRun(t, nodeNS, "ip", "addr", "add", "192.0.2.1/24", "dev", "veth-node")
	systest.NetnsRun(t, nodeNS, "ip", "link", "set", "veth-node", "up")
	systest.NetnsRun(t, clientNS, "ip", "addr", "add", "192.0.2.2/24", "dev", "veth-client")
	systest.NetnsRun(t, clientNS, "ip", "link", "set", "veth-client", "up")
	systest.NetnsRun(t, clientNS, "ip", "route", "add", "169.254.20.10/32", "via", "192.0.2.1")
	upstream := systest.Start(t, "fakedns", "ip", "netns", "exec", nodeNS, fakedns, "--listen", "127.0.0.1:5301", "--services", "10")
	t.Cleanup(func() { upstream.Terminate(t) })
	return nodeNS, clientNS
}

// udpNoPorts reads the namespace's count of datagrams that reached a local
// address with no socket bound to their port.
func udpNoPorts(t *testing.T, ns string) int64 {
	t.Helper()
	out := systest.NetnsRun(t, ns, "cat", "/proc/net/snmp")
	var header []string
	for line := range strings.SplitSeq(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "Udp:" {
			continue
		}
		if header == nil {
			header = fields
			continue
		}
		for i, name := range header {
			if name == "NoPorts" && i < len(fields) {
				n, err := strconv.ParseInt(fields[i], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
	}
	t.Fatalf("no Udp NoPorts in /proc/net/snmp:\n%s", out)
	return 0
}

// udpLoad sends queries, one at a time per socket, each waiting up to 1 s
// (a pod's resolver timeout) for its reply.
type udpLoad struct {
	wg      sync.WaitGroup
	done    chan struct{}
	mu      sync.Mutex
	results []queryResult
}

type queryResult struct {
	sent time.Time
	err  error // nil: answered
}

// addressAppears returns a channel closed when ip is added to an interface
// of namespace ns (netlink RTM_NEWADDR), or is there already.
func addressAppears(t *testing.T, ns string, ip netip.Addr) <-chan struct{} {
	t.Helper()
	handle, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { handle.Close() })
	updates, done := make(chan netlink.AddrUpdate, 16), make(chan struct{})
	t.Cleanup(func() { close(done) })
	if err := netlink.AddrSubscribeAt(handle, updates, done); err != nil {
		t.Fatalf("subscribe to address events in %s: %v", ns, err)
	}
	appeared := make(chan struct{})
	go func() {
		for u := range updates {
			if a, ok := netip.AddrFromSlice(u.LinkAddress.IP); ok && u.NewAddr && a.Unmap() == ip {
				close(appeared)
				return
			}
		}
	}()
	return appeared
}

// startUDPLoad opens n sockets in namespace ns, connected to server, and
// from the moment start is closed sends from each until stop. The sockets
// live in ns whatever thread reads them.
func startUDPLoad(t *testing.T, ns, server string, n int, start <-chan struct{}) *udpLoad {
	t.Helper()
	var conns []net.Conn
	var err error
	systest.InNetns(t, ns, func() {
		for range n {
			var c net.Conn
			if c, err = net.Dial("udp", server); err != nil {
				return
			}
			conns = append(conns, c)
		}
	})
	if err != nil {
		t.Fatalf("client sockets: %v", err)
	}
	l := &udpLoad{done: make(chan struct{})}
	for i, c := range conns {
		l.wg.Go(func() {
			defer c.Close()
			select {
			case <-start:
			case <-l.done:
				return
			}
			buf := make([]byte, 512)
			for q := 0; q < 20000; q++ { // bounded; stop ends it first
				select {
				case <-l.done:
					return
				default:
				}
				m := new(dns.Msg)
				m.SetQuestion(fmt.Sprintf("svc-%d.default.svc.cluster.local.", (i+q)%10), dns.TypeA)
				pkt, _ := m.Pack()
				r := queryResult{sent: time.Now()}
				_ = c.SetDeadline(r.sent.Add(time.Second))
				if _, err := c.Write(pkt); err != nil {
					r.err = err
				} else if _, err := c.Read(buf); err != nil {
					r.err = err
				}
				l.mu.Lock()
				l.results = append(l.results, r)
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() { l.stop() })
	return l
}

func (l *udpLoad) answered() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.results {
		if r.err == nil {
			n++
		}
	}
	return n
}

// stop ends the load and returns every query's result.
func (l *udpLoad) stop() []queryResult {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.results
}

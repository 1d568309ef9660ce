package nodecache

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/dnstest"
	"github.com/localdns/localdns/internal/systest"
)

// handoverName is a handover socket name unique to one test.
var handoverSeq atomic.Int64

func handoverName(t *testing.T) string {
	return fmt.Sprintf("localdns-test-handover-%d-%d", time.Now().UnixNano(), handoverSeq.Add(1))
}

// testResolver builds a resolver on addr in front of upstream, with metrics
// on a registry of its own.
func testResolver(t *testing.T, addr netip.AddrPort, upstream netip.AddrPort, command Command) (*resolver, *prometheus.Registry) {
	t.Helper()
	cfg := Config{
		Command: command, Listen: []netip.AddrPort{addr}, ClusterDomain: "cluster.local.",
		Upstream: []netip.AddrPort{upstream}, UpstreamTransport: TransportTCP,
		CacheSize: 100, CacheMaxBytes: 1 << 20, MaxCachedAnswer: 1 << 14, StaleMax: time.Hour,
	}
	reg := prometheus.NewRegistry()
	res, err := newResolver(context.Background(), cfg, reg, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.fwd.Close() })
	return res, reg
}

// askUDP asks addr once over UDP and returns the answer's first address, or
// the error.
func askUDP(addr netip.AddrPort) string {
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("who.example.", dns.TypeA)
	resp, _, err := c.Exchange(m, addr.String())
	if err != nil {
		return err.Error()
	}
	if len(resp.Answer) == 0 {
		return dns.RcodeToString[resp.Rcode]
	}
	return resp.Answer[0].(*dns.A).A.String()
}

// TestStandbyFollowsPrimaries drives the handover in one process: the
// standby stays unbound while a node cache is linked, binds the moment the
// link dies (as when the process is killed), stands down when a node cache
// links again, and answers "ok" to a node cache leaving only once it serves.
func TestStandbyFollowsPrimaries(t *testing.T) {
	up := dnstest.Start(t, dnstest.Config{Name: "kube-dns", Handler: func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0},
			A: []byte{192, 0, 2, 1}}}
		_ = w.WriteMsg(m)
	}})
	pc, l := dnstest.ListenBoth(t) // an address no one else takes
	addr := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	l.Close()

	name := handoverName(t)
	p, err := listenForPrimaries(name, discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go p.accept(ctx)
	standbyRes, _ := testResolver(t, addr, up.Addr(), CommandStandby)
	metrics := newStandbyMetrics()
	followed := make(chan error, 1)
	go func() { followed <- followPrimaries(ctx, p, standbyRes, metrics, time.Hour, time.Second, discard()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-followed; err != nil {
			t.Errorf("followPrimaries: %v", err)
		}
		p.close()
	})
	serving := func() bool { return standbyRes.engine.Listening() }

	// A node cache serves and links: the standby, in its start-up grace, waits.
	primary, _ := testResolver(t, addr, up.Addr(), CommandServe)
	if err := primary.engine.Start(); err != nil {
		t.Fatal(err)
	}
	link := linkToStandby(context.Background(), name, discard())
	systest.WaitFor(t, "the node cache to link", func() (bool, string) {
		n, _ := p.state()
		return n == 1, fmt.Sprintf("%d linked", n)
	})
	if serving() {
		t.Fatal("standby serving while a node cache is linked")
	}

	// The node cache dies: its sockets and its link close together.
	link.stop()
	<-link.done
	if err := primary.engine.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	systest.WaitFor(t, "the standby to take over", func() (bool, string) { return serving(), "" })
	if got := askUDP(addr); got != "192.0.2.1" {
		t.Fatalf("with only the standby: %s", got)
	}

	// A node cache is back: the standby stands down, draining.
	next, _ := testResolver(t, addr, up.Addr(), CommandServe)
	if err := next.engine.Start(); err != nil {
		t.Fatal(err)
	}
	nextLink := linkToStandby(context.Background(), name, discard())
	systest.WaitFor(t, "the standby to stand down", func() (bool, string) { return !serving(), "" })
	if got := askUDP(addr); got != "192.0.2.1" {
		t.Fatalf("with the node cache back: %s", got)
	}

	// It leaves on SIGTERM: "ok" comes once the standby serves.
	hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer hcancel()
	if err := nextLink.handOver(hctx); err != nil {
		t.Fatalf("handOver: %v", err)
	}
	if !serving() {
		t.Fatal("handOver returned before the standby served")
	}
	if err := next.engine.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := askUDP(addr); got != "192.0.2.1" {
		t.Fatalf("after the node cache left: %s", got)
	}
	if got := metricCount(t, metrics.takeovers); got != 2 {
		t.Errorf("takeovers %v, want 2", got)
	}
}

func metricCount(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 {
		t.Fatalf("gather: %v", err)
	}
	m := mfs[0].GetMetric()[0]
	return m.GetCounter().GetValue() + m.GetGauge().GetValue()
}

// TestStandbyDrill runs the real binaries on a closed node: a node cache and
// its standby, a client load on 169.254.20.10, and then the node cache
// SIGKILLed (as by the OOM killer or a crash), a new node cache started (the
// standby stands down), and that one stopped with SIGTERM (it hands over).
// Only the queries that sat in the killed process's socket may be lost, and
// no query sent after the kill may wait out a resolver timeout.
func TestStandbyDrill(t *testing.T) {
	systest.RequireRoot(t)
	bin := systest.BuildBinaries(t, "github.com/localdns/localdns/cmd/localdns-nodecache", "github.com/localdns/localdns/hack/fakedns")
	nodeNS, clientNS := closedNode(t, "sb", bin["fakedns"])

	inNode := func(args ...string) []string {
		return append([]string{"ip", "netns", "exec", nodeNS, bin["localdns-nodecache"]}, args...)
	}
	primaryArgs := inNode("--listen", "169.254.20.10:53", "--upstream", "127.0.0.1:5301", "--metrics-addr", "127.0.0.1:9253",
		"--interface-name", "ldtest0")
	primary := systest.Start(t, "nodecache", primaryArgs...)
	linked := func(p *systest.Process) func() (bool, string) {
		return func() (bool, string) { return strings.Contains(p.Logs(), "linked to the standby"), p.Logs() }
	}
	systest.WaitFor(t, "the node cache to serve", func() (bool, string) {
		return strings.Contains(primary.Logs(), "serving DNS"), primary.Logs()
	})
	standby := systest.Start(t, "standby", inNode("standby", "--listen", "169.254.20.10:53", "--upstream", "127.0.0.1:5301",
		"--metrics-addr", "127.0.0.1:9254")...)
	systest.WaitFor(t, "the node cache to link to the standby", linked(primary))

	start := make(chan struct{})
	close(start)
	load := startUDPLoad(t, clientNS, "169.254.20.10:53", 16, start)
	systest.WaitFor(t, "answers", func() (bool, string) { return load.answered() > 500, "" })

	killedAt := time.Now()
	primary.Signal(t, syscall.SIGKILL) // returns once the process is reaped: its sockets are closed
	diedAt := time.Now()
	systest.WaitFor(t, "the standby to take over", func() (bool, string) {
		return strings.Contains(standby.Logs(), "the standby serves"), standby.Logs()
	})
	answeredAtKill := load.answered()
	systest.WaitFor(t, "answers from the standby", func() (bool, string) { return load.answered() > answeredAtKill+500, "" })

	next := systest.Start(t, "nodecache-2", primaryArgs...)
	systest.WaitFor(t, "the new node cache to link", linked(next))
	systest.WaitFor(t, "the standby to stand down", func() (bool, string) {
		return strings.Contains(standby.Logs(), "standing by\n") || strings.Count(standby.Logs(), "standing by") >= 2, standby.Logs()
	})
	answeredBack := load.answered()
	systest.WaitFor(t, "answers from the new node cache", func() (bool, string) { return load.answered() > answeredBack+500, "" })

	if code := next.Terminate(t); code != 0 {
		t.Errorf("node cache exit status %d:\n%s", code, next.Logs())
	}
	if !strings.Contains(next.Logs(), "the standby serves; leaving") {
		t.Errorf("the node cache left without handing over:\n%s", next.Logs())
	}
	answeredLeft := load.answered()
	systest.WaitFor(t, "answers after the handover", func() (bool, string) { return load.answered() > answeredLeft+500, "" })
	results := load.stop()

	// A query sent before the killed process was gone may have sat in its
	// socket, which the kernel drops with it: that is the loss nothing on the
	// node can prevent, counted here; at most one per client, each waiting
	// for its answer. One sent in the instant between the death and the
	// standby's bind met no socket: refused at once (ICMP port unreachable,
	// the first few of them), the client moves on at no cost and sends its
	// next, so a client can meet several. Nothing sent after may fail.
	var lost, refused, failedAfter int
	for _, r := range results {
		switch {
		case r.err == nil:
		case r.sent.Before(diedAt) && errors.Is(r.err, syscall.ECONNREFUSED):
			refused++
		case r.sent.Before(diedAt):
			lost++
		default:
			failedAfter++
			if failedAfter <= 5 {
				t.Errorf("query sent %v after the killed process was gone failed: %v", r.sent.Sub(diedAt), r.err)
			}
		}
	}
	t.Logf("%d queries; sent in the %v before the killed process was gone: lost with its socket %d, refused at once %d; failed after: %d",
		len(results), diedAt.Sub(killedAt).Round(time.Microsecond), lost, refused, failedAfter)
	if lost > 16 {
		t.Errorf("%d queries lost, more than the 16 the clients can have had outstanding", lost)
	}
	if code := standby.Terminate(t); code != 0 {
		t.Errorf("standby exit status %d:\n%s", code, standby.Logs())
	}
}

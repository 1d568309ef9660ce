package dnsengine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// heldUpstream answers from the fake zone, except that a name put on hold
// waits (or its context ends) until released, after reporting itself on called.
type heldUpstream struct {
	mu     sync.Mutex
	gates  map[string]chan struct{} // lowercase name -> closed on release
	called chan string
}

func newHeldUpstream() *heldUpstream {
	return &heldUpstream{gates: make(map[string]chan struct{}), called: make(chan string, 4)}
}

// hold makes the next requests for name wait; the returned func releases them.
func (h *heldUpstream) hold(name string) (release func()) {
	gate := make(chan struct{})
	h.mu.Lock()
	h.gates[name] = gate
	h.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(gate) }) }
}

func (h *heldUpstream) Exchange(ctx context.Context, req *dns.Msg) (*dns.Msg, error) {
	name := strings.ToLower(req.Question[0].Name)
	h.mu.Lock()
	gate := h.gates[name]
	h.mu.Unlock()
	if gate != nil {
		h.called <- name
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return zoneAnswer(req), nil
}

// unansweredQueries sends n queries for name to addr, each from its own
// socket (so SO_REUSEPORT's hash of the 4-tuple spreads them over every socket
// of the group), and returns the errors of those not answered with NOERROR.
func unansweredQueries(addr, name string, n int) []string {
	var (
		mu     sync.Mutex
		failed []string
		wg     sync.WaitGroup
	)
	for range n {
		wg.Go(func() {
			// The timeout only tells a lost query from a late one; it is not a speed bound.
			c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
			resp, _, err := c.Exchange(question(name, dns.TypeA), addr)
			if err == nil && resp.Rcode != dns.RcodeSuccess {
				err = fmt.Errorf("rcode %s", dns.RcodeToString[resp.Rcode])
			}
			if err != nil {
				mu.Lock()
				failed = append(failed, err.Error())
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed
}

// TestRollingUpdateLosesNoQuery is the node cache's rolling update under load:
// engine A stops while engine B shares its port (SO_REUSEPORT). Queries from
// many client sockets must all be answered, by A or by B, while A's misses are
// answered, and after A's readers have drained their sockets while A still
// waits for background work (a held prefetch). A drained socket left open
// would receive its share of the queries and drop them.
func TestRollingUpdateLosesNoQuery(t *testing.T) {
	t.Parallel()
	const clients = 64
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String() // a port that was free a moment ago
	probe.Close()

	up := newHeldUpstream()
	a := startEngine(t, func(c *Config) {
		c.Listen = []netip.AddrPort{netip.MustParseAddrPort(addr)}
		c.Upstream = up
		c.UpstreamTimeout = time.Minute
	})
	drained := make(chan struct{}, a.cfg.UDPSockets)
	a.testHookUDPDrained = func() { drained <- struct{}{} } // read by A's readers only after Shutdown begins

	// A alone: cache hot.example., then hold its prefetch (in the last 10% of
	// its TTL, enough hits), which A's Shutdown waits for after the UDP drain.
	a.query(t, "udp", question("hot.example.", dns.TypeA))
	releasePrefetch := up.hold("hot.example.")
	defer releasePrefetch()
	a.clock.Advance(19 * time.Second) // TTL 20s: inside the prefetch window, still fresh
	for range DefaultPrefetchHits {
		a.query(t, "udp", question("hot.example.", dns.TypeA))
	}
	if name := receive(t, up.called, "prefetch"); name != "hot.example." {
		t.Fatalf("upstream asked for %q, want the prefetch of hot.example.", name)
	}
	// A miss in flight on A holds its Shutdown in the first phase.
	releaseMiss := up.hold("slow.example.")
	defer releaseMiss()
	missAnswered := make(chan error, 1)
	go func() {
		c := &dns.Client{Net: "udp", Timeout: 30 * time.Second}
		_, _, err := c.Exchange(question("slow.example.", dns.TypeA), addr)
		missAnswered <- err
	}()
	if name := receive(t, up.called, "miss"); name != "slow.example." {
		t.Fatalf("upstream asked for %q, want slow.example.", name)
	}

	b := startEngine(t, func(c *Config) { c.Listen = []netip.AddrPort{netip.MustParseAddrPort(addr)} })
	stopped := make(chan error, 1)
	go func() { stopped <- a.Shutdown(context.Background()) }()
	for a.Listening() { // Shutdown has begun
		runtime.Gosched()
	}
	if failed := unansweredQueries(addr, "hot.example.", clients); len(failed) > 0 {
		t.Errorf("while A's miss is in flight: %d of %d queries unanswered, first: %s", len(failed), clients, failed[0])
	}

	releaseMiss()
	if err := receive(t, missAnswered, "reply to the miss"); err != nil {
		t.Fatalf("miss in flight during Shutdown: %v", err)
	}
	for range a.cfg.UDPSockets {
		receive(t, drained, "UDP reader drained")
	}
	if failed := unansweredQueries(addr, "hot.example.", clients); len(failed) > 0 {
		t.Errorf("after A's UDP readers drained: %d of %d queries unanswered, first: %s", len(failed), clients, failed[0])
	}

	releasePrefetch()
	if err := receive(t, stopped, "Shutdown return"); err != nil {
		t.Fatalf("A's Shutdown: %v", err)
	}
	if got := b.up.Total(); got == 0 {
		t.Fatal("B answered nothing: the queries never reached the second instance")
	}
}

// sendQuery sends a query for name to addr from a socket of its own; the
// returned channel gets the reply, or nil if none came.
func sendQuery(t *testing.T, addr, name string) <-chan *dns.Msg {
	t.Helper()
	co, err := dns.DialTimeout("udp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := co.WriteMsg(question(name, dns.TypeA)); err != nil {
		t.Fatal(err)
	}
	reply := make(chan *dns.Msg, 1)
	go func() {
		defer co.Close()
		co.SetReadDeadline(time.Now().Add(10 * time.Second)) // tells a lost reply from a late one
		m, _ := co.ReadMsg()
		reply <- m
	}()
	return reply
}

// queued returns how many bytes wait in the receive queue of u.
func queued(t *testing.T, u *udpListener) int {
	t.Helper()
	rc, err := u.conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ioctlErr error
	if err := rc.Control(func(fd uintptr) { n, ioctlErr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
		t.Fatal(err)
	}
	if ioctlErr != nil {
		t.Fatal(ioctlErr)
	}
	return n
}

// TestShutdownAnswersMissReadWhileDraining: a miss found in the queue by the
// final drain (after the misses in flight were answered) still gets its reply,
// so the draining reader must keep its socket open, and keep reading, until
// that reply is sent; a new query meanwhile is refused, as the socket left
// its SO_REUSEPORT group when the drain began.
func TestShutdownAnswersMissReadWhileDraining(t *testing.T) {
	t.Parallel()
	up := newHeldUpstream()
	var stallNext atomic.Bool
	stalled, resume := make(chan struct{}), make(chan struct{})
	a := startEngine(t, func(c *Config) {
		c.Upstream = up
		c.UDPSockets = 1
		c.UpstreamTimeout = time.Minute
		c.Now = func() time.Time { // read by the UDP reader once per batch
			if stallNext.CompareAndSwap(true, false) {
				stalled <- struct{}{}
				<-resume
			}
			return time.Now()
		}
	})
	a.query(t, "udp", question("www.example.", dns.TypeA)) // cached
	releaseSlow := up.hold("slow.example.")
	defer releaseSlow()
	releaseLate := up.hold("late.example.")
	defer releaseLate()
	slow := sendQuery(t, a.udp, "slow.example.")
	if name := receive(t, up.called, "miss"); name != "slow.example." {
		t.Fatalf("upstream asked for %q, want slow.example.", name)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- a.Shutdown(context.Background()) }()
	for a.Listening() { // Shutdown has begun
		runtime.Gosched()
	}

	// Stall the reader inside a batch, so that the next query waits in the queue.
	stallNext.Store(true)
	hit := sendQuery(t, a.udp, "www.example.")
	receive(t, stalled, "reader stalled")
	late := sendQuery(t, a.udp, "late.example.")
	a.mu.Lock()
	u := a.Engine.udp[0]
	a.mu.Unlock()
	for deadline := time.Now().Add(10 * time.Second); queued(t, u) == 0; runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatal("late.example. never reached the socket's queue")
		}
	}
	releaseSlow()
	if m := receive(t, slow, "reply to slow.example."); m == nil || m.Rcode != dns.RcodeSuccess {
		t.Fatalf("miss in flight during Shutdown: %v", m)
	}
	for deadline := time.Now().Add(10 * time.Second); !a.udpDraining.Load(); runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatal("Shutdown never began the UDP drain")
		}
	}
	close(resume) // the reader answers its batch, then drains: late.example. misses
	if name := receive(t, up.called, "late miss"); name != "late.example." {
		t.Fatalf("upstream asked for %q, want late.example.", name)
	}
	if m := receive(t, hit, "reply to the stalled hit"); m == nil || m.Rcode != dns.RcodeSuccess {
		t.Fatalf("hit during Shutdown: %v", m)
	}
	// The draining socket left its SO_REUSEPORT group and no other socket
	// holds the port: a new query is refused at once (the client moves on
	// to its next nameserver), never queued where it could be dropped.
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	if resp, _, err := c.Exchange(question("www.example.", dns.TypeA), a.udp); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("new query while the socket waits for its miss: %v, %v; want connection refused", resp, err)
	}
	releaseLate()
	if m := receive(t, late, "reply to late.example."); m == nil || m.Rcode != dns.RcodeSuccess {
		t.Fatalf("miss read by the drain: %v", m)
	}
	if err := receive(t, stopped, "Shutdown return"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

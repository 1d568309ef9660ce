package dnsengine

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
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
	const clients = 64
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String() // a port that was free a moment ago
	probe.Close()

	up := newHeldUpstream()
	a := startEngine(t, func(c *Config) {
		c.Listen = []string{addr}
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

	b := startEngine(t, func(c *Config) { c.Listen = []string{addr} })
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

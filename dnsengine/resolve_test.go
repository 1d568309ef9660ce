package dnsengine

import (
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestCoalescing(t *testing.T) {
	t.Parallel()
	const clients = 10
	te := startEngine(t, nil)
	gate, called := make(chan struct{}), make(chan string, clients)
	te.up.Hold(gate, called)
	joined := make(chan struct{}, clients)
	te.flightMu.Lock()
	te.testHookCoalesced = func() { joined <- struct{}{} }
	te.flightMu.Unlock()

	var wg sync.WaitGroup
	replies := make(chan *dns.Msg, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			network := []string{"udp", "tcp"}[i%2]
			c := &dns.Client{Net: network, Timeout: 5 * time.Second}
			addr := map[string]string{"udp": te.udp, "tcp": te.tcp}[network]
			resp, _, err := c.Exchange(question("same.example.", dns.TypeA), addr)
			if err != nil {
				t.Errorf("client %d: %v", i, err)
				return
			}
			replies <- resp
		}()
	}
	receive(t, called, "upstream call") // the first miss is at the upstream...
	for range clients - 1 {
		receive(t, joined, "coalesced miss") // ...and every other one waits for it
	}
	close(gate)
	wg.Wait()
	close(replies)
	for resp := range replies {
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 2 {
			t.Fatalf("reply %v", resp)
		}
	}
	if got := te.up.Total(); got != 1 {
		t.Fatalf("upstream calls %d, want 1", got)
	}
	if got := te.metricValue(t, "coalesced_total", nil); got != clients-1 {
		t.Fatalf("coalesced_total = %v, want %d", got, clients-1)
	}
}

func TestServeStale(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		staleMax  time.Duration
		after     time.Duration // past the entry's expiry
		wantRcode int
	}{
		{"within stale max", time.Hour, 5 * time.Second, dns.RcodeSuccess},
		{"at the end of stale max", time.Hour, time.Hour - time.Second, dns.RcodeSuccess},
		{"beyond stale max", time.Hour, time.Hour, dns.RcodeServerFailure},
		{"serve-stale off", 0, time.Second, dns.RcodeServerFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			te := startEngine(t, func(c *Config) { c.StaleMax = tt.staleMax })
			te.query(t, "udp", question("www.example.", dns.TypeA)) // cached for 20s
			te.up.SetFail(true)
			te.clock.Advance(20*time.Second + tt.after)
			resp := te.query(t, "udp", question("www.example.", dns.TypeA))
			if resp.Rcode != tt.wantRcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			wantStale := 0.0
			if tt.wantRcode == dns.RcodeSuccess {
				wantStale = 1
				for _, rr := range resp.Answer {
					if rr.Header().Ttl != staleTTL {
						t.Fatalf("stale TTL %d, want %d", rr.Header().Ttl, staleTTL)
					}
				}
			}
			if got := te.metricValue(t, "cache_stale_total", nil); got != wantStale {
				t.Fatalf("cache_stale_total = %v, want %v", got, wantStale)
			}
			if got := te.up.Total(); got != 2 {
				t.Fatalf("upstream calls %d, want 2 (the expired entry is always retried first)", got)
			}
		})
	}
}

func TestUpstreamFailureWithoutCacheIsServfail(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil)
	te.up.SetFail(true)
	for _, network := range []string{"udp", "tcp"} {
		if resp := te.query(t, network, question("www.example.", dns.TypeA)); resp.Rcode != dns.RcodeServerFailure ||
			len(resp.Question) != 1 || resp.Question[0].Name != "www.example." {
			t.Fatalf("%s: reply %v, want SERVFAIL with the question", network, resp)
		}
	}
	if got := te.metricValue(t, "requests_total", map[string]string{"rcode": "SERVFAIL"}); got != 2 {
		t.Fatalf("requests_total{rcode=SERVFAIL} = %v, want 2", got)
	}
}

func TestStaleAnswerTimerAndRefreshWindow(t *testing.T) {
	t.Parallel()
	te := startEngine(t, func(c *Config) {
		c.StaleAnswerTimeout = 10 * time.Millisecond
		c.UpstreamTimeout = 100 * time.Millisecond
	})
	ask := func(step string) {
		t.Helper()
		resp := te.query(t, "udp", question("www.example.", dns.TypeA))
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) == 0 || resp.Answer[0].Header().Ttl != staleTTL {
			t.Fatalf("%s: reply %v, want the stale answer", step, resp)
		}
	}
	te.query(t, "udp", question("www.example.", dns.TypeA)) // cached for 20s
	called := make(chan string, 4)
	te.up.Hold(make(chan struct{}), called) // the upstream now hangs until its deadline
	te.clock.Advance(21 * time.Second)

	ask("expired, upstream hanging") // answered stale by the timer
	receive(t, called, "upstream call")
	te.waitFlight(keyOf(t, "www.example.", dns.TypeA, false)) // the refresh fails
	ask("within the stale refresh time")
	if got := te.up.Total(); got != 2 {
		t.Fatalf("upstream calls %d, want 2: no refresh within %v of a failed one", got, staleRefreshTime)
	}
	te.clock.Advance(staleRefreshTime)
	ask("after the stale refresh time")
	receive(t, called, "upstream call")
	if got := te.metricValue(t, "cache_stale_total", nil); got != 3 {
		t.Fatalf("cache_stale_total = %v, want 3", got)
	}
}

func TestMissOverflowIsServfail(t *testing.T) {
	t.Parallel()
	te := startEngine(t, func(c *Config) { c.MaxInflightMisses = 1 })
	gate, called := make(chan struct{}), make(chan string, 1)
	te.up.Hold(gate, called)
	first := make(chan *dns.Msg)
	go func() {
		c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
		resp, _, err := c.Exchange(question("www.example.", dns.TypeA), te.udp)
		if err != nil {
			t.Errorf("first query: %v", err)
		}
		first <- resp
	}()
	receive(t, called, "upstream call") // the only miss slot is taken
	if resp := te.query(t, "udp", question("other.example.", dns.TypeA)); resp.Rcode != dns.RcodeServerFailure {
		t.Fatalf("second miss: rcode %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	close(gate)
	if resp := receive(t, first, "first reply"); resp == nil || resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("first query: %v", resp)
	}
	if got := te.metricValue(t, "miss_overflow_total", nil); got != 1 {
		t.Fatalf("miss_overflow_total = %v, want 1", got)
	}
	if resp := te.query(t, "udp", question("other.example.", dns.TypeA)); resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("after the slot was released: rcode %s, want NOERROR", dns.RcodeToString[resp.Rcode])
	}
}

// TestReachableUpstreamReplacesStale: what a reachable upstream answers
// reaches the client and replaces the cached answer, even an error RCODE; a
// stale answer is only for an upstream that cannot be reached. (A stub domain
// removed from kube-dns's configuration must stop resolving.)
func TestReachableUpstreamReplacesStale(t *testing.T) {
	t.Parallel()
	for _, rcode := range []int{dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeNameError} {
		t.Run(dns.RcodeToString[rcode], func(t *testing.T) {
			te := startEngine(t, nil)
			te.query(t, "udp", question("www.example.", dns.TypeA)) // cached for 20s
			te.clock.Advance(21 * time.Second)
			te.up.SetRcode("www.example.", rcode)
			if resp := te.query(t, "udp", question("www.example.", dns.TypeA)); resp.Rcode != rcode {
				t.Fatalf("expired entry, upstream answers %s: got %s, want the upstream's answer",
					dns.RcodeToString[rcode], dns.RcodeToString[resp.Rcode])
			}
			if got := te.metricValue(t, "cache_stale_total", nil); got != 0 {
				t.Fatalf("cache_stale_total = %v, want 0", got)
			}
			// The old answer is gone for good: an unreachable upstream now
			// finds nothing to serve stale.
			te.up.SetFail(true)
			if rcode != dns.RcodeNameError { // NXDOMAIN is cached itself
				if resp := te.query(t, "udp", question("www.example.", dns.TypeA)); resp.Rcode != dns.RcodeServerFailure || len(resp.Answer) != 0 {
					t.Fatalf("upstream unreachable after its %s: %v, want SERVFAIL without the old answer", dns.RcodeToString[rcode], resp)
				}
			}
		})
	}
}

// TestCNAMEToNODATANegative: a CNAME chain that ends in no data is a
// negative answer (RFC 2308): cached by the SOA, not as positive for the
// CNAME's TTL.
func TestCNAMEToNODATANegative(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil)
	resp := te.query(t, "udp", question("cname-nodata.example.", dns.TypeA))
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Fatalf("reply %v, want the CNAME and no data", resp)
	}
	te.clock.Advance(4 * time.Second) // past the SOA minimum (3 s), within the CNAME's 25 s
	te.query(t, "udp", question("cname-nodata.example.", dns.TypeA))
	if got := te.up.Calls("cname-nodata.example.", dns.TypeA, false); got != 2 {
		t.Fatalf("upstream calls %d, want 2: the NODATA expires with its SOA minimum", got)
	}
}

// TestCheckingDisabled: the CD bit goes upstream and is part of the cache
// key: an answer fetched with checking disabled never answers a query
// without it (RFC 4035 3.2.2).
func TestCheckingDisabled(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil)
	cd := question("www.example.", dns.TypeA)
	cd.CheckingDisabled = true
	if resp := te.query(t, "udp", cd); !resp.CheckingDisabled || resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("CD query: %v, want an answer with CD echoed", resp)
	}
	if !te.up.LastRequest().CheckingDisabled {
		t.Fatal("CD not sent upstream")
	}
	te.query(t, "udp", question("www.example.", dns.TypeA))
	if te.up.LastRequest().CheckingDisabled {
		t.Fatal("query without CD sent upstream with CD")
	}
	te.query(t, "udp", cd)
	if got := te.up.Calls("www.example.", dns.TypeA, false); got != 2 {
		t.Fatalf("upstream calls %d, want 2: one per CD value, then hits", got)
	}
}

package dnsengine

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestTTLCountdown(t *testing.T) {
	t.Parallel()
	te := startEngine(t, func(c *Config) { c.PrefetchHits = -1 })
	steps := []struct {
		advance   time.Duration
		wantTTL   uint32
		wantCalls int
	}{
		{0, 20, 1}, // miss: min(CNAME 25, A 20)
		{500 * time.Millisecond, 20, 1},
		{7 * time.Second, 13, 1}, // 12.5s left, rounded up
		{12 * time.Second, 1, 1}, // 0.5s left
		{500 * time.Millisecond, 20, 2},
	}
	for i, s := range steps {
		te.clock.Advance(s.advance)
		resp := te.query(t, "udp", question("www.example.", dns.TypeA))
		for _, rr := range resp.Answer {
			if rr.Header().Ttl != s.wantTTL {
				t.Errorf("step %d: %s TTL %d, want %d", i, dns.TypeToString[rr.Header().Rrtype], rr.Header().Ttl, s.wantTTL)
			}
		}
		if got := te.up.Calls("www.example.", dns.TypeA, false); got != s.wantCalls {
			t.Errorf("step %d: upstream calls %d, want %d", i, got, s.wantCalls)
		}
	}
}

func TestMaxTTLCaps(t *testing.T) {
	t.Parallel()
	te := startEngine(t, func(c *Config) { c.MaxTTL = 10 * time.Second })
	resp := te.query(t, "udp", question("v6.example.", dns.TypeAAAA)) // TTL 3600 upstream
	if got := resp.Answer[0].Header().Ttl; got != 10 {
		t.Fatalf("TTL %d, want the 10s cap", got)
	}
}

func TestNegativeAndUncacheable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		qtype     uint16
		wantRcode int
		wantTTL   uint32 // of the SOA in the reply; cached for this long
		cached    bool
	}{
		{"nx.example.", dns.TypeA, dns.RcodeNameError, 3, true},        // min(SOA TTL 60, MINIMUM 3)
		{"nx-long.example.", dns.TypeA, dns.RcodeNameError, 5, true},   // capped at MaxNegativeTTL
		{"nodata.example.", dns.TypeAAAA, dns.RcodeSuccess, 2, true},   // NODATA: min(SOA TTL 2, MINIMUM 100)
		{"cname-nx.example.", dns.TypeA, dns.RcodeNameError, 1, true},  // the CNAME's TTL 1 is smaller than the SOA's
		{"nx-nosoa.example.", dns.TypeA, dns.RcodeNameError, 0, false}, // RFC 2308: no SOA, no caching
		{"zero.example.", dns.TypeA, dns.RcodeSuccess, 0, false},       // TTL 0
		{"tc.example.", dns.TypeA, dns.RcodeSuccess, 0, false},         // truncated
		{"servfail.example.", dns.TypeA, dns.RcodeServerFailure, 0, false},
		{"mismatch.example.", dns.TypeA, dns.RcodeServerFailure, 0, false}, // wrong question: rejected
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			te := startEngine(t, nil)
			for range 2 {
				resp := te.query(t, "udp", question(tt.name, tt.qtype))
				if resp.Rcode != tt.wantRcode {
					t.Fatalf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.wantRcode])
				}
				if tt.wantTTL != 0 && (len(resp.Ns) != 1 || resp.Ns[0].Header().Ttl != tt.wantTTL) {
					t.Fatalf("authority %v, want one SOA with TTL %d", resp.Ns, tt.wantTTL)
				}
			}
			wantCalls := 2
			if tt.cached {
				wantCalls = 1
			}
			if got := te.up.Calls(tt.name, tt.qtype, false); got != wantCalls {
				t.Fatalf("upstream calls %d, want %d", got, wantCalls)
			}
			if tt.cached {
				te.clock.Advance(time.Duration(tt.wantTTL) * time.Second)
				te.query(t, "udp", question(tt.name, tt.qtype))
				if got := te.up.Calls(tt.name, tt.qtype, false); got != 2 {
					t.Fatalf("after %ds: upstream calls %d, want 2 (expired)", tt.wantTTL, got)
				}
			}
		})
	}
	t.Run("mismatch counted", func(t *testing.T) {
		te := startEngine(t, nil)
		te.query(t, "udp", question("mismatch.example.", dns.TypeA))
		if got := te.metricValue(t, "upstream_invalid_total", nil); got != 1 {
			t.Fatalf("upstream_invalid_total = %v, want 1", got)
		}
	})
}

func TestCapacityEvicts(t *testing.T) {
	t.Parallel()
	const size = 16
	te := startEngine(t, func(c *Config) { c.CacheSize = size })
	for i := range 10 * size {
		te.query(t, "udp", question(fmt.Sprintf("host%d.example.", i), dns.TypeA))
	}
	n, bytes := te.cache.size()
	if n > size || n == 0 {
		t.Fatalf("cache holds %d entries, want 1..%d", n, size)
	}
	if g := te.metricValue(t, "cache_entries", nil); int(g) != n {
		t.Fatalf("cache_entries = %v, want %d", g, n)
	}
	if g := te.metricValue(t, "cache_bytes", nil); int64(g) != bytes || bytes == 0 {
		t.Fatalf("cache_bytes = %v, want %d (> 0)", g, bytes)
	}
	// Entries past their stale window are evicted before live ones.
	c := newCache(1, DefaultCacheMaxBytes, time.Minute)
	now := time.Now().UnixNano()
	c.put([]byte("old"), newEntry(answer{}, 1, now-int64(2*time.Minute)), now)
	c.put([]byte("new"), newEntry(answer{}, 1, now), now)
	if n, _ := c.size(); c.get([]byte("old")) != nil || c.get([]byte("new")) == nil || n != 1 {
		t.Fatal("put into a full one-entry cache did not replace the dead entry")
	}
}

// TestByteBudget: the cache holds entries up to its byte budget, whatever
// their number: many large answers evict each other, the accounted bytes
// never pass the budget, and replacing or removing an entry gives its bytes
// back.
func TestByteBudget(t *testing.T) {
	t.Parallel()
	const budget = 64 << 10
	c := newCache(100000, budget, time.Minute)
	now := time.Now().UnixNano()
	big := answer{wire: make([]byte, 4000)}
	for i := range 200 {
		c.put(fmt.Appendf(nil, "key-%d", i), newEntry(big, 60, now), now)
		if _, bytes := c.size(); bytes > budget {
			t.Fatalf("after %d puts the cache counts %d bytes, over its %d budget", i+1, bytes, budget)
		}
	}
	n, bytes := c.size()
	if n == 0 || n >= 200 {
		t.Fatalf("cache holds %d of 200 entries of 4 KB in a 64 KiB budget", n)
	}
	var sum int64
	for i := range c.shards {
		for k, en := range c.shards[i].entries {
			sum += en.cost(len(k))
		}
	}
	if sum != bytes {
		t.Fatalf("accounted %d bytes, entries cost %d", bytes, sum)
	}
	c.remove([]byte("key-199"))
	c.put([]byte("key-198"), newEntry(answer{wire: []byte{1}}, 60, now), now)
	sum = 0
	for i := range c.shards {
		for k, en := range c.shards[i].entries {
			sum += en.cost(len(k))
		}
	}
	if _, bytes := c.size(); sum != bytes {
		t.Fatalf("after remove and replace: accounted %d bytes, entries cost %d", bytes, sum)
	}
	// An entry larger than a shard's share is not stored at all.
	c.put([]byte("huge"), newEntry(answer{wire: make([]byte, budget)}, 60, now), now)
	if c.get([]byte("huge")) != nil {
		t.Fatal("an entry over a shard's budget was stored")
	}
}

func TestCaseInsensitiveKeyCasePreservingReply(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil)
	for _, name := range []string{"www.example.", "WWW.Example.", "wWw.eXaMpLe."} {
		for _, network := range []string{"udp", "tcp"} {
			resp := te.query(t, network, question(name, dns.TypeA))
			if got := resp.Question[0].Name; got != name {
				t.Errorf("%s: question name %q, want the query's case %q", network, got, name)
			}
			if got := resp.Answer[0].Header().Name; got != name {
				t.Errorf("%s: answer owner %q, want the query's case %q", network, got, name)
			}
		}
	}
	if got := te.up.Total(); got != 1 {
		t.Fatalf("upstream calls %d, want 1 for every case of one name", got)
	}
	if got := te.up.LastRequest().Question[0].Name; got != "www.example." {
		t.Fatalf("upstream asked for %q, want the lowercase name", got)
	}
}

func TestPrefetch(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil) // PrefetchHits 2
	called := make(chan string, 4)
	te.up.Hold(nil, called)
	ask := func() *dns.Msg { return te.query(t, "udp", question("hot.example.", dns.TypeA)) }
	ask() // miss
	receive(t, called, "upstream call")
	ask()                                      // hit 1, outside the prefetch window
	te.clock.Advance(18500 * time.Millisecond) // 1.5s left of 20: inside the last 10% (at least 1s)
	if got := ask().Answer[0].Header().Ttl; got != 2 {
		t.Fatalf("TTL %d, want 2", got)
	}
	receive(t, called, "upstream call") // hit 2 started the refresh
	te.waitFlight(keyOf(t, "hot.example.", dns.TypeA, false))
	te.clock.Advance(2 * time.Second) // the first entry has expired; its refresh has not
	if got := ask().Answer[0].Header().Ttl; got != 18 {
		t.Fatalf("TTL %d after refresh, want 18 (20 from the refresh, 2s ago)", got)
	}
	if got := te.up.Total(); got != 2 {
		t.Fatalf("upstream calls %d, want 2 (miss + prefetch, no miss after expiry)", got)
	}
	if got := te.metricValue(t, "cache_prefetch_total", nil); got != 1 {
		t.Fatalf("cache_prefetch_total = %v, want 1", got)
	}

	// A name hit once in its life is not prefetched: it expires and misses.
	ask2 := func() { te.query(t, "udp", question("cold.example.", dns.TypeA)) }
	ask2()
	receive(t, called, "upstream call")
	te.clock.Advance(19500 * time.Millisecond)
	ask2()
	if got := te.metricValue(t, "cache_prefetch_total", nil); got != 1 {
		t.Fatalf("cache_prefetch_total = %v after a single hit, want still 1", got)
	}
	te.clock.Advance(time.Second)
	ask2()
	receive(t, called, "upstream call")
	if got := te.up.Calls("cold.example.", dns.TypeA, false); got != 2 {
		t.Fatalf("cold name upstream calls %d, want 2", got)
	}
}

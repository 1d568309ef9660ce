package dnsload

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// testServer is a DNS server on 127.0.0.1:0 and a resolver that sends
// every query there.
type testServer struct {
	resolver *net.Resolver
	mu       sync.Mutex
	asked    map[string]int // A questions by name
}

// startServer serves on 127.0.0.1:0: fast.test and every name in
// unique.test answer at once, slow.test after delay, anything else
// NXDOMAIN.
func startServer(t *testing.T, delay time.Duration) *testServer {
	t.Helper()
	ts := &testServer{asked: map[string]int{}}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := q.Question[0].Name
		if q.Question[0].Qtype == dns.TypeA {
			ts.mu.Lock()
			ts.asked[name]++
			ts.mu.Unlock()
		}
		switch {
		case name == "fast.test." || name == "slow.test." || strings.HasSuffix(name, ".unique.test."):
			if name == "slow.test." {
				time.Sleep(delay)
			}
			if q.Question[0].Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
					A:   net.IPv4(10, 0, 0, 1),
				})
			}
		default:
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: mux, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	addr := pc.LocalAddr().String()
	ts.resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
	return ts
}

func TestRunCounts(t *testing.T) {
	const delay = 30 * time.Millisecond
	resolver := startServer(t, delay).resolver
	tests := []struct {
		name       string
		host       string
		maxLookups int64
		wantErrors map[string]int64
		wantSlow   bool
	}{
		{"fast answers", "fast.test.", 40, nil, false},
		{"every lookup at or over the threshold is slow", "slow.test.", 8, nil, true},
		{"NXDOMAIN counts as an error", "missing.test.", 12, map[string]int64{"no such host": 12}, false},
		{"NXDOMAIN of unique names: one kind", "u%d.missing.test.", 12, map[string]int64{"no such host": 12}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Run(context.Background(), Config{
				Host: tt.host, Concurrency: 4, Duration: time.Minute, MaxLookups: tt.maxLookups,
				Slow: delay, LookupTimeout: 5 * time.Second, Resolver: resolver,
			})
			if err != nil {
				t.Fatal(err)
			}
			// The count bound stops the run long before the minute.
			if res.Lookups != tt.maxLookups {
				t.Errorf("lookups = %d, want %d", res.Lookups, tt.maxLookups)
			}
			if wantErr := tt.wantErrors["no such host"]; res.Errors != wantErr || !reflect.DeepEqual(res.ErrorKinds, tt.wantErrors) {
				t.Errorf("errors = %d by kind %v, want %d by kind %v (%s)", res.Errors, res.ErrorKinds, wantErr, tt.wantErrors, res.FirstError)
			}
			if wantSlow := map[bool]int64{true: tt.maxLookups}[tt.wantSlow]; res.SlowCount != wantSlow {
				t.Errorf("slow = %d, want %d", res.SlowCount, wantSlow)
			}
			if int64(len(res.SlowAt)) != min(res.SlowCount, MaxSlowAt) || !slices.IsSorted(res.SlowAt) {
				t.Errorf("slow lookups started at %v, want %d start times, sorted", res.SlowAt, min(res.SlowCount, MaxSlowAt))
			}
			if res.Min > res.Mean || res.Mean > res.Max || res.P99 > res.Max || res.P99 < res.Min {
				t.Errorf("latencies out of order: %s", res)
			}
			// Every goroutine's first answer came after a lookup's latency
			// and within the run.
			if res.First < res.Min || res.First > res.Elapsed {
				t.Errorf("first answers after %s, want within [min %s, elapsed %s]", res.First, res.Min, res.Elapsed)
			}
			if !strings.Contains(res.String(), "lookups=") {
				t.Errorf("summary %q", res)
			}
		})
	}
}

func TestSummarise(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 100; i++ {
		lat = append(lat, time.Duration(i)*100*time.Millisecond) // 0.1 s .. 10 s
	}
	r := Result{Slow: 2 * time.Second}
	r.summarise(lat)
	want := Result{Slow: 2 * time.Second, Lookups: 100, Min: 100 * time.Millisecond, Max: 10 * time.Second,
		Mean: 5050 * time.Millisecond, P99: 9900 * time.Millisecond, SlowCount: 81, Over1s: 91, Over5s: 51}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("summarise =\n%+v\nwant\n%+v", r, want)
	}
}

func TestValidate(t *testing.T) {
	ok := Config{Host: "a", Concurrency: 1, Duration: time.Second, MaxLookups: 1, Slow: time.Second, LookupTimeout: time.Second}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"no host":        func(c *Config) { c.Host = "" },
		"no concurrency": func(c *Config) { c.Concurrency = 0 },
		"no duration":    func(c *Config) { c.Duration = 0 },
		"unbounded":      func(c *Config) { c.MaxLookups = 0 },
		"no threshold":   func(c *Config) { c.Slow = 0 },
		"no timeout":     func(c *Config) { c.LookupTimeout = 0 },
		"negative rate":  func(c *Config) { c.Rate = -1 },
		"two marks":      func(c *Config) { c.Host = "%d.%d.test" },
		"other verb":     func(c *Config) { c.Host = "%s.test" },
		"mark and verb":  func(c *Config) { c.Host = "%d.%s.test" },
	} {
		c := ok
		mutate(&c)
		if c.Validate() == nil {
			t.Errorf("%s: Validate() = nil, want an error", name)
		}
	}
}

// TestRunRate: with a rate the run starts no more lookups than the rate
// allows over its duration, whatever the concurrency; without one the same
// run starts far more (the cap is what bounds it).
func TestRunRate(t *testing.T) {
	resolver := startServer(t, 0).resolver
	const d = 300 * time.Millisecond
	capped, err := Run(context.Background(), Config{Host: "fast.test.", Concurrency: 8, Duration: d,
		MaxLookups: 100_000, Slow: time.Second, LookupTimeout: time.Second, Rate: 20, Resolver: resolver})
	if err != nil {
		t.Fatal(err)
	}
	if limit := int64(d.Seconds()*20) + 1; capped.Lookups < 1 || capped.Lookups > limit {
		t.Errorf("rate 20/s for %s: %d lookups, want 1..%d", d, capped.Lookups, limit)
	}
	free, err := Run(context.Background(), Config{Host: "fast.test.", Concurrency: 8, Duration: d,
		MaxLookups: 100_000, Slow: time.Second, LookupTimeout: time.Second, Resolver: resolver})
	if err != nil {
		t.Fatal(err)
	}
	if free.Lookups <= capped.Lookups {
		t.Errorf("no rate: %d lookups, not more than the capped run's %d", free.Lookups, capped.Lookups)
	}
}

// TestRunOwnResolvers: goroutines sharing a resolver share the resolution
// of a name being looked up (Go's singleflight); with their own, every
// lookup asks the server.
func TestRunOwnResolvers(t *testing.T) {
	const lookups = 8
	srv := startServer(t, 100*time.Millisecond)
	res, err := Run(context.Background(), Config{Host: "slow.test.", Concurrency: 4, Duration: time.Minute,
		MaxLookups: lookups, Slow: time.Hour, LookupTimeout: 5 * time.Second, Resolver: srv.resolver, OwnResolvers: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	asked := srv.asked["slow.test."]
	srv.mu.Unlock()
	if res.Lookups != lookups || res.Errors != 0 || asked != lookups {
		t.Errorf("%d lookups (%d errors) asked the server %d times, want %d lookups, each asking once", res.Lookups, res.Errors, asked, lookups)
	}
}

// TestRunUniqueNames: a host holding the mark asks one new name per lookup,
// numbered through the run whatever goroutine asks it.
func TestRunUniqueNames(t *testing.T) {
	srv := startServer(t, 0)
	const lookups = 30
	res, err := Run(context.Background(), Config{Host: "n%d.unique.test.", Concurrency: 4, Duration: time.Minute,
		MaxLookups: lookups, Slow: time.Second, LookupTimeout: 5 * time.Second, Resolver: srv.resolver})
	if err != nil {
		t.Fatal(err)
	}
	if res.Lookups != lookups || res.Errors != 0 || res.Host != "n%d.unique.test." {
		t.Fatalf("%s", res)
	}
	want := map[string]int{}
	for i := 1; i <= lookups; i++ {
		want[fmt.Sprintf("n%d.unique.test.", i)] = 1
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if !reflect.DeepEqual(srv.asked, want) {
		t.Errorf("A questions asked %v, want each of n1..n%d once", srv.asked, lookups)
	}
}

func TestErrorKind(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&net.DNSError{Err: "no such host", Name: "a-1.test", IsNotFound: true}, "no such host"},
		{&net.DNSError{Err: "server misbehaving", Name: "a-2.test", Server: "169.254.20.10:53"}, "server misbehaving"},
		{&net.DNSError{Err: "read udp 10.244.0.28:33697->10.96.0.10:53: i/o timeout", Name: "a-3.test", IsTimeout: true}, "i/o timeout"},
		{fmt.Errorf("lookup: %w", &net.DNSError{Err: "dial udp 10.96.0.10:53: connect: connection refused"}), "connection refused"},
		{context.DeadlineExceeded, "context deadline exceeded"},
	} {
		if got := errorKind(tt.err); got != tt.want {
			t.Errorf("errorKind(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

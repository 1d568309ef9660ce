package dnsengine

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/testutil"
)

// fakeClock is an injectable clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// fakeUpstream is an in-process Upstream that answers from a small zone (see
// zoneAnswer), counts its calls per query and can be held or made to fail.
type fakeUpstream struct {
	mu      sync.Mutex
	calls   map[string]int // "name type DO" -> calls
	total   int
	fail    bool           // answer every query with an error
	rcodes  map[string]int // lower-case name -> RCODE to reply with instead of the zone's answer
	gate    chan struct{}  // when set, every Exchange waits for a receive from it (or ctx)
	called  chan string    // when set, every Exchange sends its "name type" here first
	lastReq *dns.Msg
}

func newFakeUpstream() *fakeUpstream {
	return &fakeUpstream{calls: make(map[string]int)}
}

func callKey(name string, qtype uint16, do bool) string {
	return fmt.Sprintf("%s %s %v", strings.ToLower(name), dns.TypeToString[qtype], do)
}

func (f *fakeUpstream) Exchange(ctx context.Context, req *dns.Msg) (*dns.Msg, error) {
	q := req.Question[0]
	do := req.IsEdns0() != nil && req.IsEdns0().Do()
	f.mu.Lock()
	f.calls[callKey(q.Name, q.Qtype, do)]++
	f.total++
	f.lastReq = req.Copy()
	fail, gate, called := f.fail, f.gate, f.called
	rcode, override := f.rcodes[strings.ToLower(q.Name)]
	f.mu.Unlock()
	if called != nil {
		called <- callKey(q.Name, q.Qtype, false)
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fail {
		return nil, fmt.Errorf("fake upstream: told to fail")
	}
	if override {
		resp := new(dns.Msg)
		resp.SetRcode(req, rcode)
		if rcode == dns.RcodeNameError {
			resp.Ns = []dns.RR{soa(60, 3)}
		}
		return resp, nil
	}
	return zoneAnswer(req), nil
}

func (f *fakeUpstream) Calls(name string, qtype uint16, do bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[callKey(name, qtype, do)]
}

func (f *fakeUpstream) LastRequest() *dns.Msg {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastReq
}

func (f *fakeUpstream) Total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.total
}

// Hold makes every Exchange report its query on called and wait for gate.
func (f *fakeUpstream) Hold(gate chan struct{}, called chan string) {
	f.mu.Lock()
	f.gate, f.called = gate, called
	f.mu.Unlock()
}

// SetRcode makes the upstream reply to name with rcode from now on.
func (f *fakeUpstream) SetRcode(name string, rcode int) {
	f.mu.Lock()
	if f.rcodes == nil {
		f.rcodes = map[string]int{}
	}
	f.rcodes[strings.ToLower(name)] = rcode
	f.mu.Unlock()
}

func (f *fakeUpstream) SetFail(fail bool) {
	f.mu.Lock()
	f.fail = fail
	f.mu.Unlock()
}

func soa(ttl, minimum uint32) dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: "example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns: "ns.example.", Mbox: "hostmaster.example.", Serial: 1, Refresh: 60, Retry: 60, Expire: 600, Minttl: minimum}
}

// zoneAnswer answers like a small authoritative zone "example." behind a resolver.
// Names are matched case-insensitively; the reply keeps the query's case.
func zoneAnswer(req *dns.Msg) *dns.Msg {
	q := req.Question[0]
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = true
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(4096, opt.Do())
	}
	hdr := func(t uint16, ttl uint32) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	switch name := strings.ToLower(q.Name); {
	case name == "nx.example.":
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{soa(60, 3)}
	case name == "nx-long.example.":
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{soa(600, 600)}
	case name == "cname-nodata.example.":
		resp.Answer = []dns.RR{&dns.CNAME{Hdr: hdr(dns.TypeCNAME, 25), Target: "nodata-target.example."}}
		resp.Ns = []dns.RR{soa(60, 3)}
	case name == "huge.example." && q.Qtype == dns.TypeTXT: // packs to over 64 KiB
		for range 300 {
			resp.Answer = append(resp.Answer, &dns.TXT{Hdr: hdr(dns.TypeTXT, 20), Txt: []string{strings.Repeat("h", 250)}})
		}
	case name == "cname-nx.example.":
		resp.Rcode = dns.RcodeNameError
		resp.Answer = []dns.RR{&dns.CNAME{Hdr: hdr(dns.TypeCNAME, 1), Target: "gone.example."}}
		resp.Ns = []dns.RR{soa(60, 60)}
	case name == "nx-nosoa.example.":
		resp.Rcode = dns.RcodeNameError
	case name == "servfail.example.":
		resp.Rcode = dns.RcodeServerFailure
	case name == "mismatch.example.":
		resp.Question[0].Name = "other.example."
	case name == "tc.example.":
		resp.Truncated = true
		resp.Answer = []dns.RR{&dns.A{Hdr: hdr(dns.TypeA, 20), A: net.IPv4(192, 0, 2, 8)}}
	case name == "zero.example.":
		resp.Answer = []dns.RR{&dns.A{Hdr: hdr(dns.TypeA, 0), A: net.IPv4(192, 0, 2, 9)}}
	case name == "big.example." && q.Qtype == dns.TypeTXT:
		for i := range 20 {
			resp.Answer = append(resp.Answer, &dns.TXT{Hdr: hdr(dns.TypeTXT, 20),
				Txt: []string{fmt.Sprintf("record %02d %s", i, strings.Repeat("x", 60))}})
		}
	case q.Qtype == dns.TypeA:
		resp.Answer = []dns.RR{
			&dns.CNAME{Hdr: hdr(dns.TypeCNAME, 25), Target: "target.example."},
			&dns.A{Hdr: dns.RR_Header{Name: "target.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 20},
				A: net.IPv4(192, 0, 2, 1)},
		}
	case q.Qtype == dns.TypeAAAA && name == "nodata.example.":
		resp.Ns = []dns.RR{soa(2, 100)}
	case q.Qtype == dns.TypeAAAA:
		resp.Answer = []dns.RR{&dns.AAAA{Hdr: hdr(dns.TypeAAAA, 3600), AAAA: net.ParseIP("2001:db8::1")}}
	default:
		resp.Ns = []dns.RR{soa(60, 60)}
	}
	return resp
}

type testEngine struct {
	*Engine
	up    *fakeUpstream
	clock *fakeClock
	reg   *prometheus.Registry
	udp   string
	tcp   string
}

// startEngine starts an engine on 127.0.0.1:0 in front of a fakeUpstream, with
// a fake clock; edit sets fields of the config first.
func startEngine(t testing.TB, edit func(*Config)) *testEngine {
	t.Helper()
	te := &testEngine{up: newFakeUpstream(), clock: newFakeClock(), reg: prometheus.NewRegistry()}
	cfg := Config{
		Listen:     []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Upstream:   te.up,
		UDPSockets: 2,
		StaleMax:   DefaultStaleMax,
		Registerer: te.reg,
		Namespace:  "test",
		Now:        te.clock.Now,
	}
	if edit != nil {
		edit(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := e.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	te.Engine = e
	te.udp = e.UDPAddrs()[0].String()
	te.tcp = e.TCPAddrs()[0].String()
	return te
}

// query asks the engine over net ("udp" or "tcp") and fails the test on a transport error.
func (te *testEngine) query(t testing.TB, network string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: 65535}
	addr := te.udp
	if network == "tcp" {
		addr = te.tcp
	}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("exchange %s over %s: %v", m.Question[0].String(), network, err)
	}
	return resp
}

func question(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

// waitFlight waits for the upstream request in flight for key, if any.
func (e *Engine) waitFlight(key string) {
	e.flightMu.Lock()
	f := e.flights[key]
	e.flightMu.Unlock()
	if f != nil {
		<-f.done
	}
}

// keyOf builds the cache key of a query for name/qtype, as the engine does.
func keyOf(t testing.TB, name string, qtype uint16, do bool) string {
	t.Helper()
	m := question(name, qtype)
	if do {
		m.SetEdns0(1232, true)
	}
	pkt, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	var r request
	if parseQuery(pkt, &r) != parsedFast {
		t.Fatalf("query for %s not on the fast path", name)
	}
	return string(r.key)
}

// metricValue returns the value of the engine's metric name (without the
// "test_" namespace) with the given labels, 0 when absent.
func (te *testEngine) metricValue(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	return testutil.MetricValue(t, te.reg, "test_"+name, labels)
}

// receive waits for a value from ch. The bound only turns a hang into a
// failure; it is not a timing assertion.
func receive[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
	}
	panic("unreachable")
}

package dnsengine

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestNewValidates(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"ok", Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Upstream: up}, ""},
		{"no listen", Config{Upstream: up}, "no listen address"},
		{"bad listen", Config{Listen: []netip.AddrPort{{}}, Upstream: up}, "invalid listen address"},
		{"no upstream", Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}}, "no upstream"},
		{"negative TTL", Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Upstream: up, MaxTTL: -time.Second}, "max TTL must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error = %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestServesUDPAndTCP(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil)
	if !te.Listening() {
		t.Fatal("Listening() = false after Start")
	}
	for _, network := range []string{"udp", "tcp", "udp"} {
		resp := te.query(t, network, question("www.example.", dns.TypeA))
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 2 {
			t.Fatalf("%s: reply %v", network, resp)
		}
		if a, ok := resp.Answer[1].(*dns.A); !ok || a.A.String() != "192.0.2.1" {
			t.Fatalf("%s: answer %v", network, resp.Answer)
		}
		if !resp.Response || !resp.RecursionAvailable || !resp.RecursionDesired {
			t.Fatalf("%s: flags QR=%v RA=%v RD=%v", network, resp.Response, resp.RecursionAvailable, resp.RecursionDesired)
		}
	}
	if got := te.up.Calls("www.example.", dns.TypeA, false); got != 1 {
		t.Fatalf("upstream calls = %d, want 1 (then cached for UDP and TCP alike)", got)
	}
	if hits := te.metricValue(t, "cache_hits_total", nil); hits != 2 {
		t.Fatalf("cache_hits_total = %v, want 2", hits)
	}
	if n := te.metricValue(t, "requests_total", map[string]string{"proto": "tcp", "qtype": "A", "rcode": "NOERROR"}); n != 1 {
		t.Fatalf("requests_total{tcp,A,NOERROR} = %v, want 1", n)
	}
}

// TestShutdownDrainsInflight: a miss in flight is answered, and the UDP socket
// keeps answering (it still receives its SO_REUSEPORT share) until then.
func TestShutdownDrainsInflight(t *testing.T) {
	t.Parallel()
	te := startEngine(t, func(c *Config) { c.UpstreamTimeout = time.Minute })
	te.query(t, "udp", question("www.example.", dns.TypeA)) // cached
	gate, called := make(chan struct{}), make(chan string, 1)
	te.up.Hold(gate, called)
	answered := make(chan *dns.Msg)
	go func() {
		c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
		resp, _, err := c.Exchange(question("slow.example.", dns.TypeA), te.udp)
		if err != nil {
			t.Errorf("exchange: %v", err)
		}
		answered <- resp
	}()
	receive(t, called, "upstream call") // the miss is in flight
	stopped := make(chan error)
	go func() { stopped <- te.Shutdown(context.Background()) }()
	for te.Listening() { // Shutdown has begun
		runtime.Gosched()
	}
	if resp := te.query(t, "udp", question("www.example.", dns.TypeA)); resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("cached query during shutdown: %v", resp)
	}
	if _, err := net.Dial("tcp", te.tcp); err == nil {
		t.Fatal("TCP connection accepted during shutdown")
	}
	close(gate)
	if resp := receive(t, answered, "reply"); resp == nil || resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("query in flight during shutdown: %v", resp)
	}
	if err := receive(t, stopped, "Shutdown return"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestShutdownForcedWhenContextEnds(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil)
	called := make(chan string, 1)
	te.up.Hold(make(chan struct{}), called) // never opened: the upstream hangs until its ctx ends
	go func() {
		c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
		_, _, _ = c.Exchange(question("hang.example.", dns.TypeA), te.tcp)
	}()
	receive(t, called, "upstream call")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := te.Shutdown(ctx); err == nil || !strings.Contains(err.Error(), "forced") {
		t.Fatalf("Shutdown with ended ctx = %v, want a forced-shutdown error", err)
	}
}

func TestListensOnEveryAddress(t *testing.T) {
	t.Parallel()
	probe, err := net.ListenPacket("udp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	probe.Close()
	te := startEngine(t, func(c *Config) {
		c.Listen = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("[::1]:0")}
	})
	udp, tcp := te.UDPAddrs(), te.TCPAddrs()
	if len(udp) != 2 || len(tcp) != 2 {
		t.Fatalf("UDPAddrs %v TCPAddrs %v, want two each", udp, tcp)
	}
	for i := range udp {
		for _, target := range []struct{ network, addr string }{{"udp", udp[i].String()}, {"tcp", tcp[i].String()}} {
			c := &dns.Client{Net: target.network, Timeout: 5 * time.Second}
			resp, _, err := c.Exchange(question("www.example.", dns.TypeA), target.addr)
			if err != nil || resp.Rcode != dns.RcodeSuccess {
				t.Fatalf("%s %s: %v %v", target.network, target.addr, resp, err)
			}
		}
	}
}

func TestStartReportsBindError(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0") // no SO_REUSEPORT: nobody can share it
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	e, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort(taken.Addr().String())}, Upstream: newFakeUpstream()})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err == nil || !strings.Contains(err.Error(), "listen tcp") {
		t.Fatalf("Start = %v, want a TCP bind error", err)
	}
	if e.Listening() || len(e.UDPAddrs()) != 0 {
		t.Fatalf("after a failed Start: Listening %v, UDP addresses %v", e.Listening(), e.UDPAddrs())
	}
}

// TestSecondInstanceSharesPort is the rolling update: a second engine binds the
// address of a running one (SO_REUSEPORT), and serves alone once the first stops.
func TestSecondInstanceSharesPort(t *testing.T) {
	t.Parallel()
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String() // a port that was free a moment ago
	probe.Close()
	first := startEngine(t, func(c *Config) { c.Listen = []netip.AddrPort{netip.MustParseAddrPort(addr)} })
	second := startEngine(t, func(c *Config) { c.Listen = []netip.AddrPort{netip.MustParseAddrPort(addr)} })
	if err := first.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, network := range []string{"udp", "tcp"} {
		if resp := second.query(t, network, question("www.example.", dns.TypeA)); resp.Rcode != dns.RcodeSuccess {
			t.Fatalf("%s after the first instance stopped: %v", network, resp)
		}
	}
	if got := second.up.Total(); got != 1 {
		t.Fatalf("second instance's upstream calls %d, want 1", got)
	}
}

func TestTCPConnectionHandling(t *testing.T) {
	t.Parallel()
	te := startEngine(t, func(c *Config) {
		c.TCPIdleTimeout = 50 * time.Millisecond
		c.MaxTCPConns = 1
	})
	dial := func() *dns.Conn {
		conn, err := net.Dial("tcp", te.tcp)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		return &dns.Conn{Conn: conn}
	}
	t.Run("idle connection closed", func(t *testing.T) {
		co := dial()
		if _, err := co.Read(make([]byte, 2)); err == nil {
			t.Fatal("read on an idle connection succeeded, want EOF once the idle timeout closes it")
		}
	})
	t.Run("malformed message gets FORMERR, connection stays", func(t *testing.T) {
		co := dial()
		bad := []byte{0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1} // compression loop
		if _, err := co.Write(bad); err != nil {
			t.Fatal(err)
		}
		resp, err := co.ReadMsg()
		if err != nil || resp.Id != 0xabcd || resp.Rcode != dns.RcodeFormatError {
			t.Fatalf("reply %v, %v; want FORMERR with ID 0xabcd", resp, err)
		}
		if err := co.WriteMsg(question("www.example.", dns.TypeA)); err != nil {
			t.Fatal(err)
		}
		if resp, err := co.ReadMsg(); err != nil || resp.Rcode != dns.RcodeSuccess {
			t.Fatalf("next query on the same connection: %v, %v", resp, err)
		}
		// MaxTCPConns is 1: a second connection is closed at once.
		if _, err := dial().Read(make([]byte, 2)); err == nil {
			t.Fatal("second connection served, want it closed at MaxTCPConns 1")
		}
		if got := te.metricValue(t, "tcp_refused_total", nil); got != 1 {
			t.Fatalf("tcp_refused_total = %v, want 1", got)
		}
	})
}

// TestMetricNames pins the exported metric names (the nodecache and stub
// documentation lists them under their own namespaces).
func TestMetricNames(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil)
	te.query(t, "udp", question("www.example.", dns.TypeA))
	mfs, err := te.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, name := range []string{"requests_total", "cache_hits_total", "cache_misses_total", "cache_stale_total",
		"cache_prefetch_total", "cache_entries", "coalesced_total", "malformed_total", "upstream_invalid_total",
		"miss_overflow_total", "tcp_refused_total", "miss_duration_seconds"} {
		if !got["test_"+name] {
			t.Errorf("metric test_%s missing; have %v", name, got)
		}
	}
}

// TestRestartAfterShutdown: an engine shut down serves again after Start,
// on the same addresses, with its cache and metrics (the standby's cycle).
func TestRestartAfterShutdown(t *testing.T) {
	t.Parallel()
	te := startEngine(t, func(c *Config) { c.Listen = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")} })
	te.query(t, "udp", question("www.example.", dns.TypeA))
	addr := te.udp
	for i := range 2 {
		if err := te.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown %d: %v", i, err)
		}
		if te.Listening() {
			t.Fatal("listening after Shutdown")
		}
		// The port may be bound again: restarting binds the same address.
		te.cfg.Listen = []netip.AddrPort{netip.MustParseAddrPort(addr)}
		if err := te.Start(); err != nil {
			t.Fatalf("Start %d after Shutdown: %v", i, err)
		}
		te.udp = te.UDPAddrs()[0].String()
		te.tcp = te.TCPAddrs()[0].String()
		for _, network := range []string{"udp", "tcp"} {
			if resp := te.query(t, network, question("www.example.", dns.TypeA)); resp.Rcode != dns.RcodeSuccess {
				t.Fatalf("restart %d, %s: %v", i, network, resp)
			}
		}
	}
	if got := te.up.Total(); got != 1 {
		t.Fatalf("upstream calls %d, want 1: the cache survives restarts", got)
	}
	if got := te.metricValue(t, "cache_hits_total", nil); got != 4 {
		t.Fatalf("cache_hits_total = %v, want 4 across restarts", got)
	}
	if err := te.Start(); err == nil {
		t.Fatal("Start while serving succeeded")
	}
}

// answeringUpstream is a fakeUpstream that says whether it has answered.
type answeringUpstream struct {
	*fakeUpstream
	answered atomic.Bool
}

func (a *answeringUpstream) Answered() bool { return a.answered.Load() }

// TestReady: /readyz is nil once the engine serves and an upstream that can
// tell has answered; an upstream that cannot tell is taken as ready.
func TestReady(t *testing.T) {
	t.Parallel()
	up := &answeringUpstream{fakeUpstream: newFakeUpstream()}
	e, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Upstream: up})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Ready(); err == nil {
		t.Fatal("ready before Start")
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown(context.Background())
	if err := e.Ready(); err == nil || !strings.Contains(err.Error(), "no upstream has answered") {
		t.Fatalf("serving, upstream silent: %v", err)
	}
	up.answered.Store(true)
	if err := e.Ready(); err != nil {
		t.Fatalf("serving, upstream answered: %v", err)
	}
	plain := startEngine(t, nil) // fakeUpstream cannot tell
	if err := plain.Ready(); err != nil {
		t.Fatalf("serving, upstream that cannot tell: %v", err)
	}
}

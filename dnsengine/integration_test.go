package dnsengine_test

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/dnsengine"
	"github.com/localdns/localdns/dnsengine/forward"
)

// startUpstreamServer runs a miekg/dns server on 127.0.0.1:0 (TCP), with its
// own ServeMux, that answers every A query with 192.0.2.7 (TTL 5) and counts
// the queries. It returns the address and a function that stops it.
func startUpstreamServer(t *testing.T) (addr string, queries *atomic.Int64, stop func()) {
	t.Helper()
	queries = new(atomic.Int64)
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, req *dns.Msg) {
		queries.Add(1)
		resp := new(dns.Msg)
		resp.SetReply(req)
		q := req.Question[0]
		if q.Qtype == dns.TypeA {
			resp.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
				A: net.IPv4(192, 0, 2, 7)}}
		}
		_ = w.WriteMsg(resp)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{Listener: ln, Handler: mux, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	var once sync.Once
	stop = func() { once.Do(func() { _ = srv.Shutdown() }) }
	t.Cleanup(stop)
	return ln.Addr().String(), queries, stop
}

// TestThroughForwarder runs the engine in front of the real forwarder and a
// real DNS server: a miss, hits over UDP and TCP, then serve-stale once the
// server is gone.
func TestThroughForwarder(t *testing.T) {
	t.Parallel()
	upstream, queries, stopUpstream := startUpstreamServer(t)
	fwd, err := forward.New(forward.Config{Zones: []forward.Zone{{Name: ".", Servers: []forward.Server{
		{Addr: upstream, Transport: forward.TCP, Timeout: 500 * time.Millisecond}}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fwd.Close() })
	var mu sync.Mutex
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e, err := dnsengine.New(dnsengine.Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Upstream: fwd, UDPSockets: 1,
		StaleMax: dnsengine.DefaultStaleMax, UpstreamTimeout: time.Second, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	ask := func(network string, addr net.Addr) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion("svc.Default.svc.cluster.local.", dns.TypeA)
		c := &dns.Client{Net: network, Timeout: 5 * time.Second}
		resp, _, err := c.Exchange(m, addr.String())
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if len(resp.Answer) != 1 || resp.Answer[0].Header().Name != "svc.Default.svc.cluster.local." {
			t.Fatalf("%s: reply %v", network, resp)
		}
		return resp
	}
	ask("udp", e.UDPAddrs()[0])
	ask("tcp", e.TCPAddrs()[0])
	ask("udp", e.UDPAddrs()[0])
	if got := queries.Load(); got != 1 {
		t.Fatalf("upstream server saw %d queries, want 1", got)
	}

	stopUpstream()
	mu.Lock()
	now = now.Add(6 * time.Second) // expired
	mu.Unlock()
	if got := ask("udp", e.UDPAddrs()[0]).Answer[0].Header().Ttl; got != 30 {
		t.Fatalf("TTL %d with the upstream gone, want the stale TTL 30", got)
	}
}

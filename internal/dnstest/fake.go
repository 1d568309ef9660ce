// Package dnstest provides a fake DNS server for tests: miekg/dns serving
// UDP and TCP on one loopback address, with its own ServeMux, that a test can
// stop and restart on the same address.
//
// It is imported only by tests. What the fake answers and what it records is
// the test's own business: it passes a handler, and wraps the Fake in a type
// of its own for the rest.
package dnstest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Config says what a Fake serves.
type Config struct {
	// Name names the fake in failure messages; "fake" when empty.
	Name string
	// Handler answers every query (the ServeMux pattern ".").
	Handler dns.HandlerFunc
	// TuneTCP, when set, adjusts the TCP server before each start, the
	// first and every Restart: wrap its Listener, change its limits.
	TuneTCP func(*dns.Server)
}

// Fake is a DNS server on UDP and TCP at one loopback address. Stop it to make
// that address refuse (ICMP port unreachable, RST); Restart serves there again.
type Fake struct {
	t    testing.TB
	cfg  Config
	addr netip.AddrPort

	mu      sync.Mutex
	servers []*dns.Server // nil while stopped
}

// Start serves cfg.Handler on an address from ListenBoth and returns once
// both servers run. The test's cleanup stops the fake.
func Start(t testing.TB, cfg Config) *Fake {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "fake"
	}
	pc, l := ListenBoth(t)
	f := &Fake{t: t, cfg: cfg, addr: netip.MustParseAddrPort(pc.LocalAddr().String())}
	t.Cleanup(f.Stop)
	f.serve(pc, l)
	return f
}

// Addr is the address the fake serves UDP and TCP on.
func (f *Fake) Addr() netip.AddrPort { return f.addr }

// ListenBoth listens on UDP and TCP at one address that no other socket will
// take once these are closed: a random 127/8 address and a port below the
// kernel's ephemeral range. Tests stop fakes to get ICMP port unreachable /
// RST and restart them on the same address; a port from the ephemeral range
// could meanwhile become some other program's client socket and swallow the
// packets instead.
func ListenBoth(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 100 {
		ip := netip.AddrFrom4([4]byte{127, byte(1 + rand.IntN(254)), byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
		pc, l, err := listen(netip.AddrPortFrom(ip, uint16(10000+rand.IntN(20000))))
		if err == nil {
			return pc, l
		}
	}
	t.Fatal("no free address on 127/8 for UDP and TCP")
	return nil, nil
}

func listen(addr netip.AddrPort) (net.PacketConn, net.Listener, error) {
	pc, err := net.ListenPacket("udp", addr.String())
	if err != nil {
		return nil, nil, fmt.Errorf("listen udp %s: %w", addr, err)
	}
	l, err := net.Listen("tcp", addr.String())
	if err != nil {
		pc.Close()
		return nil, nil, fmt.Errorf("listen tcp %s: %w", addr, err)
	}
	return pc, l, nil
}

// Restart serves again on the fake's address after Stop.
func (f *Fake) Restart() {
	f.t.Helper()
	pc, l, err := listen(f.addr)
	if err != nil {
		f.t.Fatalf("restart %s: %v", f.cfg.Name, err)
	}
	f.serve(pc, l)
}

// serve runs a UDP and a TCP server on pc and l, sharing one ServeMux, and
// waits until both have started.
func (f *Fake) serve(pc net.PacketConn, l net.Listener) {
	f.t.Helper()
	mux := dns.NewServeMux()
	mux.HandleFunc(".", f.cfg.Handler)
	udp := &dns.Server{PacketConn: pc, Handler: mux}
	tcp := &dns.Server{Listener: l, Handler: mux}
	if f.cfg.TuneTCP != nil {
		f.cfg.TuneTCP(tcp)
	}
	for _, s := range []*dns.Server{udp, tcp} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		failed := make(chan error, 1)
		go func() { failed <- s.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-failed:
			f.t.Fatalf("%s on %s: %v", f.cfg.Name, f.addr, err)
		}
	}
	f.mu.Lock()
	f.servers = []*dns.Server{udp, tcp}
	f.mu.Unlock()
}

// Stop shuts the fake down; its address then refuses. Idempotent.
func (f *Fake) Stop() {
	f.mu.Lock()
	servers := f.servers
	f.servers = nil
	f.mu.Unlock()
	for _, s := range servers {
		if err := s.Shutdown(); err != nil {
			f.t.Errorf("stop %s on %s: %v", f.cfg.Name, f.addr, err)
		}
	}
}

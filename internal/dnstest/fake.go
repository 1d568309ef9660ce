// Package dnstest provides a fake DNS server for tests: miekg/dns serving
// UDP and TCP on one loopback address, with its own ServeMux, that a test can
// stop (at once, or after a lameduck as CoreDNS does) and restart on the same
// address.
//
// It is imported only by tests. What the fake answers is the test's own
// business: it passes a handler — its own, or the fake kube-dns of
// internal/kubednsfake (cluster zone at once, external zones after a latency,
// silent and big zones) — and wraps the handler in InFlight to see how many
// queries the server handles at once. Like CoreDNS, the fake handles one TCP
// connection's queries one at a time: a slow answer holds up the queries
// behind it on that connection, as Pipeline shows. internal/corednstest runs
// the real CoreDNS where a test can use it.
package dnstest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/kubednsfake"
	"github.com/miekg/dns"
)

// Config says what a Fake serves.
type Config struct {
	// Name names the fake in failure messages; "fake" when empty.
	Name string
	// Handler answers every query (the ServeMux pattern ".").
	Handler dns.HandlerFunc
	// TuneTCP, when set, adjusts the TCP server before each start, the
	// first and every Restart: wrap its Listener, change its limits. It
	// starts with CoreDNS's settings (no limit on queries per connection,
	// 10 s idle timeout).
	TuneTCP func(*dns.Server)
	// Lameduck is how long the fake keeps serving after Stop, as CoreDNS
	// does on SIGTERM with `health { lameduck }`; 0 stops at once.
	Lameduck time.Duration
	// IPv6 serves on ::1 (ListenBothIPv6) instead of a 127/8 address.
	IPv6 bool
}

// Fake is a DNS server on UDP and TCP at one loopback address. Stop it to make
// that address refuse (ICMP port unreachable, RST); Restart serves there again.
type Fake struct {
	t    testing.TB
	cfg  Config
	addr netip.AddrPort

	mu       sync.Mutex
	serving  *kubednsfake.Server // nil once stopping
	draining *kubednsfake.Server // in its lameduck
	lameduck *time.Timer         // ends draining
	stopped  chan struct{}       // closed once this start's server has stopped
}

// Start serves cfg.Handler on an address from ListenBoth and returns once
// both servers run. The test's cleanup stops the fake at once.
func Start(t testing.TB, cfg Config) *Fake {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "fake"
	}
	listenBoth := ListenBoth
	if cfg.IPv6 {
		listenBoth = ListenBothIPv6
	}
	pc, l := listenBoth(t)
	f := &Fake{t: t, cfg: cfg, addr: netip.MustParseAddrPort(pc.LocalAddr().String())}
	t.Cleanup(f.stopNow)
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
	return listenFree(t, "127/8", func() netip.Addr {
		return netip.AddrFrom4([4]byte{127, byte(1 + rand.IntN(254)), byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
	})
}

// ListenBothIPv6 is ListenBoth on ::1, the one IPv6 loopback address: only
// the port varies.
func ListenBothIPv6(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	return listenFree(t, "::1", netip.IPv6Loopback)
}

// listenFree tries addresses from ip with ports below the ephemeral range.
func listenFree(t testing.TB, where string, ip func() netip.Addr) (net.PacketConn, net.Listener) {
	t.Helper()
	var err error
	for range 100 {
		var pc net.PacketConn
		var l net.Listener
		if pc, l, err = listen(netip.AddrPortFrom(ip(), uint16(10000+rand.IntN(20000)))); err == nil {
			return pc, l
		}
	}
	t.Fatalf("no free address on %s for UDP and TCP: %v", where, err)
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

// Restart serves again on the fake's address after Stop, once a lameduck in
// progress has ended.
func (f *Fake) Restart() {
	f.t.Helper()
	<-f.Stopped()
	pc, l, err := listen(f.addr)
	if err != nil {
		f.t.Fatalf("restart %s: %v", f.cfg.Name, err)
	}
	f.serve(pc, l)
}

// serve runs the handler on pc and l and waits until it serves.
func (f *Fake) serve(pc net.PacketConn, l net.Listener) {
	f.t.Helper()
	s, err := kubednsfake.Serve(pc, l, f.cfg.Handler, f.cfg.TuneTCP)
	if err != nil {
		f.t.Fatalf("%s: %v", f.cfg.Name, err)
	}
	f.mu.Lock()
	f.serving, f.stopped = s, make(chan struct{})
	f.mu.Unlock()
}

// Stop shuts the fake down; its address then refuses. Without a Lameduck it
// returns once that is so. With one it returns at once and the fake serves
// for Lameduck more, then stops: Stopped tells when. Idempotent.
func (f *Fake) Stop() {
	f.mu.Lock()
	s, stopped := f.serving, f.stopped
	f.serving = nil
	lameduck := s != nil && f.cfg.Lameduck > 0
	if lameduck {
		f.draining = s
		f.lameduck = time.AfterFunc(f.cfg.Lameduck, func() { f.endLameduck(s, stopped) })
	}
	f.mu.Unlock()
	if s != nil && !lameduck {
		f.shutdown(s, stopped)
	}
}

// Stopped is closed once the fake has stopped: after Stop, and its lameduck.
func (f *Fake) Stopped() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stopped
}

func (f *Fake) endLameduck(s *kubednsfake.Server, stopped chan struct{}) {
	f.mu.Lock()
	mine := f.draining == s
	if mine {
		f.draining = nil
	}
	f.mu.Unlock()
	if mine {
		f.shutdown(s, stopped)
	}
}

// stopNow stops the fake without waiting out a lameduck (the test's cleanup).
func (f *Fake) stopNow() {
	f.mu.Lock()
	s, stopped := f.serving, f.stopped
	if f.draining != nil {
		s = f.draining
		f.lameduck.Stop()
	}
	f.serving, f.draining = nil, nil
	f.mu.Unlock()
	if s != nil {
		f.shutdown(s, stopped)
	}
	<-stopped
}

func (f *Fake) shutdown(s *kubednsfake.Server, stopped chan struct{}) {
	if err := s.Shutdown(); err != nil {
		f.t.Errorf("stop %s on %s: %v", f.cfg.Name, f.addr, err)
	}
	close(stopped)
}

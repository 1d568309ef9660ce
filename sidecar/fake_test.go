package sidecar

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// behaviour is how a fake upstream treats queries.
type behaviour int32

const (
	answer      behaviour = iota // an A record carrying the fake's own IP
	truncateUDP                  // TC=1 and no answer over UDP; answer over TCP
	silentUDP                    // drop UDP; answer over TCP
	servfail                     // SERVFAIL over both
	blackHole                    // read everything, answer nothing
)

// query is one query a fake received.
type query struct {
	transport string // "udp" or "tcp"
	name      string
}

// fakeUpstream stands in for the node cache or kube-dns: UDP and TCP on one
// address, its own ServeMux, recording every query. It answers A queries
// with its own answerIP, so a reply tells which upstream it came from.
type fakeUpstream struct {
	t        testing.TB
	name     string
	addr     netip.AddrPort
	answerIP net.IP
	mode     atomic.Int32
	udpSeen  atomic.Int64 // UDP queries, probes included

	mu      sync.Mutex
	queries []query // probes (the probe name) left out
	servers []*dns.Server
}

// startFake listens on a random 127/8 address and a port below the kernel's
// ephemeral range: once the fake stops, that port stays closed (ICMP port
// unreachable, RST), and a restart gets it back, as a restarted node cache would.
func startFake(t testing.TB, name string, answerIP string) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{t: t, name: name, answerIP: net.ParseIP(answerIP)}
	for range 100 {
		ip := netip.AddrFrom4([4]byte{127, byte(1 + rand.IntN(254)), byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
		f.addr = netip.AddrPortFrom(ip, uint16(10000+rand.IntN(20000)))
		if f.listen() == nil {
			t.Cleanup(f.stop)
			return f
		}
	}
	t.Fatalf("%s: no free address on 127/8", name)
	return nil
}

// listen binds UDP and TCP on f.addr and serves until stop.
func (f *fakeUpstream) listen() error {
	pc, err := net.ListenPacket("udp", f.addr.String())
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", f.addr.String())
	if err != nil {
		pc.Close()
		return err
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", f.handle)
	servers := []*dns.Server{{PacketConn: pc, Handler: mux}, {Listener: l, Handler: mux}}
	for _, s := range servers {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		failed := make(chan error, 1)
		go func() { failed <- s.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-failed:
			f.t.Fatalf("%s on %s: %v", f.name, f.addr, err)
		}
	}
	f.mu.Lock()
	f.servers = servers
	f.mu.Unlock()
	return nil
}

// stop closes the fake's sockets; its address then refuses. Idempotent.
func (f *fakeUpstream) stop() {
	f.mu.Lock()
	servers := f.servers
	f.servers = nil
	f.mu.Unlock()
	for _, s := range servers {
		if err := s.Shutdown(); err != nil {
			f.t.Errorf("stop %s: %v", f.name, err)
		}
	}
}

// restart serves again on the same address after stop.
func (f *fakeUpstream) restart() {
	f.t.Helper()
	if err := f.listen(); err != nil {
		f.t.Fatalf("restart %s on %s: %v", f.name, f.addr, err)
	}
}

func (f *fakeUpstream) setMode(b behaviour) { f.mode.Store(int32(b)) }

func (f *fakeUpstream) handle(w dns.ResponseWriter, r *dns.Msg) {
	transport := w.LocalAddr().Network()
	if transport == "udp" {
		f.udpSeen.Add(1)
	}
	q := r.Question[0]
	if q.Name != probeTestDomain {
		f.mu.Lock()
		f.queries = append(f.queries, query{transport: transport, name: q.Name})
		f.mu.Unlock()
	}
	m := new(dns.Msg)
	m.SetReply(r)
	switch behaviour(f.mode.Load()) {
	case blackHole:
		return
	case silentUDP:
		if transport == "udp" {
			return
		}
	case truncateUDP:
		if transport == "udp" {
			m.Truncated = true
			_ = w.WriteMsg(m)
			return
		}
	case servfail:
		m.Rcode = dns.RcodeServerFailure
		_ = w.WriteMsg(m)
		return
	}
	if q.Qtype == dns.TypeA {
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
			A:   f.answerIP,
		})
	}
	_ = w.WriteMsg(m)
}

// transports returns the transport of each query (probes left out), in order.
func (f *fakeUpstream) transports() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, q := range f.queries {
		out = append(out, q.transport)
	}
	return out
}

// asked reports whether a query for name reached the fake.
func (f *fakeUpstream) asked(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, q := range f.queries {
		if q.name == name {
			return true
		}
	}
	return false
}

// startKubeDNS starts the fake ClusterIP and fails the test at cleanup if a
// single UDP packet ever reached it: the stub talks to it over TCP only.
func startKubeDNS(t *testing.T) *fakeUpstream {
	t.Helper()
	f := startFake(t, "kube-dns", kubeDNSAnswer)
	t.Cleanup(func() {
		if n := f.udpSeen.Load(); n != 0 {
			t.Errorf("kube-dns (the ClusterIP) received %d UDP queries; the stub must use TCP only", n)
		}
	})
	return f
}

// The A record each fake answers with, to tell who answered.
const (
	nodeCacheAnswer = "192.0.2.1"
	kubeDNSAnswer   = "192.0.2.2"
)

package sidecar

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/localdns/localdns/internal/dnstest"
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
	slowNames                    // hold names starting "slow-" until release is closed; answer the rest
)

// query is one query a fake received.
type query struct {
	transport string // "udp" or "tcp"
	name      string
}

// fakeUpstream stands in for the node cache or kube-dns (see dnstest.Fake),
// recording every query. It answers A queries with its own answerIP, so a
// reply tells which upstream it came from.
type fakeUpstream struct {
	*dnstest.Fake
	answerIP net.IP
	mode     atomic.Int32
	udpSeen  atomic.Int64  // UDP queries, probes included
	release  chan struct{} // ends slowNames' hold

	mu      sync.Mutex
	queries []query // probes (the probe name) left out
}

// family is the IP family a fake serves on: a 127/8 address or ::1.
type family string

const (
	ipv4 family = "ipv4"
	ipv6 family = "ipv6"
)

// startFake starts a fake on an address that stays closed while it is stopped
// and that Restart gets back, as a restarted node cache would.
func startFake(t testing.TB, fam family, name string, answerIP string) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{answerIP: net.ParseIP(answerIP), release: make(chan struct{})}
	f.Fake = dnstest.Start(t, dnstest.Config{Name: name, Handler: f.handle, IPv6: fam == ipv6})
	return f
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
	case slowNames:
		if strings.HasPrefix(q.Name, "slow-") {
			<-f.release
		}
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
func startKubeDNS(t *testing.T, fam family) *fakeUpstream {
	t.Helper()
	f := startFake(t, fam, "kube-dns", kubeDNSAnswer)
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

package dnsengine

import (
	"net"
	"net/netip"
	"sync"

	"github.com/miekg/dns"
)

// perClient counts what each client address holds (misses in flight, TCP
// connections) against a limit of its own, so that one pod cannot take what
// the engine-wide limits leave for every other pod. Only misses and
// connections pass here, never cache hits.
type perClient struct {
	limit  int32
	mu     sync.Mutex
	counts map[netip.Addr]int32
}

func newPerClient(limit int) *perClient {
	return &perClient{limit: int32(limit), counts: make(map[netip.Addr]int32)}
}

// acquire takes one place for client; false when it holds its limit.
func (p *perClient) acquire(client netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.counts[client]
	if n >= p.limit {
		return false
	}
	p.counts[client] = n + 1
	return true
}

// release gives one place back.
func (p *perClient) release(client netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.counts[client] - 1; n > 0 {
		p.counts[client] = n
	} else {
		delete(p.counts, client)
	}
}

// clientAddr is the IP a datagram or connection came from (IPv4-mapped
// addresses unmapped, so one client counts once whatever its socket family).
func clientAddr(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// admitMiss takes a place for one miss of client among MaxInflightMisses and
// among the client's own MaxInflightMissesPerClient; false (counted) when
// either is full. answerMiss gives both back.
func (e *Engine) admitMiss(client netip.Addr, c *counters) bool {
	if e.inflightMisses.Add(1) > int64(e.cfg.MaxInflightMisses) {
		e.missDone()
		c.overflow.Add(1)
		return false
	}
	if !e.missesPerClient.acquire(client) {
		e.missDone()
		c.clientLimited[limitInflightMisses].Add(1)
		return false
	}
	return true
}

// refuseMiss builds in dst the SERVFAIL answering a miss not admitted; the
// client's resolver moves on to its next nameserver.
func refuseMiss(dst []byte, r *request, p proto, c *counters) []byte {
	reply := writeQuestionReply(dst, r, dns.RcodeServerFailure, false)
	c.countReply(p, r.qtype, reply)
	return reply
}

package dnsengine

import (
	"encoding/binary"
	"time"

	"github.com/miekg/dns"
)

// outcome says what the caller of serve does with a packet.
type outcome int

const (
	replyNow outcome = iota // send the returned reply
	noReply                 // drop the packet
	// needsUpstream is a cache miss: admit it (admitMiss), detach the request
	// and call answerMiss off the read loop, which releases the admission.
	needsUpstream
)

// serve runs one packet through the request path: parse, look up, and write the
// reply into dst (reusing its capacity). Cache hits never allocate. now is the
// clock in unix nanoseconds, read once per batch by the caller.
func (e *Engine) serve(pkt, dst []byte, r *request, p proto, c *counters, now int64) ([]byte, outcome) {
	switch parseQuery(pkt, r) {
	case parseDrop:
		c.malformed.Add(1)
		return nil, noReply
	case parseSlow:
		if reply, answerable := e.parseSlow(pkt, dst, r, c); !answerable {
			c.countReply(p, r.qtype, reply)
			return reply, replyNow
		}
	}
	en := e.cache.get(r.key)
	var reply []byte
	switch {
	case en != nil && now < en.expires:
		c.hits.Add(1)
		if en.hit(now, e.prefetchHits) {
			e.prefetch(r, en, c)
		}
		reply = writeAnswer(dst, &en.answer, r, en.remaining(now), r.limit(p))
	case en != nil && en.staleNow(now, int64(e.cfg.StaleMax)):
		c.stale.Add(1)
		reply = writeAnswer(dst, &en.answer, r, staleTTL, r.limit(p))
	default:
		c.misses.Add(1)
		return nil, needsUpstream
	}
	c.countReply(p, r.qtype, reply)
	return reply, replyNow
}

// limit is the largest reply r may get over protocol p.
func (r *request) limit(p proto) int {
	if p == protoTCP {
		return maxTCPReply
	}
	return r.udpSize
}

// parseSlow parses a packet the hand-written parser declined, with miekg/dns.
// For a query the cache can answer it fills r and returns answerable; otherwise
// it returns the error reply to send.
func (e *Engine) parseSlow(pkt, dst []byte, r *request, c *counters) (reply []byte, answerable bool) {
	r.qtype = 0 // counted as "other" unless a question is found
	var m dns.Msg
	if err := m.Unpack(pkt); err != nil {
		c.malformed.Add(1)
		return writeFormErr(dst, pkt), false
	}
	opt := m.IsEdns0()
	rcode := dns.RcodeSuccess
	switch {
	case m.Opcode != dns.OpcodeQuery:
		rcode = dns.RcodeNotImplemented
	case len(m.Question) != 1, countOPT(m.Extra) > 1: // RFC 6891 6.1.1: more than one OPT is FORMERR
		c.malformed.Add(1)
		rcode = dns.RcodeFormatError
	case opt != nil && opt.Version() != 0:
		rcode = dns.RcodeBadVers
	case unsupportedType(m.Question[0].Qtype):
		rcode = dns.RcodeRefused
	}
	if len(m.Question) > 0 {
		r.qtype = m.Question[0].Qtype
	}
	if rcode != dns.RcodeSuccess {
		resp := new(dns.Msg)
		resp.SetRcode(&m, rcode)
		// Recursion is what a standard query may ask for; a reply to another
		// opcode claims nothing about it.
		resp.RecursionAvailable = m.Opcode == dns.OpcodeQuery
		if opt != nil {
			resp.SetEdns0(ednsPayload, opt.Do())
		}
		out, err := resp.PackBuffer(dst[:cap(dst)]) // miekg sizes by len, not cap
		if err != nil {
			c.malformed.Add(1)
			return writeFormErr(dst, pkt), false
		}
		return out, false
	}
	q := m.Question[0]
	n, err := dns.PackDomainName(q.Name, r.nameBuf[:], 0, nil, false)
	if err != nil {
		c.malformed.Add(1)
		return writeFormErr(dst, pkt), false
	}
	r.id = m.Id
	r.flags = binary.BigEndian.Uint16(pkt[2:])
	r.qname = r.nameBuf[:n]
	r.qtype, r.qclass = q.Qtype, q.Qclass
	r.edns, r.do, r.udpSize = false, false, minUDPReply
	if opt != nil {
		r.setEDNS(opt.UDPSize(), opt.Do())
	}
	r.buildKey()
	return nil, true
}

// countOPT counts the OPT records among rrs.
func countOPT(rrs []dns.RR) int {
	n := 0
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			n++
		}
	}
	return n
}

// detach copies r so that it outlives the packet buffer it was parsed from.
func (r *request) detach() *request {
	d := new(request)
	*d = *r
	d.qname = append(d.nameBuf[:0], r.qname...)
	d.key = d.keyBuf[:len(r.key)]
	return d
}

// answerMiss resolves a detached request through the upstream (coalesced) and
// returns the reply. It blocks for up to the upstream timeout, or up to
// StaleAnswerTimeout when an expired entry could be served stale.
func (e *Engine) answerMiss(r *request, p proto, c *counters) []byte {
	defer e.missDone()
	defer e.missesPerClient.release(r.client)
	start := time.Now()
	var res resolution
	if stale := e.staleCandidate(r.key, e.nowNanos()); stale != nil {
		done := make(chan resolution, 1)
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			done <- e.resolve(r, c)
		}()
		timer := time.NewTimer(e.cfg.StaleAnswerTimeout)
		select {
		case res = <-done:
		case <-timer.C:
			res = resolution{en: stale, stale: true}
		}
		timer.Stop()
	} else {
		res = e.resolve(r, c)
	}
	now := e.nowNanos()
	var reply []byte
	switch {
	case res.en != nil && res.stale:
		c.stale.Add(1)
		reply = writeAnswer(nil, &res.en.answer, r, staleTTL, r.limit(p))
	case res.en != nil:
		reply = writeAnswer(nil, &res.en.answer, r, res.en.remaining(now), r.limit(p))
	case res.ans != nil:
		reply = writeAnswer(nil, res.ans, r, 0, r.limit(p))
	default:
		reply = writeQuestionReply(nil, r, dns.RcodeServerFailure, false)
	}
	c.countReply(p, r.qtype, reply)
	e.metrics.duration.Observe(time.Since(start).Seconds())
	return reply
}

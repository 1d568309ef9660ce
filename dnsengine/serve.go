package dnsengine

import (
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
	case dropPacket:
		c.malformed.Add(1)
		return nil, noReply
	case needsFullParse:
		if reply, answerable := e.parseFull(pkt, dst, r, c); !answerable {
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
		r.expired = e.servableStale(en, now)
		return nil, needsUpstream
	}
	c.countReply(p, r.qtype, reply)
	return reply, replyNow
}

// answerMiss resolves a detached request through the upstream (coalesced) and
// returns the reply. It blocks for up to the upstream timeout, or up to
// StaleAnswerTimeout when an expired entry could be served stale.
func (e *Engine) answerMiss(r *request, p proto, c *counters) []byte {
	defer e.missDone()
	defer e.missesPerClient.release(r.client)
	start := time.Now()
	res := e.resolveOrStale(r, c)
	now := e.nowNanos()
	var reply []byte
	switch {
	case res.unreachable && r.expired != nil:
		reply = e.answerStale(r, r.expired, p, c, now)
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

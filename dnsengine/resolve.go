package dnsengine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/dnsengine/match"
)

// flight is one upstream resolution that identical misses wait for.
type flight struct {
	done chan struct{}
	res  resolution
}

// resolution is what a miss resolved to. With neither en nor ans set the
// answer is SERVFAIL, or a stale one when unreachable.
type resolution struct {
	en          *entry  // a cached entry: TTLs are patched from its expiry
	ans         *answer // an answer not to cache, TTLs as received
	unreachable bool    // the upstream could not be reached (not: it answered an error)
}

// resolve answers r's key through the upstream, sharing one request among all
// identical misses in flight (singleflight keyed by the cache key).
func (e *Engine) resolve(r *request, c *counters) resolution {
	key := string(r.key)
	e.flightMu.Lock()
	if f, ok := e.flights[key]; ok {
		if e.testHookCoalesced != nil {
			e.testHookCoalesced()
		}
		e.flightMu.Unlock()
		c.coalesced.Add(1)
		<-f.done
		return f.res
	}
	f := &flight{done: make(chan struct{})}
	e.flights[key] = f
	e.flightMu.Unlock()

	f.res = e.fetch(r, c)

	e.flightMu.Lock()
	delete(e.flights, key)
	e.flightMu.Unlock()
	close(f.done)
	return f.res
}

// prefetch refreshes en in the background; en.refreshing is already set.
func (e *Engine) prefetch(r *request, en *entry, c *counters) {
	c.prefetch.Add(1)
	d := r.detach()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.resolve(d, c)
		en.refreshing.Store(false) // a failed refresh may be retried by a later hit
	}()
}

// fetch asks the upstream, validates and caches the reply. Whatever a
// reachable upstream answers (NXDOMAIN, SERVFAIL, REFUSED, a TTL 0 answer)
// replaces the cached entry and reaches the client; only an upstream that
// cannot be reached (timeouts, refused or reset connections, every server
// marked down) leaves the caller to fall back to a stale entry (RFC 8767).
func (e *Engine) fetch(r *request, c *counters) resolution {
	name, _, err := dns.UnpackDomainName(r.key, 0) // the lowercase name: one upstream request for every case
	if err != nil {
		return resolution{} // cannot happen: the name was parsed before
	}
	q := new(dns.Msg)
	q.Id = dns.Id()
	q.RecursionDesired = true
	q.CheckingDisabled = r.checkingDisabled()
	q.Question = []dns.Question{{Name: name, Qtype: r.qtype, Qclass: r.qclass}}
	q.SetEdns0(ednsPayload, r.do)

	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.UpstreamTimeout)
	resp, err := e.cfg.Upstream.Exchange(ctx, q)
	cancel()
	now := e.nowNanos()
	if err == nil && resp == nil {
		err = errors.New("no reply")
	}
	if err != nil {
		e.log.Debug("upstream failed", "name", name, "qtype", dns.TypeToString[r.qtype], "err", err)
		return resolution{unreachable: true}
	}
	if err := match.Reply(q, resp); err != nil {
		c.invalid.Add(1)
		e.log.Debug("upstream reply rejected", "name", name, "qtype", dns.TypeToString[r.qtype], "err", err)
		return resolution{}
	}
	a, ttl, err := e.prepare(resp, name)
	if err != nil {
		c.invalid.Add(1)
		e.log.Debug("upstream reply unusable", "name", name, "qtype", dns.TypeToString[r.qtype], "err", err)
		return resolution{}
	}
	if ttl > 0 && len(a.wire) > e.cfg.MaxCachedAnswer {
		c.tooLarge.Add(1)
		ttl = 0
	}
	if ttl == 0 {
		e.cache.remove(r.key) // never served stale over what the upstream said since
		return resolution{ans: &a}
	}
	en := newEntry(a, ttl, now)
	e.cache.put(r.key, en, now)
	return resolution{en: en}
}

// prepare turns a validated upstream reply into an answer (see answer) and the
// TTL to cache it for, 0 when it must not be cached.
func (e *Engine) prepare(resp *dns.Msg, name string) (answer, uint32, error) {
	if resp.Rcode > maskRcode {
		return answer{}, 0, fmt.Errorf("extended rcode %d", resp.Rcode)
	}
	resp.Id = 0
	resp.Opcode = dns.OpcodeQuery
	resp.Authoritative = false
	resp.RecursionAvailable = true
	resp.Compress = true
	resp.Question[0].Name = name
	extra := resp.Extra[:0]
	for _, rr := range resp.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	resp.Extra = extra
	// Owner names equal to the question's become compression pointers to it, so
	// that patching the question's case patches theirs too.
	for _, section := range [][]dns.RR{resp.Answer, resp.Ns, resp.Extra} {
		for _, rr := range section {
			if h := rr.Header(); strings.EqualFold(h.Name, name) {
				h.Name = name
			}
		}
	}
	wire, err := resp.Pack()
	if err != nil {
		return answer{}, 0, fmt.Errorf("pack: %w", err)
	}
	wire = bytes.Clone(wire) // Pack sizes its buffer for the uncompressed message; keep only what is used
	ttl := e.cacheTTL(resp)
	a := answer{wire: wire}
	if len(wire) > e.cfg.MaxCachedAnswer {
		return a, ttl, nil // served as received, never cached: TTL offsets would not fit uint16 past 64 KiB
	}
	if ttl > 0 {
		if a.ttlOffs, err = ttlOffsets(wire); err != nil {
			return answer{}, 0, fmt.Errorf("walk packed reply: %w", err)
		}
	}
	return a, ttl, nil
}

// cacheTTL is how long resp may be cached, in seconds; 0 = not at all.
// Positive answers: the smallest TTL, at most MaxTTL. NXDOMAIN and NODATA,
// also at the end of a CNAME chain (RFC 2308): min(SOA TTL, SOA MINIMUM), at
// most MaxNegativeTTL; without an SOA they are not cached. Truncated replies
// and other rcodes are not cached.
func (e *Engine) cacheTTL(resp *dns.Msg) uint32 {
	if resp.Truncated {
		return 0
	}
	switch {
	case resp.Rcode == dns.RcodeSuccess && answersQuestion(resp):
		return min(durationSeconds(e.cfg.MaxTTL), minTTL(resp.Answer, resp.Ns, resp.Extra))
	case resp.Rcode == dns.RcodeNameError || resp.Rcode == dns.RcodeSuccess:
		for _, rr := range resp.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				// A CNAME chain before the NXDOMAIN expires with its own TTL.
				return min(soa.Hdr.Ttl, soa.Minttl, durationSeconds(e.cfg.MaxNegativeTTL), minTTL(resp.Answer))
			}
		}
	}
	return 0
}

// answersQuestion reports whether resp's answer section holds records of
// the type asked (a CNAME chain alone is no answer to an A query).
func answersQuestion(resp *dns.Msg) bool {
	qtype := resp.Question[0].Qtype
	for _, rr := range resp.Answer {
		if t := rr.Header().Rrtype; t == qtype || qtype == dns.TypeANY {
			return true
		}
	}
	return false
}

// minTTL is the smallest TTL of the records in sections (MaxUint32 if none).
func minTTL(sections ...[]dns.RR) uint32 {
	ttl := uint32(math.MaxUint32)
	for _, section := range sections {
		for _, rr := range section {
			ttl = min(ttl, rr.Header().Ttl)
		}
	}
	return ttl
}

// durationSeconds rounds d up to whole seconds.
func durationSeconds(d time.Duration) uint32 {
	return uint32((d + time.Second - 1) / time.Second)
}

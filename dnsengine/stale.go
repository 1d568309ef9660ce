package dnsengine

import (
	"time"
)

// Serving stale (RFC 8767): an expired answer may be served while the
// upstream cannot be reached (timeouts, refused or reset connections, every
// server marked down), never over what a reachable upstream answered.
const (
	// staleTTL is the TTL of answers served stale, RFC 8767 section 4's recommendation.
	staleTTL = 30
	// staleRefreshTime is how long after a failed refresh an expired entry is
	// answered stale at once, without asking the upstream again (RFC 8767 section 5).
	staleRefreshTime = 30 * time.Second
)

// staleNow reports whether en may be answered stale at now without asking
// the upstream: expired, within staleMax, and its last refresh failed less than
// staleRefreshTime ago.
func (en *entry) staleNow(now, staleMax int64) bool {
	return now >= en.expires && now < en.expires+staleMax && now < en.refreshFailed.Load()+int64(staleRefreshTime)
}

// servableStale returns en if it has expired less than StaleMax ago: the
// answer a miss may fall back to. en is serve's own lookup; nil stays nil.
func (e *Engine) servableStale(en *entry, now int64) *entry {
	if en == nil || now < en.expires || now >= en.expires+int64(e.cfg.StaleMax) {
		return nil
	}
	return en
}

// resolveOrStale resolves r; when r has an expired entry to fall back to, it
// waits at most StaleAnswerTimeout and then reports the upstream unreachable
// (the resolution goes on and refreshes the cache), so that a client with
// resolv.conf "timeout:1" gets the stale answer before it gives up.
func (e *Engine) resolveOrStale(r *request, c *counters) resolution {
	if r.expired == nil {
		return e.resolve(r, c)
	}
	done := make(chan resolution, 1)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		done <- e.resolve(r, c)
	}()
	timer := time.NewTimer(e.cfg.StaleAnswerTimeout)
	defer timer.Stop()
	select {
	case res := <-done:
		return res
	case <-timer.C:
		return resolution{unreachable: true}
	}
}

// answerStale writes en as a stale answer to r, and marks en so that the
// next queries get it at once for staleRefreshTime instead of waiting on an
// upstream that just failed.
func (e *Engine) answerStale(r *request, en *entry, p proto, c *counters, now int64) []byte {
	c.stale.Add(1)
	if now >= en.expires {
		en.refreshFailed.Store(now)
	}
	return writeAnswer(nil, &en.answer, r, staleTTL, r.limit(p))
}

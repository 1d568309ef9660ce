package forward

import (
	"sync/atomic"
	"time"
)

// health is one upstream's reachability bookkeeping (see "Slow or dead" in
// the package documentation). The query path only does atomic operations.
type health struct {
	maxFails  int32
	fails     atomic.Int32 // dead signals counted in a row
	down      atomic.Bool
	probing   atomic.Bool  // a probe goroutine owns this upstream
	lastReply atomic.Int64 // monotime of the latest reply, any RCODE, 0 = none
}

func (h *health) isDown() bool { return h.down.Load() }

// answeredSince reports whether the server replied to anything after start.
func (h *health) answeredSince(start int64) bool { return h.lastReply.Load() > start }

// failure counts a dead signal from an attempt that began at start, unless
// the server has answered since then. It reports whether the signal counted
// and whether it marked the server down.
func (h *health) failure(start int64) (counted, markedDown bool) {
	if h.answeredSince(start) {
		return false, false
	}
	return true, h.fails.Add(1) >= h.maxFails && h.down.CompareAndSwap(false, true)
}

// success records a reply, resets the count and reports whether it marked
// the server up.
func (h *health) success() (markedUp bool) {
	h.lastReply.Store(monotime())
	if h.fails.Load() != 0 {
		h.fails.Store(0)
	}
	return h.down.Load() && h.down.CompareAndSwap(true, false)
}

// strike records a dead signal (why) from an attempt that began at start; a
// server it counts against is probed, and one it marks down is logged and
// exported.
func (f *Forwarder) strike(u *upstream, why string, start int64) {
	if f.countDead(u, why, start) {
		f.probeSoon(u)
	}
}

// countDead counts a dead signal against u (see health.failure), logs and
// exports u going down, and reports whether the signal counted.
func (f *Forwarder) countDead(u *upstream, why string, start int64) bool {
	counted, markedDown := u.health.failure(start)
	if markedDown {
		u.metrics.healthy.Set(0)
		f.log.Warn("upstream marked down", "server", u.addr, "dead_signals", u.health.fails.Load(), "last_reason", why)
	}
	return counted
}

// suspect probes u when an attempt that began at start has had no reply
// while u answered nothing else either: u may have stopped answering.
func (f *Forwarder) suspect(u *upstream, start int64) {
	if !u.health.answeredSince(start) {
		f.probeSoon(u)
	}
}

// succeeded records a reply from u.
func (f *Forwarder) succeeded(u *upstream) {
	if u.health.success() {
		u.metrics.healthy.Set(1)
		f.log.Info("upstream marked up", "server", u.addr)
	}
}

// probeSoon starts u's prober unless one runs.
func (f *Forwarder) probeSoon(u *upstream) {
	if u.health.probing.CompareAndSwap(false, true) {
		if !f.startProbing(func() { f.probeUntilSettled(u) }) {
			u.health.probing.Store(false)
		}
	}
}

// startProbing runs loop in a goroutine that Close waits for, unless the
// forwarder is already closed; it reports whether it did.
func (f *Forwarder) startProbing(loop func()) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed.Load() {
		return false
	}
	f.probes.Add(1)
	go func() {
		defer f.probes.Done()
		loop()
	}()
	return true
}

// probeRetryPause spaces the probes of a suspect server not yet marked down,
// so that a server refusing at once is not probed in a busy loop.
const probeRetryPause = 20 * time.Millisecond

// probeUntilSettled probes u until a probe is answered (u is up), or a probe
// fails while u answers other queries (it is alive, only slow on some names).
// Failed probes count as dead signals; while u is down they repeat every
// ProbeInterval, before that after probeRetryPause. The goroutine owns
// u.health.probing and gives it up when it returns.
func (f *Forwarder) probeUntilSettled(u *upstream) {
	defer u.health.probing.Store(false)
	for f.ctx.Err() == nil {
		start := monotime()
		if f.probe(u) == nil {
			return
		}
		if u.health.answeredSince(start) {
			return
		}
		pause := probeRetryPause
		if u.health.isDown() {
			pause = f.cfg.ProbeInterval
		}
		select {
		case <-f.ctx.Done():
		case <-time.After(pause):
		}
	}
}

// probeUntilAnswered probes every upstream, then again every ProbeInterval,
// until any upstream has answered (see Config.ProbeAtStart).
func (f *Forwarder) probeUntilAnswered() {
	ticker := time.NewTicker(f.cfg.ProbeInterval)
	defer ticker.Stop()
	for {
		for _, u := range f.upstreams {
			if f.Answered() || f.ctx.Err() != nil {
				return
			}
			if !u.health.probing.Load() {
				_ = f.probe(u)
			}
		}
		select {
		case <-f.ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// probe sends one SOA query for ProbeName to u over the transport of the
// first Server entry naming it, within ProbeTimeout. A probe not answered in
// time is a dead signal (not ambiguous, as a query's timeout is: kube-dns
// answers the probe from its own data).
func (f *Forwarder) probe(u *upstream) error {
	start := monotime()
	_, err := f.try(f.ctx, u.probeHop, u.probeHop.timeout, f.probeWire, &f.probeQuestion)
	if err != nil && classify(err) == reasonTimeout && f.ctx.Err() == nil {
		f.countDead(u, "probe timeout", start)
	}
	return err
}

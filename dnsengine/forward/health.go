package forward

import (
	"sync/atomic"
	"time"
)

// health is one upstream's failure bookkeeping. The query path only does
// atomic loads unless something changes.
type health struct {
	maxFails int32
	fails    atomic.Int32 // consecutive failures
	down     atomic.Bool
	probing  atomic.Bool // a probe goroutine owns this upstream
}

func (h *health) isDown() bool { return h.down.Load() }

// failure counts one failure and reports whether it marked the server down.
func (h *health) failure() (markedDown bool) {
	return h.fails.Add(1) >= h.maxFails && h.down.CompareAndSwap(false, true)
}

// success resets the count and reports whether it marked the server up.
func (h *health) success() (markedUp bool) {
	if h.fails.Load() != 0 {
		h.fails.Store(0)
	}
	return h.down.Load() && h.down.CompareAndSwap(true, false)
}

// failed records a failed attempt on u; the transition to down is logged,
// exported and starts the probe loop.
func (f *Forwarder) failed(u *upstream, r reason) {
	u.metrics.errors[r].Inc()
	if !u.health.failure() {
		return
	}
	u.metrics.healthy.Set(0)
	f.log.Warn("upstream marked down", "server", u.addr, "consecutive_failures", u.health.fails.Load(), "last_reason", r.String())
	if u.health.probing.CompareAndSwap(false, true) {
		f.startProbing(func() { f.probeUntilUp(u) })
	}
}

// succeeded records a successful attempt on u.
func (f *Forwarder) succeeded(u *upstream) {
	if u.health.success() {
		u.metrics.healthy.Set(1)
		f.log.Info("upstream marked up", "server", u.addr)
	}
}

// startProbing runs loop in a goroutine that Close waits for, unless the
// forwarder is already closed.
func (f *Forwarder) startProbing(loop func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed.Load() {
		return
	}
	f.probes.Add(1)
	go func() {
		defer f.probes.Done()
		loop()
	}()
}

// probeUntilUp probes u every ProbeInterval while it is down. It owns
// u.health.probing and gives it up only when u is up, re-taking it if u went
// down again meanwhile, so a down server always has exactly one prober.
func (f *Forwarder) probeUntilUp(u *upstream) {
	ticker := time.NewTicker(f.cfg.ProbeInterval)
	defer ticker.Stop()
	for {
		select {
		case <-f.ctx.Done():
			u.health.probing.Store(false)
			return
		case <-ticker.C:
		}
		if u.health.isDown() {
			f.probe(u)
			continue
		}
		u.health.probing.Store(false)
		if !u.health.isDown() || !u.health.probing.CompareAndSwap(false, true) {
			return
		}
	}
}

// probeUntilAnswered probes every upstream, then again every ProbeInterval,
// until any upstream has answered (see Config.ProbeAtStart). Upstreams marked
// down are left to their own prober.
func (f *Forwarder) probeUntilAnswered() {
	ticker := time.NewTicker(f.cfg.ProbeInterval)
	defer ticker.Stop()
	for {
		for _, u := range f.upstreams {
			if f.Answered() || f.ctx.Err() != nil {
				return
			}
			if !u.health.isDown() {
				f.probe(u)
			}
		}
		select {
		case <-f.ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// probe sends one SOA query for ProbeName to u over the transport and with the
// timeout of the first Server entry naming it. Its outcome counts like a query's.
func (f *Forwarder) probe(u *upstream) {
	_, _ = f.try(f.ctx, u.probeHop, f.probeWire, &f.probeQuestion)
}

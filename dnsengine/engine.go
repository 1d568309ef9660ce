// Package dnsengine is a caching DNS forwarder: UDP and TCP listeners, a sharded
// cache of answers in wire format, coalesced upstream requests, prefetch and
// serve-stale. Cache hits are answered without parsing into a dns.Msg and
// without allocating; everything else is done with github.com/miekg/dns.
package dnsengine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Engine serves DNS on its listen addresses. Create it with New, then Start;
// stop it with Shutdown.
type Engine struct {
	cfg          Config
	log          *slog.Logger
	cache        *cache
	metrics      *metrics
	shared       *counters // TCP and background work; each UDP socket has its own
	prefetchHits uint32    // 0 = no prefetch

	// ctx is cancelled when Shutdown gives up waiting; it bounds upstream requests.
	ctx    context.Context
	cancel context.CancelFunc

	flightMu sync.Mutex
	flights  map[string]*flight

	// wg counts every goroutine started by Start and, transitively, by them:
	// UDP readers, TCP accept loops and connections, misses, prefetches.
	wg              sync.WaitGroup
	inflightMisses  atomic.Int64
	missesPerClient *perClient
	connsPerClient  *perClient
	missesIdle      chan struct{} // signalled when inflightMisses drops to 0 during Shutdown
	stopping        atomic.Bool
	udpDraining     atomic.Bool // set by Shutdown once UDP readers are to drain and close their sockets
	listening       atomic.Bool

	// lifecycle orders Start after a Shutdown that is still draining.
	lifecycle sync.Mutex

	mu      sync.Mutex // guards the fields below
	started bool
	stopped bool
	udp     []*udpListener
	tcp     []net.Listener
	conns   map[net.Conn]struct{}

	// testHookCoalesced, when set, runs (under flightMu) each time a miss joins a flight.
	testHookCoalesced func()
	// testHookUDPDrained, when set, runs each time a UDP reader has drained and
	// closed its socket during Shutdown.
	testHookUDPDrained func()
}

// New validates cfg, applies defaults and registers the metrics. It does not listen.
func New(cfg Config) (*Engine, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:        cfg,
		log:        cfg.Logger,
		cache:      newCache(cfg.CacheSize, cfg.CacheMaxBytes, cfg.StaleMax),
		flights:    make(map[string]*flight),
		missesIdle: make(chan struct{}, 1),
		conns:      make(map[net.Conn]struct{}),

		missesPerClient: newPerClient(cfg.MaxInflightMissesPerClient),
		connsPerClient:  newPerClient(cfg.MaxTCPConnsPerClient),
	}
	if cfg.PrefetchHits > 0 {
		e.prefetchHits = uint32(cfg.PrefetchHits)
	}
	e.metrics = newMetrics(cfg.Namespace, e.cache)
	e.shared = e.metrics.newCounters()
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(e.metrics); err != nil {
			return nil, fmt.Errorf("dnsengine: register metrics: %w", err)
		}
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	return e, nil
}

func (e *Engine) nowNanos() int64 {
	return e.cfg.Now().UnixNano()
}

// Start binds every listener (SO_REUSEPORT) and starts serving. It returns once
// all are listening, or the first bind error (with nothing left bound). After
// Shutdown has returned, Start serves again with the same cache and metrics
// (the node cache's standby serves only while the primary is gone).
func (e *Engine) Start() error {
	e.lifecycle.Lock()
	defer e.lifecycle.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started && !e.stopped {
		return errors.New("dnsengine: already started")
	}
	if e.stopped {
		e.restartLocked()
	}
	for _, addr := range e.cfg.Listen {
		udp, tcp, err := e.bind(addr.String())
		if err != nil {
			e.closeListeners()
			e.udp, e.tcp = nil, nil
			return err
		}
		e.udp = append(e.udp, udp...)
		e.tcp = append(e.tcp, tcp)
	}
	e.started = true
	for _, u := range e.udp {
		e.wg.Add(1)
		go e.serveUDP(u)
	}
	for _, ln := range e.tcp {
		e.wg.Add(1)
		go e.acceptTCP(ln)
	}
	e.listening.Store(true)
	e.log.Info("dns engine listening", "udp", e.udpAddrsLocked(), "tcp", e.tcpAddrsLocked(),
		"udp_sockets_per_address", e.cfg.UDPSockets)
	return nil
}

// restartLocked resets what Shutdown ended, so that Start can serve again
// (e.mu held; Shutdown has returned, so no goroutine of the last run is left).
func (e *Engine) restartLocked() {
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.udp, e.tcp = nil, nil
	e.started, e.stopped = false, false
	e.stopping.Store(false)
	e.udpDraining.Store(false)
	select {
	case <-e.missesIdle: // a wake-up left from the last Shutdown
	default:
	}
}

// closeListeners closes every socket (e.mu held).
func (e *Engine) closeListeners() {
	e.closeUDP()
	for _, ln := range e.tcp {
		ln.Close()
	}
}

// UDPAddrs returns the bound UDP addresses, one per listen address.
func (e *Engine) UDPAddrs() []net.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.udpAddrsLocked()
}

func (e *Engine) udpAddrsLocked() []net.Addr {
	var addrs []net.Addr
	for _, u := range e.udp {
		if u.first {
			addrs = append(addrs, u.conn.LocalAddr())
		}
	}
	return addrs
}

// TCPAddrs returns the bound TCP addresses, one per listen address.
func (e *Engine) TCPAddrs() []net.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tcpAddrsLocked()
}

func (e *Engine) tcpAddrsLocked() []net.Addr {
	addrs := make([]net.Addr, 0, len(e.tcp))
	for _, ln := range e.tcp {
		addrs = append(addrs, ln.Addr())
	}
	return addrs
}

// Listening reports whether the engine is serving.
func (e *Engine) Listening() bool {
	return e.listening.Load()
}

// answerer is an Upstream that can tell whether it has ever been answered
// (*forward.Forwarder can).
type answerer interface{ Answered() bool }

// Ready is /readyz: nil once the engine serves and, if its upstream can
// tell, the upstream has answered.
func (e *Engine) Ready() error {
	if !e.Listening() {
		return errors.New("not listening")
	}
	if a, ok := e.cfg.Upstream.(answerer); ok && !a.Answered() {
		return errors.New("no upstream has answered yet")
	}
	return nil
}

// Shutdown stops the engine gracefully. TCP listeners close at once and TCP
// connections stop reading; the UDP sockets keep serving while the misses in
// flight are answered (at most UpstreamTimeout), because a socket in an
// SO_REUSEPORT group receives its share of queries until it is closed and a
// socket not read would drop them. Then each UDP reader answers what is queued
// and the misses its socket still owes replies to, and closes its socket at
// once, so that the kernel steers the next queries to the sockets left in the
// group (the next instance's). When ctx ends first, upstream requests are
// aborted, sockets force-closed, and ctx's error returned.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.lifecycle.Lock()
	defer e.lifecycle.Unlock()
	e.mu.Lock()
	if !e.started || e.stopped {
		e.mu.Unlock()
		return nil
	}
	e.stopped = true
	e.stopping.Store(true)
	for _, ln := range e.tcp {
		ln.Close()
	}
	e.listening.Store(false) // after the close: not listening means no new TCP connection
	for c := range e.conns {
		c.SetReadDeadline(pastDeadline) // handlers stop reading, answer what they have, then close
	}
	e.mu.Unlock()

	err := e.waitMissesAnswered(ctx)
	if err == nil {
		e.udpDraining.Store(true)
		e.mu.Lock()
		for _, u := range e.udp {
			u.conn.SetReadDeadline(pastDeadline) // the reader drains its socket, closes it and returns
		}
		e.mu.Unlock()
		err = waitCtx(ctx, &e.wg)
	}
	if err != nil {
		err = fmt.Errorf("dnsengine: shutdown forced: %w", err)
		e.cancel()
		e.mu.Lock()
		for c := range e.conns {
			c.Close()
		}
		e.closeUDP()
		e.mu.Unlock()
		e.wg.Wait() // prompt now: upstream requests are cancelled, sockets closed
	}
	e.cancel()
	e.log.Info("dns engine stopped", "forced", err != nil)
	return err
}

// pastDeadline makes blocked reads return at once.
var pastDeadline = time.Unix(1, 0)

// waitMissesAnswered waits until no miss is in flight, at most UpstreamTimeout
// (a steady stream of new misses must not hold Shutdown up), or ctx's error.
func (e *Engine) waitMissesAnswered(ctx context.Context) error {
	limit := time.NewTimer(e.cfg.UpstreamTimeout)
	defer limit.Stop()
	for e.inflightMisses.Load() > 0 {
		select {
		case <-e.missesIdle:
		case <-limit.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// missDone releases a miss slot and, during Shutdown, reports when none is left.
func (e *Engine) missDone() {
	if e.inflightMisses.Add(-1) == 0 && e.stopping.Load() {
		select {
		case e.missesIdle <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// waitCtx waits for wg, or returns ctx's error.
func waitCtx(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// closeUDP closes every UDP socket (e.mu held); closing twice is harmless.
func (e *Engine) closeUDP() {
	for _, u := range e.udp {
		u.conn.Close()
	}
}

// What trackConn decided for a new TCP connection.
type connAdmission int

const (
	connTracked connAdmission = iota
	connStopping
	connOverLimit       // MaxTCPConns are open
	connClientOverLimit // its client has MaxTCPConnsPerClient open
)

// trackConn registers a TCP connection for Shutdown, within MaxTCPConns and
// its client's MaxTCPConnsPerClient.
func (e *Engine) trackConn(c net.Conn, client netip.Addr) connAdmission {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.stopping.Load():
		return connStopping
	case len(e.conns) >= e.cfg.MaxTCPConns:
		return connOverLimit
	case !e.connsPerClient.acquire(client):
		return connClientOverLimit
	}
	e.conns[c] = struct{}{}
	return connTracked
}

func (e *Engine) untrackConn(c net.Conn, client netip.Addr) {
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
	e.connsPerClient.release(client)
	c.Close()
}

package forward

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpPool holds the TCP connections to one server, each carrying one query
// at a time (see the package documentation). Idle connections are reused
// least recently used first, so every open connection carries an even part
// of the queries: behind a Service address each one reached a replica at
// random, and a replica's share of the queries is then its share of the
// connections, not that of whichever one happens to be reused most. Sockets
// are closed outside the lock.
type tcpPool struct {
	addr        string
	maxConns    int
	idleTimeout time.Duration
	maxAge      time.Duration
	dialTimeout time.Duration
	metrics     *serverMetrics
	dialer      net.Dialer

	mu      sync.Mutex
	idle    []*tcpConn // by last use, oldest first
	open    int        // connections open or being dialed
	conns   map[*tcpConn]struct{}
	waiters []chan *tcpConn // FIFO; receiving nil means "a place is free: dial"
	sweep   *time.Timer     // armed while idle connections exist
	closed  bool
}

func newTCPPool(addr string, cfg Config, m *serverMetrics) *tcpPool {
	unacked := int(cfg.UnackedTimeout / time.Millisecond)
	return &tcpPool{
		addr:        addr,
		maxConns:    cfg.MaxConnsPerServer,
		idleTimeout: cfg.IdleTimeout,
		maxAge:      cfg.MaxConnAge,
		dialTimeout: cfg.DialTimeout,
		metrics:     m,
		conns:       make(map[*tcpConn]struct{}),
		dialer: net.Dialer{
			KeepAlive: -1, // idle connections close long before keepalive would matter
			Control: func(_, _ string, rc syscall.RawConn) error {
				var err error
				if cerr := rc.Control(func(fd uintptr) {
					err = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, unacked)
				}); cerr != nil {
					return cerr
				}
				return err
			},
		},
	}
}

// get returns a connection for one query: an idle one, a new one while the
// pool has room, or the next one given back, waiting within ctx.
func (p *tcpPool) get(ctx context.Context) (*tcpConn, error) {
	now := time.Now()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	var expired []*tcpConn
	for len(p.idle) > 0 {
		c := p.idle[0]
		p.idle = slices.Delete(p.idle, 0, 1)
		if c.expired(now, p.idleTimeout) {
			expired = append(expired, c)
			p.forgetLocked(c)
			p.open--
			continue
		}
		p.mu.Unlock()
		p.closeAll(expired)
		return c, nil
	}
	if p.open < p.maxConns {
		p.open++
		p.mu.Unlock()
		p.closeAll(expired)
		return p.dial(ctx)
	}
	wait := make(chan *tcpConn, 1)
	p.waiters = append(p.waiters, wait)
	p.mu.Unlock()
	p.closeAll(expired)
	p.metrics.tcpWaits.Inc()

	select {
	case c := <-wait:
		if c == nil {
			return p.dial(ctx)
		}
		return c, nil
	case <-ctx.Done():
		p.mu.Lock()
		i := slices.Index(p.waiters, wait)
		if i >= 0 {
			p.waiters = slices.Delete(p.waiters, i, i+1)
		}
		p.mu.Unlock()
		if i < 0 { // handed a connection or a place just now: pass it on
			if c := <-wait; c != nil {
				p.put(c, true)
			} else {
				p.release()
			}
		}
		return nil, fmt.Errorf("wait for a tcp connection: %w", ctx.Err())
	}
}

// dial opens a connection on a place already counted in p.open.
func (p *tcpPool) dial(ctx context.Context) (*tcpConn, error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		p.release()
		return nil, ErrClosed
	}
	dctx, cancel := context.WithTimeout(ctx, p.dialTimeout)
	nc, err := p.dialer.DialContext(dctx, "tcp", p.addr)
	cancel()
	if err != nil {
		p.release()
		// The dial's deadline is dctx's; the socket may report it a moment
		// before dctx does.
		if ctx.Err() == nil && (errors.Is(dctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)) {
			return nil, fmt.Errorf("dial tcp %s: %w", p.addr, errDialTimeout)
		}
		return nil, fmt.Errorf("dial tcp: %w", err)
	}
	now := time.Now()
	// Age limit less up to half at random, so connections dialed together
	// do not all close together.
	age := p.maxAge - time.Duration(rand.Int64N(int64(p.maxAge/2)+1))
	c := &tcpConn{nc: nc, lastUsed: now, retireAt: now.Add(age), nextID: uint16(rand.Uint32())}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.release()
		nc.Close()
		return nil, ErrClosed
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	p.metrics.tcpConns.Inc()
	return c, nil
}

// put gives back a connection after one query: reusable when its exchange
// was clean (nothing left to read on it). It goes to the first waiter, or to
// the idle list unless it is too old; otherwise it is closed.
func (p *tcpPool) put(c *tcpConn, reusable bool) {
	now := time.Now()
	p.mu.Lock()
	if reusable && !p.closed && !c.expired(now, p.idleTimeout) {
		c.lastUsed = now
		c.reused = true
		if len(p.waiters) > 0 {
			wait := p.waiters[0]
			p.waiters = p.waiters[1:]
			p.mu.Unlock()
			wait <- c
			return
		}
		p.idle = append(p.idle, c)
		if p.sweep == nil {
			p.sweep = time.AfterFunc(p.idleTimeout, p.sweepIdle)
		}
		p.mu.Unlock()
		return
	}
	p.forgetLocked(c)
	p.mu.Unlock()
	p.release()
	c.close(p.metrics)
}

// release frees a counted place: a waiter gets it to dial, or p.open drops.
func (p *tcpPool) release() {
	p.mu.Lock()
	if len(p.waiters) > 0 && !p.closed {
		wait := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.mu.Unlock()
		wait <- nil
		return
	}
	p.open--
	p.mu.Unlock()
}

// forgetLocked drops c from the set of open connections; p.open is the caller's.
func (p *tcpPool) forgetLocked(c *tcpConn) {
	delete(p.conns, c)
}

// sweepIdle closes the idle connections past IdleTimeout or their age, and
// re-arms itself for the next one while any are idle.
func (p *tcpPool) sweepIdle() {
	now := time.Now()
	p.mu.Lock()
	var expired []*tcpConn
	keep := p.idle[:0]
	for _, c := range p.idle {
		if c.expired(now, p.idleTimeout) {
			expired = append(expired, c)
			p.forgetLocked(c)
			p.open--
			continue
		}
		keep = append(keep, c)
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	p.sweep = nil
	if len(p.idle) > 0 && !p.closed {
		next := p.idle[0].lastUsed.Add(p.idleTimeout).Sub(now)
		p.sweep = time.AfterFunc(max(next, time.Millisecond), p.sweepIdle)
	}
	p.mu.Unlock()
	p.closeAll(expired)
}

func (p *tcpPool) closeAll(conns []*tcpConn) {
	for _, c := range conns {
		c.close(p.metrics)
	}
}

// size returns the number of open connections, busy or idle.
func (p *tcpPool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// close closes every connection, idle or busy (their queries fail), and
// fails the waiters.
func (p *tcpPool) close() {
	p.mu.Lock()
	p.closed = true
	conns := make([]*tcpConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	clear(p.conns)
	p.idle = nil
	waiters := p.waiters
	p.waiters = nil
	if p.sweep != nil {
		p.sweep.Stop()
	}
	p.mu.Unlock()
	for _, w := range waiters {
		w <- nil // they dial, find the pool closed and fail
	}
	p.closeAll(conns)
}

package forward

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// relearnAfter is how many connections the pool retires at a learnt query
// limit before it forgets the limit. The limit may have been learnt from a
// close for another reason (a restart) or be gone; forgotten, it is found
// again at the next close with queries outstanding, at the cost of resending
// those queries once.
const relearnAfter = 64

// tcpPool holds the persistent connections to one server (RFC 7766). Queries
// go to the least loaded connection; another is dialed when that one has
// PipelineDepth queries outstanding and the pool is not full. One dial runs
// at a time: queries that find no connection wait for it.
//
// Servers may close a connection after a number of queries (miekg/dns
// servers after 128 by default), and pipelined queries they never read are
// lost with it. The pool learns that number from such a close (queryLimit)
// and sends no more than that many queries on each connection: one that has
// reached it is retired: it takes no new queries, does not count towards
// MaxConnsPerServer, and is closed once its queries are answered.
type tcpPool struct {
	addr        string
	maxConns    int
	depth       int32
	idleTimeout time.Duration
	metrics     *serverMetrics
	dialer      net.Dialer
	readers     sync.WaitGroup // one reader goroutine per connection

	// queryLimit is the number of queries the server was last seen to answer
	// on a connection before closing it with more outstanding; 0 = none seen.
	queryLimit     atomic.Int64
	retiredAtLimit atomic.Int32 // connections that reached queryLimit since it was learnt

	mu      sync.Mutex
	conns   []*pipeConn
	dialing *dialCall // the dial in progress, if any
	closed  bool
}

// dialCall is a dial other queries can wait for.
type dialCall struct {
	done chan struct{}
	err  error
}

func newTCPPool(addr string, cfg Config, m *serverMetrics) *tcpPool {
	return &tcpPool{
		addr:        addr,
		maxConns:    cfg.MaxConnsPerServer,
		depth:       int32(cfg.PipelineDepth),
		idleTimeout: cfg.IdleTimeout,
		metrics:     m,
	}
}

// acquire returns a connection to send one query on, dialing when needed,
// with a place reserved on it (counted in inflight), so that concurrent
// acquires see the load at once and the idle timer leaves it open.
func (p *tcpPool) acquire(ctx context.Context) (*pipeConn, error) {
	p.mu.Lock()
	for {
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		c, open := p.leastLoaded()
		if c != nil && (c.inflight.Load() < p.depth || open >= p.maxConns || p.dialing != nil) {
			c.reserve()
			p.mu.Unlock()
			return c, nil
		}
		if d := p.dialing; d != nil {
			p.mu.Unlock()
			select {
			case <-d.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("wait for tcp dial: %w", ctx.Err())
			}
			if d.err != nil && !errors.Is(d.err, context.Canceled) {
				return nil, d.err
			}
			// Dialed, or the dialing query was cancelled by its caller (not
			// the server's fault, and not ours): look again.
			p.mu.Lock()
			continue
		}
		return p.dial(ctx)
	}
}

// dial opens a connection and adds it to the pool. Called with p.mu held; returns with it released.
func (p *tcpPool) dial(ctx context.Context) (*pipeConn, error) {
	d := &dialCall{done: make(chan struct{})}
	p.dialing = d
	p.mu.Unlock()

	nc, err := p.dialer.DialContext(ctx, "tcp", p.addr)
	var c *pipeConn

	p.mu.Lock()
	p.dialing = nil
	switch {
	case err != nil:
		err = fmt.Errorf("dial tcp: %w", err)
	case p.closed:
		err = ErrClosed
	default:
		c = newPipeConn(p, nc)
		c.reserve() // the dialer's
		p.conns = append(p.conns, c)
		p.metrics.tcpConns.Inc()
		p.readers.Add(1)
		go c.readLoop()
	}
	d.err = err
	close(d.done)
	p.mu.Unlock()

	if nc != nil && c == nil {
		nc.Close()
	}
	return c, err
}

// leastLoaded returns the connection taking queries with the fewest
// outstanding (nil if none) and how many connections take queries. Called
// with p.mu held.
func (p *tcpPool) leastLoaded() (best *pipeConn, open int) {
	for _, c := range p.conns {
		if c.dead.Load() || c.retired() {
			continue
		}
		open++
		if best == nil || c.inflight.Load() < best.inflight.Load() {
			best = c
		}
	}
	return best, open
}

// learnQueryLimit records that the server closed a connection after
// answering n queries while more were outstanding on it.
func (p *tcpPool) learnQueryLimit(n int64) {
	p.queryLimit.Store(n)
	p.retiredAtLimit.Store(0)
}

// retiredOne notes that a connection reached the learnt limit; after
// relearnAfter of them the limit is forgotten.
func (p *tcpPool) retiredOne(limit int64) {
	if p.retiredAtLimit.Add(1) >= relearnAfter && p.queryLimit.CompareAndSwap(limit, 0) {
		p.retiredAtLimit.Store(0)
	}
}

// remove drops c from the pool, once.
func (p *tcpPool) remove(c *pipeConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, pc := range p.conns {
		if pc == c {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			p.metrics.tcpConns.Dec()
			return
		}
	}
}

// size returns the number of pooled connections.
func (p *tcpPool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// close closes every connection (outside the pool lock) and waits for their readers.
func (p *tcpPool) close() {
	p.mu.Lock()
	p.closed = true
	conns := append([]*pipeConn(nil), p.conns...)
	p.mu.Unlock()
	for _, c := range conns {
		c.shutdown(ErrClosed)
	}
	p.readers.Wait()
}

// pipeConn is one TCP connection carrying many outstanding queries, each under
// an ID unique on the connection. A reader goroutine matches replies back.
type pipeConn struct {
	pool     *tcpPool
	nc       net.Conn
	inflight atomic.Int32 // queries reserved on c or waiting for a reply
	sent     atomic.Int64 // queries ever reserved on c
	replies  atomic.Int64 // reply frames read from c
	dead     atomic.Bool  // closed, or closing (a write failed); acquire skips it
	lastRead atomic.Int64 // monotime of the last reply frame read

	wmu     sync.Mutex // guards the write queue
	wqueue  []byte     // frames waiting to be written
	wspare  []byte     // the previous batch's buffer, reused
	writing bool       // a goroutine is writing the queue

	mu        sync.Mutex
	pending   map[uint16]*waiter
	nextID    uint16
	closed    bool
	idleSince time.Time
	idleTimer *time.Timer
	idleArmed bool
}

type waiter struct {
	q      *dns.Question
	sentAt int64 // monotime
	reply  chan tcpReply
}

type tcpReply struct {
	msg *dns.Msg
	err error
}

func newPipeConn(p *tcpPool, nc net.Conn) *pipeConn {
	c := &pipeConn{
		pool:    p,
		nc:      nc,
		pending: make(map[uint16]*waiter),
		nextID:  uint16(rand.Uint32()),
	}
	c.mu.Lock()
	c.becameIdleLocked()
	c.mu.Unlock()
	return c
}

// reserve takes a place on c for one query. Called with the pool's lock held.
func (c *pipeConn) reserve() {
	c.inflight.Add(1)
	if sent, limit := c.sent.Add(1), c.pool.queryLimit.Load(); sent == limit {
		c.pool.retiredOne(limit)
	}
}

// retired reports whether c has carried as many queries as the server answers
// on one connection.
func (c *pipeConn) retired() bool {
	limit := c.pool.queryLimit.Load()
	return limit > 0 && c.sent.Load() >= limit
}

// exchange sends one query on c, on the place acquire reserved, and waits for
// its reply or ctx.
func (c *pipeConn) exchange(ctx context.Context, wire []byte, q *dns.Question) (*dns.Msg, error) {
	w := &waiter{q: q, sentAt: monotime(), reply: make(chan tcpReply, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errConnGone
	}
	id, ok := c.allocIDLocked()
	if !ok {
		c.releaseLocked()
		c.mu.Unlock()
		return nil, errIDsExhausted
	}
	c.pending[id] = w
	c.mu.Unlock()

	if err := c.write(ctx, id, wire); err != nil {
		c.writeFailed(err)
	}
	select {
	case r := <-w.reply:
		return r.msg, r.err
	case <-ctx.Done():
		if !c.forget(id, w) {
			// Its reply or its connection's failure won the race with ctx
			// and is being sent; take it.
			r := <-w.reply
			return r.msg, r.err
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && c.lastRead.Load() < w.sentAt {
			// Nothing has come back on c since this query went out: the
			// connection is probably black-holed, not just slow on one name.
			c.shutdown(fmt.Errorf("no reply since a query timed out: %w", ctx.Err()))
		}
		return nil, fmt.Errorf("tcp: %w", ctx.Err())
	}
}

// epoch anchors monotime.
var epoch = time.Now()

// monotime is a monotonic clock reading in nanoseconds, cheap to store atomically.
func monotime() int64 { return int64(time.Since(epoch)) }

// allocIDLocked picks the next ID not outstanding on c.
func (c *pipeConn) allocIDLocked() (uint16, bool) {
	for range 1 << 16 {
		id := c.nextID
		c.nextID++
		if _, busy := c.pending[id]; !busy {
			return id, true
		}
	}
	return 0, false
}

// write queues query wire as one length-prefixed frame carrying message ID id
// and makes sure it is written. Concurrent writers coalesce: the first one to
// find no write in progress writes everything queued, in as few syscalls as
// the load allows, under its own deadline. A failed write is returned to that
// writer, which shuts the connection down, failing every waiter.
func (c *pipeConn) write(ctx context.Context, id uint16, wire []byte) error {
	c.wmu.Lock()
	start := len(c.wqueue)
	c.wqueue = append(c.wqueue, 0, 0)
	c.wqueue = append(c.wqueue, wire...)
	binary.BigEndian.PutUint16(c.wqueue[start:], uint16(len(wire)))
	binary.BigEndian.PutUint16(c.wqueue[start+2:], id)
	if c.writing {
		c.wmu.Unlock()
		return nil // the writer in progress takes this frame along
	}
	c.writing = true
	deadline, _ := ctx.Deadline() // zero = none
	var err error
	for len(c.wqueue) > 0 && err == nil {
		batch := c.wqueue
		c.wqueue = c.wspare[:0]
		c.wmu.Unlock()
		if err = c.nc.SetWriteDeadline(deadline); err == nil {
			_, err = c.nc.Write(batch)
		}
		c.wmu.Lock()
		c.wspare = batch[:0]
	}
	c.wqueue = c.wqueue[:0]
	c.writing = false
	c.wmu.Unlock()
	return err
}

// writeFailed takes c out of service after a failed write: a partial frame
// leaves the stream unusable. When the peer closed or reset the connection,
// replies it sent before may still be on their way, so the reader goes on
// and hands them out until it reaches the end of the stream, which then fails
// the queries left unanswered. Otherwise (a write timeout) c closes at once.
func (c *pipeConn) writeFailed(err error) {
	if classify(err) == reasonClosed {
		c.dead.Store(true)
		return
	}
	c.shutdown(fmt.Errorf("write: %w", err))
}

// forget removes a waiter that gave up; a late reply for it is then dropped.
// It reports whether the waiter was still pending.
func (c *pipeConn) forget(id uint16, w *waiter) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending[id] != w {
		return false
	}
	delete(c.pending, id)
	c.releaseLocked()
	return true
}

// releaseLocked gives back one query's place. Called with c.mu held.
func (c *pipeConn) releaseLocked() {
	if c.inflight.Add(-1) == 0 {
		c.becameIdleLocked()
	}
}

// readLoop reads reply frames until the connection fails or is closed.
func (c *pipeConn) readLoop() {
	defer c.pool.readers.Done()
	r := bufio.NewReader(c.nc)
	var length [2]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(r, length[:]); err != nil {
			c.readFailed(err)
			return
		}
		n := int(binary.BigEndian.Uint16(length[:]))
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			c.readFailed(err)
			return
		}
		c.replies.Add(1)
		c.lastRead.Store(monotime())
		c.deliver(buf) // Unpack copies; buf is reused
	}
}

// readFailed closes c once its stream has ended or broken, failing the
// queries still waiting. If the server stopped answering queries it had
// before it answered others, it closed c after a number of queries (rather
// than when idle, or than because it is gone): the pool learns that number.
func (c *pipeConn) readFailed(err error) {
	c.mu.Lock()
	if replies := c.replies.Load(); replies > 0 && len(c.pending) > 0 {
		oldest := int64(math.MaxInt64)
		for _, w := range c.pending {
			oldest = min(oldest, w.sentAt)
		}
		if c.lastRead.Load() >= oldest {
			c.pool.learnQueryLimit(replies)
		}
	}
	waiters := c.detachLocked()
	c.mu.Unlock()
	c.finish(waiters, fmt.Errorf("%w: read: %w", errConnClosed, err))
}

// deliver hands one reply frame to the query it answers, or drops it.
func (c *pipeConn) deliver(frame []byte) {
	m := new(dns.Msg)
	unpackErr := m.Unpack(frame)
	if unpackErr != nil && len(frame) < 2 {
		c.pool.metrics.errors[reasonOther].Inc()
		return
	}
	id := binary.BigEndian.Uint16(frame)

	c.mu.Lock()
	w := c.pending[id]
	if w == nil || (unpackErr == nil && !matches(w.q, m)) {
		c.mu.Unlock()
		c.pool.metrics.errors[reasonMismatch].Inc()
		return
	}
	delete(c.pending, id)
	c.releaseLocked()
	c.mu.Unlock()

	if unpackErr != nil {
		w.reply <- tcpReply{err: fmt.Errorf("%w: %w", errMalformed, unpackErr)}
		return
	}
	w.reply <- tcpReply{msg: m}
}

// becameIdleLocked notes that c has nothing in flight and makes sure the idle
// timer will look at it: after IdleTimeout, or at once when c is retired.
// Called with c.mu held.
func (c *pipeConn) becameIdleLocked() {
	c.idleSince = time.Now()
	retired := c.retired()
	if c.closed || (c.idleArmed && !retired) {
		return
	}
	c.idleArmed = true
	wait := c.pool.idleTimeout
	if retired {
		wait = 0 // even when armed for later, e.g. since c was dialed
	}
	if c.idleTimer == nil {
		c.idleTimer = time.AfterFunc(wait, c.expireIfIdle)
	} else {
		c.idleTimer.Reset(wait)
	}
}

// expireIfIdle closes c when nothing has been in flight for IdleTimeout, or
// at all once it is retired.
func (c *pipeConn) expireIfIdle() {
	c.mu.Lock()
	c.idleArmed = false
	if c.closed || c.inflight.Load() > 0 {
		c.mu.Unlock()
		return // busy again; the next idle moment re-arms the timer
	}
	if rest := c.pool.idleTimeout - time.Since(c.idleSince); rest > 0 && !c.retired() {
		c.idleArmed = true
		c.idleTimer.Reset(rest)
		c.mu.Unlock()
		return
	}
	waiters := c.detachLocked()
	c.mu.Unlock()
	c.finish(waiters, errConnClosed)
}

// shutdown closes c and fails every query waiting on it. Idempotent.
func (c *pipeConn) shutdown(cause error) {
	c.mu.Lock()
	waiters := c.detachLocked()
	c.mu.Unlock()
	c.finish(waiters, fmt.Errorf("%w: %w", errConnClosed, cause))
}

// detachLocked marks c closed and takes its waiters; nil when already closed.
// Called with c.mu held.
func (c *pipeConn) detachLocked() map[uint16]*waiter {
	if c.closed {
		return nil
	}
	c.closed = true
	c.dead.Store(true)
	waiters := c.pending
	c.pending = nil
	c.inflight.Store(0)
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	if waiters == nil {
		waiters = map[uint16]*waiter{} // non-nil: this call closed c
	}
	return waiters
}

// finish completes closing after detachLocked, outside every lock: it drops c
// from the pool, closes the socket (which ends the reader) and fails the waiters.
func (c *pipeConn) finish(waiters map[uint16]*waiter, err error) {
	if waiters == nil {
		return
	}
	c.pool.remove(c)
	c.nc.Close()
	for _, w := range waiters {
		w.reply <- tcpReply{err: err}
	}
}

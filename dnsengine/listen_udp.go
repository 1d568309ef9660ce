package dnsengine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/localdns/localdns/internal/sockopt"
)

const (
	// udpBatch is how many datagrams one recvmmsg/sendmmsg moves.
	udpBatch = 32
	// udpReadBuffer holds any query worth answering; longer datagrams are
	// dropped as malformed (MSG_TRUNC).
	udpReadBuffer = 4096
	// socketBuffer is the kernel buffer asked for per socket, to ride out bursts.
	socketBuffer = 4 << 20
	// udpDrainBatches bounds the batches a stopping reader answers from its queue.
	udpDrainBatches = 64
	// bindAttempts bounds the retries when port 0 picked a UDP port whose TCP twin is taken.
	bindAttempts = 8
)

// batchConn is what ipv4.PacketConn and ipv6.PacketConn share: recvmmsg and sendmmsg.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// udpListener is one SO_REUSEPORT socket with its reader goroutine's counters.
type udpListener struct {
	conn  *net.UDPConn
	batch batchConn
	c     *counters
	first bool // the first socket of its listen address (reported by UDPAddrs)
	// misses counts the misses whose reply is still to be sent through conn:
	// a draining reader keeps the socket open for them.
	misses atomic.Int64
}

// bind opens cfg.UDPSockets UDP sockets and one TCP listener on addr. With
// port 0 the TCP listener takes the port UDP got, bound without SO_REUSEPORT
// so that it cannot silently share another listener's port. That also catches
// the kernel handing out a UDP port already held by another SO_REUSEPORT
// engine of the same user (which it may do for port 0): that engine has its
// TCP listener there, so the bind fails and is retried on a new port.
func (e *Engine) bind(addr string) ([]*udpListener, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen address %q: %w", addr, err)
	}
	ephemeral := port == "0"
	for attempt := 1; ; attempt++ {
		udp, err := e.bindUDP(addr)
		if err != nil {
			return nil, nil, err
		}
		bound := net.JoinHostPort(host, strconv.Itoa(udp[0].conn.LocalAddr().(*net.UDPAddr).Port))
		lc := net.ListenConfig{Control: e.listenControl(true)}
		if ephemeral {
			lc.Control = e.listenControl(false)
		}
		ln, err := lc.Listen(context.Background(), "tcp", bound)
		if err == nil {
			return udp, ln, nil
		}
		for _, u := range udp {
			u.conn.Close()
		}
		if !ephemeral || attempt == bindAttempts || !errors.Is(err, unix.EADDRINUSE) {
			return nil, nil, fmt.Errorf("listen tcp %s: %w", bound, err)
		}
	}
}

// listenControl sets SO_REUSEPORT when reusePort, and IP_FREEBIND when the
// config asks for it.
func (e *Engine) listenControl(reusePort bool) func(string, string, syscall.RawConn) error {
	var fns []func(string, string, syscall.RawConn) error
	if reusePort {
		fns = append(fns, sockopt.ReusePort)
	}
	if e.cfg.FreeBind {
		fns = append(fns, sockopt.FreeBind)
	}
	return sockopt.Both(fns...)
}

// bindUDP opens the UDP sockets of one listen address; the first one fixes the port.
func (e *Engine) bindUDP(addr string) ([]*udpListener, error) {
	lc := net.ListenConfig{Control: e.listenControl(true)}
	var socks []*udpListener
	for i := range e.cfg.UDPSockets {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			for _, u := range socks {
				u.conn.Close()
			}
			return nil, fmt.Errorf("listen udp %s: %w", addr, err)
		}
		conn := pc.(*net.UDPConn)
		// Best effort: the kernel caps these at net.core.{r,w}mem_max.
		_ = conn.SetReadBuffer(socketBuffer)
		_ = conn.SetWriteBuffer(socketBuffer)
		local := conn.LocalAddr().(*net.UDPAddr)
		u := &udpListener{conn: conn, c: e.metrics.newCounters(), first: i == 0}
		if local.IP.To4() != nil {
			u.batch = ipv4.NewPacketConn(conn)
		} else {
			u.batch = ipv6.NewPacketConn(conn)
		}
		socks = append(socks, u)
		addr = local.String() // the next sockets join the port the first one got
	}
	return socks, nil
}

// serveUDP is one socket's read loop: read a batch, answer the hits into a
// batch of replies, hand the misses to goroutines, write the batch.
func (e *Engine) serveUDP(u *udpListener) {
	defer e.wg.Done()
	reads := make([]ipv4.Message, udpBatch)
	writes := make([]ipv4.Message, udpBatch)
	for i := range reads {
		reads[i].Buffers = [][]byte{make([]byte, udpReadBuffer)}
		writes[i].Buffers = [][]byte{make([]byte, 0, maxUDPReply)}
	}
	r := new(request)
	for {
		n, err := u.batch.ReadBatch(reads, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if e.udpDraining.Load() {
				break
			}
			e.log.Warn("udp read failed", "addr", u.conn.LocalAddr(), "err", err)
			continue
		}
		e.answerBatch(u, reads[:n], writes, r)
	}
	// Shutdown: first leave the SO_REUSEPORT group, so that new queries go to
	// the port's other sockets (a replacement instance's during a rolling
	// update) or, with none left, get port-unreachable and move clients to
	// their next nameserver at once. Until then a query could land between
	// the last read and the close, and be dropped with the socket: glibc's
	// A and AAAA, sent back to back, often did. Then answer the queries
	// already queued, which closing the socket would drop, and the misses
	// this socket owes replies to, and close it. Bounded all the same.
	defer e.closeDrainedUDP(u)
	if err := sockopt.LeaveReusePortGroup(u.conn); err != nil {
		e.log.Warn("udp socket stays in its SO_REUSEPORT group while draining", "addr", u.conn.LocalAddr(), "err", err)
	}
	for range udpDrainBatches {
		if err := u.conn.SetReadDeadline(time.Time{}); err != nil {
			return
		}
		flags := unix.MSG_DONTWAIT
		if u.misses.Load() > 0 {
			flags = 0 // keep answering until the last miss's reply is sent: missUDP then wakes this read
		}
		n, err := u.batch.ReadBatch(reads, flags)
		if err == nil {
			e.answerBatch(u, reads[:n], writes, r)
			continue
		}
		if errors.Is(err, net.ErrClosed) || u.misses.Load() == 0 {
			return
		}
	}
}

// closeDrainedUDP closes the socket of a reader that has stopped reading.
func (e *Engine) closeDrainedUDP(u *udpListener) {
	u.conn.Close()
	if e.testHookUDPDrained != nil {
		e.testHookUDPDrained()
	}
}

// answerBatch answers the hits among the datagrams read into writes (sent as
// one batch) and hands each miss to a goroutine.
func (e *Engine) answerBatch(u *udpListener, reads, writes []ipv4.Message, r *request) {
	now := e.nowNanos()
	out := 0
	for i := range reads {
		m := &reads[i]
		if m.Flags&unix.MSG_TRUNC != 0 {
			u.c.malformed.Add(1)
			continue
		}
		reply, o := e.serve(m.Buffers[0][:m.N], writes[out].Buffers[0][:0], r, protoUDP, u.c, now)
		switch o {
		case replyNow:
			writes[out].Buffers[0] = reply
			writes[out].Addr = m.Addr
			out++
		case needsUpstream:
			r.client = clientAddr(m.Addr)
			if !e.admitMiss(r.client, u.c) {
				writes[out].Buffers[0] = refuseMiss(writes[out].Buffers[0][:0], r, protoUDP, u.c)
				writes[out].Addr = m.Addr
				out++
				continue
			}
			e.missUDP(u, r.detach(), m.Addr)
		}
	}
	e.writeBatch(u, writes[:out])
}

// writeBatch sends every reply, skipping one that the kernel refuses.
func (e *Engine) writeBatch(u *udpListener, ms []ipv4.Message) {
	for len(ms) > 0 {
		n, err := u.batch.WriteBatch(ms, 0)
		if err != nil {
			e.log.Debug("udp write failed", "to", ms[0].Addr, "err", err)
			n = 1
		}
		ms = ms[n:]
	}
}

// missUDP answers a miss in its own goroutine, so that the read loop never waits for the upstream.
func (e *Engine) missUDP(u *udpListener, r *request, to net.Addr) {
	u.misses.Add(1)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		if _, err := u.conn.WriteTo(e.answerMiss(r, protoUDP, u.c), to); err != nil {
			e.log.Debug("udp write failed", "to", to, "err", err)
		}
		if u.misses.Add(-1) == 0 && e.udpDraining.Load() {
			_ = u.conn.SetReadDeadline(pastDeadline) // the draining reader may close the socket now
		}
	}()
}

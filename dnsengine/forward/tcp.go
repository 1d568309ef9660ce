package forward

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// tcpConn is one pooled TCP connection. Only the query holding it uses it.
type tcpConn struct {
	nc       net.Conn
	retireAt time.Time // closed once this old, not reused
	lastUsed time.Time // guarded by the pool's lock while idle
	// reused: c has carried a query before, so the server may have closed
	// it since (idle, or its replica gone) without c's owner knowing.
	reused bool
	nextID uint16
	frame  []byte // the query frame, then the reply, reused
	closed atomic.Bool
}

// expired reports whether c is too old, or idle too long, to be used again.
func (c *tcpConn) expired(now time.Time, idleTimeout time.Duration) bool {
	return !now.Before(c.retireAt) || now.Sub(c.lastUsed) >= idleTimeout
}

// close closes the socket once.
func (c *tcpConn) close(m *serverMetrics) {
	if c.closed.CompareAndSwap(false, true) {
		c.nc.Close()
		m.tcpConns.Dec()
	}
}

// roundTrip sends one query (under an ID of c's own) and reads frames until
// its reply, within ctx. After any error c must not be reused: a reply may
// still be on its way.
func (c *tcpConn) roundTrip(ctx context.Context, wire []byte, q *dns.Question, m *serverMetrics) (*dns.Msg, error) {
	deadline, _ := ctx.Deadline() // zero = none
	if err := c.nc.SetDeadline(deadline); err != nil {
		return nil, wrapConnErr("tcp deadline", err)
	}
	// A cancelled ctx unblocks the read by moving the deadline to the past.
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	id := c.nextID
	c.nextID++
	c.frame = binary.BigEndian.AppendUint16(c.frame[:0], uint16(len(wire)))
	c.frame = append(c.frame, wire...)
	binary.BigEndian.PutUint16(c.frame[2:], id)
	if _, err := c.nc.Write(c.frame); err != nil {
		return nil, c.failed(ctx, "write", err)
	}
	for {
		var length [2]byte
		if _, err := io.ReadFull(c.nc, length[:]); err != nil {
			return nil, c.failed(ctx, "read", err)
		}
		n := int(binary.BigEndian.Uint16(length[:]))
		if cap(c.frame) < n {
			c.frame = make([]byte, n)
		}
		c.frame = c.frame[:n]
		if _, err := io.ReadFull(c.nc, c.frame); err != nil {
			return nil, c.failed(ctx, "read", err)
		}
		msg := new(dns.Msg)
		if err := msg.Unpack(c.frame); err != nil {
			if len(c.frame) >= 2 && binary.BigEndian.Uint16(c.frame) == id {
				return nil, fmt.Errorf("%w: %w", errMalformed, err)
			}
			m.errors[reasonOther].Inc()
			continue
		}
		if msg.Id != id || !matches(q, msg) {
			m.errors[reasonMismatch].Inc()
			continue
		}
		if !stop() { // ctx ended just now: its deadline may hit the socket later
			return nil, fmt.Errorf("tcp: %w", ctx.Err())
		}
		return msg, nil
	}
}

// failed names a socket error. The socket's only deadline is ctx's, which
// may fire a moment before ctx itself reports it; the end of the stream
// before any reply is the server closing c.
func (c *tcpConn) failed(ctx context.Context, op string, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("tcp %s: %w", op, ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("tcp %s: %w", op, context.DeadlineExceeded)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("tcp %s: %w: %w", op, errConnClosed, err)
	}
	return wrapConnErr("tcp "+op, err)
}

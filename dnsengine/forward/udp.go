package forward

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// udpBufPool holds datagram buffers big enough for any DNS message.
var udpBufPool = sync.Pool{New: func() any { b := make([]byte, dns.MaxMsgSize); return &b }}

// udpSockets keeps a few connected UDP sockets to one server for reuse, so a
// query costs no socket, connect and close syscalls. A socket returns here
// only after a clean exchange (its reply matched); any error closes it, so a
// pending ICMP error or late reply never reaches the next query.
type udpSockets struct {
	addr *net.UDPAddr
	max  int

	mu     sync.Mutex
	idle   []*net.UDPConn
	closed bool
}

func (s *udpSockets) get() (*net.UDPConn, error) {
	s.mu.Lock()
	if n := len(s.idle); n > 0 {
		nc := s.idle[n-1]
		s.idle = s.idle[:n-1]
		s.mu.Unlock()
		return nc, nil
	}
	s.mu.Unlock()
	nc, err := net.DialUDP("udp", nil, s.addr)
	if err != nil {
		return nil, fmt.Errorf("dial udp: %w", err)
	}
	return nc, nil
}

func (s *udpSockets) put(nc *net.UDPConn) {
	s.mu.Lock()
	if s.closed || len(s.idle) >= s.max {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.idle = append(s.idle, nc)
	s.mu.Unlock()
}

// close closes the idle sockets; sockets in use are closed when their query ends.
func (s *udpSockets) close() {
	s.mu.Lock()
	idle := s.idle
	s.idle, s.closed = nil, true
	s.mu.Unlock()
	for _, nc := range idle {
		nc.Close()
	}
}

// askUDP sends the query from a connected UDP socket under a random ID
// and reads until a datagram matches ID and question or ctx ends. Mismatched
// or unparsable datagrams are dropped and counted. ECONNREFUSED (ICMP port
// unreachable) returns at once.
func (u *upstream) askUDP(ctx context.Context, wire []byte, q *dns.Question) (*dns.Msg, error) {
	nc, err := u.udp.get()
	if err != nil {
		return nil, err
	}
	resp, err := u.roundTripUDP(ctx, nc, wire, q)
	if err != nil {
		nc.Close()
		return nil, err
	}
	u.udp.put(nc)
	return resp, nil
}

func (u *upstream) roundTripUDP(ctx context.Context, nc *net.UDPConn, wire []byte, q *dns.Question) (*dns.Msg, error) {
	deadline, _ := ctx.Deadline()
	if err := nc.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("udp deadline: %w", err)
	}
	// A cancelled ctx unblocks the read by moving the deadline to the past.
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	bp := udpBufPool.Get().(*[]byte)
	defer udpBufPool.Put(bp)
	buf := *bp

	id := uint16(rand.Uint32())
	out := buf[:copy(buf, wire)]
	binary.BigEndian.PutUint16(out, id)
	if _, err := nc.Write(out); err != nil {
		return nil, fmt.Errorf("write udp: %w", err)
	}
	for {
		n, err := nc.Read(buf)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return nil, fmt.Errorf("read udp: %w", ctx.Err())
			case errors.Is(err, os.ErrDeadlineExceeded): // ctx's deadline, a moment before ctx reports it
				return nil, fmt.Errorf("read udp: %w", context.DeadlineExceeded)
			}
			return nil, fmt.Errorf("read udp: %w", err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil {
			u.metrics.errors[reasonOther].Inc()
			continue
		}
		if m.Id != id || !matches(q, m) {
			u.metrics.errors[reasonMismatch].Inc()
			continue
		}
		if !stop() { // ctx ended just now: its deadline may hit the socket later
			return nil, fmt.Errorf("read udp: %w", ctx.Err())
		}
		return m, nil
	}
}

package dnsengine

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

const (
	// maxPipelined bounds the misses one TCP connection may have in flight;
	// reading pauses when it is reached.
	maxPipelined = 64
	// acceptBackoff paces the accept loop after an error such as EMFILE.
	acceptBackoff = 50 * time.Millisecond
	// tcpMessageTimeout bounds reading the rest of a query once its length
	// has arrived, so a client cannot hold a connection with a partial one.
	tcpMessageTimeout = 2 * time.Second
	// tcpFirstRead is what a connection's buffer starts with: a query of
	// ordinary size, whatever length prefix arrived; it grows only as bytes do.
	tcpFirstRead = 512
)

func (e *Engine) acceptTCP(ln net.Listener) {
	defer e.wg.Done()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if e.stopping.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			e.log.Warn("tcp accept failed", "addr", ln.Addr(), "err", err)
			time.Sleep(acceptBackoff)
			continue
		}
		client := clientAddr(conn.RemoteAddr())
		switch e.trackConn(conn, client) {
		case connStopping:
			conn.Close()
			return
		case connOverLimit:
			e.shared.tcpRefused.Add(1)
			conn.Close()
			continue
		case connClientOverLimit:
			e.shared.clientLimited[limitTCPConns].Add(1)
			conn.Close()
			continue
		}
		e.wg.Add(1)
		go e.serveTCP(conn, client)
	}
}

// tcpConn serialises the replies written to one connection.
type tcpConn struct {
	conn    net.Conn
	timeout time.Duration
	mu      sync.Mutex
	buf     []byte
}

// write sends one length-prefixed reply. On failure it closes the connection,
// which also ends the reader.
func (t *tcpConn) write(reply []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = binary.BigEndian.AppendUint16(t.buf[:0], uint16(len(reply)))
	t.buf = append(t.buf, reply...)
	if err := t.conn.SetWriteDeadline(time.Now().Add(t.timeout)); err != nil {
		t.conn.Close()
		return
	}
	if _, err := t.conn.Write(t.buf); err != nil {
		t.conn.Close()
	}
}

// serveTCP reads pipelined queries (RFC 7766 6.2.1.1): hits are answered in
// order, misses in their own goroutines, so replies may be out of order.
func (e *Engine) serveTCP(conn net.Conn, client netip.Addr) {
	defer e.wg.Done()
	defer e.untrackConn(conn, client)
	tc := &tcpConn{conn: conn, timeout: e.cfg.TCPWriteTimeout}
	var inflight sync.WaitGroup
	slots := make(chan struct{}, maxPipelined)
	r := new(request)
	var prefix [2]byte
	var pkt, out []byte
	for {
		if err := conn.SetReadDeadline(time.Now().Add(e.cfg.TCPIdleTimeout)); err != nil || e.stopping.Load() {
			break // checked after setting the deadline, so Shutdown's deadline is never overwritten unnoticed
		}
		if _, err := io.ReadFull(conn, prefix[:]); err != nil {
			break
		}
		if err := conn.SetReadDeadline(time.Now().Add(tcpMessageTimeout)); err != nil || e.stopping.Load() {
			break
		}
		var err error
		if pkt, err = readMessage(conn, pkt, int(binary.BigEndian.Uint16(prefix[:]))); err != nil {
			break
		}
		reply, o := e.serve(pkt, out, r, protoTCP, e.shared, e.nowNanos())
		switch o {
		case replyNow:
			out = reply
			tc.write(reply)
		case needsUpstream:
			r.client = client
			if !e.admitMiss(client, e.shared) {
				out = refuseMiss(out, r, protoTCP, e.shared)
				tc.write(out)
				continue
			}
			d := r.detach()
			slots <- struct{}{}
			inflight.Add(1)
			go func() {
				defer inflight.Done()
				tc.write(e.answerMiss(d, protoTCP, e.shared))
				<-slots
			}()
		}
	}
	inflight.Wait()
}

// readMessage reads an n-byte message into buf, which grows only as the
// bytes arrive: a length prefix alone reserves no 64 KiB.
func readMessage(conn net.Conn, buf []byte, n int) ([]byte, error) {
	buf = buf[:0]
	for len(buf) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(n, max(tcpFirstRead, 2*cap(buf))))
			copy(grown, buf)
			buf = grown
		}
		m, err := conn.Read(buf[len(buf):min(n, cap(buf))])
		buf = buf[:len(buf)+m]
		if err != nil && len(buf) < n {
			return buf, err
		}
	}
	return buf, nil
}

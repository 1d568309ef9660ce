package dnsengine

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

const (
	// maxPipelined bounds the misses one TCP connection may have in flight;
	// reading pauses when it is reached.
	maxPipelined = 64
	// acceptBackoff paces the accept loop after an error such as EMFILE.
	acceptBackoff = 50 * time.Millisecond
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
		if !e.trackConn(conn) {
			if e.stopping.Load() {
				conn.Close()
				return
			}
			e.shared.tcpRefused.Add(1)
			conn.Close()
			continue
		}
		e.wg.Add(1)
		go e.serveTCP(conn)
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
func (e *Engine) serveTCP(conn net.Conn) {
	defer e.wg.Done()
	defer e.untrackConn(conn)
	tc := &tcpConn{conn: conn, timeout: e.cfg.TCPWriteTimeout}
	var inflight sync.WaitGroup
	slots := make(chan struct{}, maxPipelined)
	br := bufio.NewReader(conn)
	r := new(request)
	var prefix [2]byte
	var pkt, out []byte
	for {
		if err := conn.SetReadDeadline(time.Now().Add(e.cfg.TCPIdleTimeout)); err != nil || e.stopping.Load() {
			break // checked after setting the deadline, so Shutdown's deadline is never overwritten unnoticed
		}
		if _, err := io.ReadFull(br, prefix[:]); err != nil {
			break
		}
		n := int(binary.BigEndian.Uint16(prefix[:]))
		if cap(pkt) < n {
			pkt = make([]byte, n)
		}
		pkt = pkt[:n]
		if _, err := io.ReadFull(br, pkt); err != nil {
			break
		}
		reply, o := e.serve(pkt, out, r, protoTCP, e.shared, e.nowNanos())
		switch o {
		case replyNow:
			out = reply
			tc.write(reply)
		case needsUpstream:
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

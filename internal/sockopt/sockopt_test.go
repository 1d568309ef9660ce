package sockopt

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// send sends n datagrams to addr, each from a socket of its own, so that
// SO_REUSEPORT's hash spreads them over the group.
func send(t *testing.T, addr string, n int) {
	t.Helper()
	for range n {
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("q")); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

// drain reads what conn has queued; the short deadline only ends the read
// once the queue is empty (the datagrams were sent before).
func drain(t *testing.T, conn net.PacketConn) int {
	t.Helper()
	buf := make([]byte, 16)
	for n := 0; ; n++ {
		if err := conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := conn.ReadFrom(buf); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			return n
		}
	}
}

// TestLeaveReusePortGroup: of two sockets sharing a port, the one that left
// the group still holds what was queued for it, and every later datagram
// goes to the other.
func TestLeaveReusePortGroup(t *testing.T) {
	lc := net.ListenConfig{Control: ReusePort}
	stay, err := lc.ListenPacket(context.Background(), "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stay.Close()
	addr := stay.LocalAddr().String()
	leave, err := lc.ListenPacket(context.Background(), "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer leave.Close()

	const before, after = 100, 100 // under the default receive buffer's datagram count
	send(t, addr, before)
	if err := LeaveReusePortGroup(leave.(*net.UDPConn)); err != nil {
		t.Fatal(err)
	}
	queuedOnLeaver := drain(t, leave)
	queuedOnStayer := drain(t, stay)
	if queuedOnLeaver == 0 || queuedOnLeaver+queuedOnStayer != before {
		t.Fatalf("before leaving: %d + %d datagrams read, want %d with some on the leaving socket", queuedOnLeaver, queuedOnStayer, before)
	}

	send(t, addr, after)
	if got := drain(t, leave); got != 0 {
		t.Errorf("the socket that left got %d new datagrams, want 0", got)
	}
	if got := drain(t, stay); got != after {
		t.Errorf("the socket that stayed got %d of %d new datagrams", got, after)
	}
}

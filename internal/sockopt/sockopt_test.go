package sockopt

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
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

// TestFreeBind: an address the host does not have can be bound with
// FreeBind, over UDP and TCP and both families, and not without it.
// (192.0.2.0/24 and 2001:db8::/32 are documentation ranges, never a host's.)
func TestFreeBind(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{
		{"udp", "192.0.2.77:0"}, {"tcp", "192.0.2.77:0"}, {"udp", "[2001:db8::77]:0"}, {"tcp", "[2001:db8::77]:0"},
	} {
		t.Run(tc.network+" "+tc.addr, func(t *testing.T) {
			if _, err := listen(net.ListenConfig{}, tc.network, tc.addr); err == nil {
				t.Fatal("bound an address the host does not have without FreeBind")
			}
			closer, err := listen(net.ListenConfig{Control: Both(ReusePort, FreeBind)}, tc.network, tc.addr)
			if err != nil {
				if tc.addr[0] == '[' && errors.Is(err, syscall.EAFNOSUPPORT) {
					t.Skip("no IPv6 here")
				}
				t.Fatalf("with FreeBind: %v", err)
			}
			closer.Close()
		})
	}
}

func listen(lc net.ListenConfig, network, addr string) (io.Closer, error) {
	if network == "tcp" {
		return lc.Listen(context.Background(), network, addr)
	}
	return lc.ListenPacket(context.Background(), network, addr)
}

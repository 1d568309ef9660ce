// Package sockopt holds the socket options the long-running parts share.
package sockopt

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// ReusePort is a net.ListenConfig Control function that sets SO_REUSEPORT,
// so that several sockets of this process, or of the next instance during a
// rolling update with surge (hostNetwork: the same node address), share a
// port.
func ReusePort(_, _ string, rc syscall.RawConn) error {
	var sockErr error
	if err := rc.Control(func(fd uintptr) {
		sockErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return sockErr
}

// FreeBind is a net.ListenConfig Control function that sets IP_FREEBIND (or
// IPV6_FREEBIND), so that a socket binds an address the node does not have
// yet. The node cache binds before it adds its listen address: the address
// must never exist without a socket, since a query reaching it then gets a
// port unreachable that the kernel rate-limits, and the rest are dropped.
func FreeBind(network, _ string, rc syscall.RawConn) error {
	level, opt := unix.IPPROTO_IP, unix.IP_FREEBIND
	if network == "udp6" || network == "tcp6" {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_FREEBIND
	}
	var sockErr error
	if err := rc.Control(func(fd uintptr) {
		sockErr = unix.SetsockoptInt(int(fd), level, opt, 1)
	}); err != nil {
		return err
	}
	return sockErr
}

// Both returns a Control function that applies each of fns in turn.
func Both(fns ...func(network, address string, rc syscall.RawConn) error) func(string, string, syscall.RawConn) error {
	return func(network, address string, rc syscall.RawConn) error {
		for _, fn := range fns {
			if err := fn(network, address, rc); err != nil {
				return err
			}
		}
		return nil
	}
}

// LeaveReusePortGroup connects a UDP socket of a SO_REUSEPORT group to its
// own address. The kernel then steers no more datagrams to it (a connected
// UDP socket matches only datagrams from its peer, and it sends none to
// itself): new ones go to the group's other sockets, or, when none is left,
// get ICMP port-unreachable. Datagrams already queued stay readable, and
// sendto with an address still works, so a stopping server can answer what
// it holds without racing new arrivals.
func LeaveReusePortGroup(conn syscall.Conn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) {
		var self unix.Sockaddr
		if self, opErr = unix.Getsockname(int(fd)); opErr == nil {
			opErr = unix.Connect(int(fd), self)
		}
	}); err != nil {
		return err
	}
	return opErr
}

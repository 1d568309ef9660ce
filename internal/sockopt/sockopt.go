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

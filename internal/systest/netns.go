package systest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// RequireRoot skips the test unless it runs as root, which creating network
// namespaces needs; CI runs as root, so these tests run there.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (CI runs as root)")
	}
}

var netnsSeq atomic.Int64

// NewNetns creates a network namespace with a name unique to this process,
// brings lo up, and deletes it (with every interface, address and rule in
// it) at cleanup. role goes into the name, for whoever lists namespaces.
func NewNetns(t testing.TB, role string) string {
	t.Helper()
	name := fmt.Sprintf("ldtest-%s-%d-%d", role, os.Getpid(), netnsSeq.Add(1))
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	NetnsRun(t, name, "ip", "link", "set", "lo", "up")
	return name
}

// NetnsRun runs a command inside the namespace, failing the test when it
// fails; it returns stdout.
func NetnsRun(t testing.TB, ns string, argv ...string) string {
	t.Helper()
	return Run(t, append([]string{"ip", "netns", "exec", ns}, argv...)...)
}

// WriteNetnsFile writes /etc/netns/<ns>/<file>, which `ip netns exec`
// bind-mounts over /etc/<file> for what it runs (resolv.conf, nsswitch.conf):
// the host's own files are never seen by the test's clients.
func WriteNetnsFile(t testing.TB, ns, file, content string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// InNetns runs fn on an OS thread switched into the namespace. Netlink
// sockets opened and processes started by fn live in that namespace. The
// thread is never switched back: it stays locked until its goroutine ends,
// when the runtime discards it, so nothing else ever runs in the namespace
// by accident. fn must report failures with t.Error, not t.Fatal.
func InNetns(t testing.TB, ns string, fn func()) {
	t.Helper()
	done := make(chan error)
	go func() {
		runtime.LockOSThread()
		handle, err := netns.GetFromName(ns)
		if err != nil {
			done <- fmt.Errorf("open netns %s: %w", ns, err)
			return
		}
		defer handle.Close()
		if err := netns.Set(handle); err != nil {
			done <- fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// HTTPGet fetches a path from a server inside the namespace, over a socket
// opened on a thread inside it. A failed connection or request reads as
// status 0 with the error as the body, so pollers can wait for a server.
func HTTPGet(t testing.TB, ns, addr, path string) (code int, body string) {
	t.Helper()
	InNetns(t, ns, func() {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			body = err.Error()
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			body = err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		code, body = resp.StatusCode, string(b)
	})
	return code, body
}

package nodecache

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

// Helpers for tests that need root and network namespaces. Every namespace
// is created with a name unique to this process and deleted in t.Cleanup;
// deleting a namespace removes the interfaces, addresses and rules in it.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (CI runs as root)")
	}
}

var netnsSeq atomic.Int64

// newNetns creates an empty network namespace with lo up and returns its name.
func newNetns(t *testing.T, tag string) string {
	t.Helper()
	name := fmt.Sprintf("ldn-%s-%d-%d", tag, os.Getpid(), netnsSeq.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	nsRun(t, name, "ip", "link", "set", "lo", "up")
	return name
}

// run runs a command and fails the test when it fails; it returns stdout.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var stderr []byte
		if exit, ok := err.(*exec.ExitError); ok {
			stderr = exit.Stderr
		}
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr)
	}
	return string(out)
}

// nsRun runs a command inside the namespace.
func nsRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// inNetns runs fn on an OS thread switched into the namespace. Netlink
// sockets opened and processes started by fn live in that namespace. The
// thread is never switched back: it stays locked until its goroutine ends,
// when the runtime discards it, so nothing else ever runs in the namespace
// by accident. fn must report failures with t.Error, not t.Fatal.
func inNetns(t *testing.T, ns string, fn func()) {
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

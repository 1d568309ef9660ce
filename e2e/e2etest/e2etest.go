// Package e2etest holds what the real-cluster tests share: the opt-in gate and
// the repository they build from. Only tests import it.
package e2etest

import (
	"context"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Start skips the test unless LOCALDNS_E2E=1 and running as root, then returns
// a context that Ctrl-C or SIGTERM cancels (the test's cleanups still tear the
// cluster down) and the repository root, two levels above the test's package.
func Start(t *testing.T) (ctx context.Context, repo string) {
	t.Helper()
	if os.Getenv("LOCALDNS_E2E") != "1" {
		t.Skip("set LOCALDNS_E2E=1 to boot a real single-node cluster")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, containerd, kubelet")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	t.Cleanup(stop)
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return ctx, repo
}

// LogWriter sends what is written to it, a line per write (the cluster's
// progress lines), to the test log.
func LogWriter(t *testing.T) io.Writer { return logWriter{t} }

type logWriter struct{ t *testing.T }

func (l logWriter) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Package systest runs the real localdns binaries in tests: it builds them,
// starts and stops them as processes, polls for a state with a deadline, and
// builds closed network-namespace topologies for them. Only tests import it.
// Everything it creates (temporary directories, processes, namespaces,
// /etc/netns files) is removed through t.Cleanup.
package systest

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BuildBinaries builds each main package into a temporary directory the way
// the Makefile does for the images (static, stripped) and returns the paths
// by base name.
func BuildBinaries(t testing.TB, pkgs ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	paths := map[string]string{}
	for _, pkg := range pkgs {
		out := filepath.Join(dir, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
		cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
		paths[filepath.Base(pkg)] = out
	}
	return paths
}

// Run runs a command, failing the test when it fails; it returns stdout.
func Run(t testing.TB, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, stderr.String())
	}
	return string(out)
}

// WaitFor polls cond until it holds, failing the test after a deadline with
// cond's last description of the state. Polling, never sleeping a guessed
// time, is the synchronisation.
func WaitFor(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last state:\n%s", what, state)
		}
		<-tick.C
	}
}

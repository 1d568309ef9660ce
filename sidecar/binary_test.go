package sidecar

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestBinary runs the real localdns-stub: it serves, `probe` exits 0 against
// it, 1 against nothing or a garbage responder, 2 on a bad command line, and
// SIGTERM drains and exits 0.
func TestBinary(t *testing.T) {
	bin := buildBinaries(t, "github.com/localdns/localdns/cmd/localdns-stub")["localdns-stub"]
	node := startFake(t, "node cache", nodeCacheAnswer)
	listen := unusedAddr(t)
	stub := startProcess(t, "localdns-stub", bin, "--listen", listen.String(), "--node-cache", node.addr.String(),
		"--cluster-domain", probeTestDomain)

	probe := func(args ...string) (int, string) {
		out, err := exec.Command(bin, append([]string{"probe"}, args...)...).CombinedOutput()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("run probe: %v", err)
		}
		if exit != nil {
			return exit.ExitCode(), string(out)
		}
		return 0, string(out)
	}
	waitUntil(t, "the stub to answer its probe", func() (bool, string) {
		code, out := probe("--listen", listen.String())
		return code == 0, out + stub.logs()
	})

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"stub up", []string{"--listen", listen.String()}, 0, "localdns-stub probe: ok: " + listen.String() + " answered cluster.local. SOA: NOERROR"},
		{"nothing listening", []string{"--listen", unusedAddr(t).String()}, 1, "connection refused"},
		{"garbage responder", []string{"--listen", responder(t, func([]byte) []byte { return []byte{0xde, 0xad} }).String()}, 1, "malformed reply"},
		{"bad flag", []string{"--listen", "localhost:53"}, 2, "not an ip"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out := probe(tc.args...)
			if code != tc.wantCode || !strings.Contains(out, tc.wantOut) {
				t.Errorf("probe %q: exit %d, output %q; want exit %d and %q", tc.args, code, out, tc.wantCode, tc.wantOut)
			}
		})
	}

	if code := stub.terminate(t); code != 0 {
		t.Fatalf("exit status %d after SIGTERM, want 0\n%s", code, stub.logs())
	}
	for _, want := range []string{`msg="serving DNS"`, `msg="no --fallback`, `msg="stopping: draining in-flight queries"`, "msg=stopped"} {
		if !strings.Contains(stub.logs(), want) {
			t.Errorf("log lacks %s\n%s", want, stub.logs())
		}
	}
}

// buildBinaries builds each main package into a temporary directory the
// way the Makefile does for the images (static, stripped) and returns the
// paths by base name.
func buildBinaries(t testing.TB, pkgs ...string) map[string]string {
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

// process is a started command whose output is kept for failure messages;
// it is killed at cleanup if still running.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startProcess(t testing.TB, name string, argv ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(argv[0], argv[1:]...), out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *process) logs() string { return "\n" + p.name + " output:\n" + p.out.String() }

// signal sends sig and returns the exit status once the process is gone.
func (p *process) signal(t testing.TB, sig syscall.Signal) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s still running 30s after %v%s", p.name, sig, p.logs())
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *process) terminate(t testing.TB) int { return p.signal(t, syscall.SIGTERM) }

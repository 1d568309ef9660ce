package systest

import (
	"bytes"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a started command whose output is kept for failure messages;
// it is killed at cleanup if still running.
type Process struct {
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

// Start starts argv with stdout and stderr collected; name labels it in messages.
func Start(t testing.TB, name string, argv ...string) *Process {
	t.Helper()
	p := &Process{name: name, cmd: exec.Command(argv[0], argv[1:]...), out: &lockedBuffer{}, done: make(chan struct{})}
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

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Logs is the output so far, labelled, for failure messages.
func (p *Process) Logs() string { return "\n" + p.name + " output:\n" + p.out.String() }

// Signal sends sig and returns the exit status once the process is gone;
// the test fails if it is still running 30 s later. `ip netns exec` execs
// the command, so the signal reaches the program itself.
func (p *Process) Signal(t testing.TB, sig syscall.Signal) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s still running 30s after %v%s", p.name, sig, p.Logs())
	}
	return p.cmd.ProcessState.ExitCode()
}

// Terminate sends SIGTERM and returns the exit status.
func (p *Process) Terminate(t testing.TB) int { return p.Signal(t, syscall.SIGTERM) }

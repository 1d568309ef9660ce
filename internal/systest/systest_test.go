package systest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	if got := Run(t, "sh", "-c", "echo out; echo err >&2"); got != "out\n" {
		t.Errorf("Run = %q, want stdout only", got)
	}
}

func TestProcess(t *testing.T) {
	tests := []struct {
		name     string
		script   string
		wantCode int
	}{
		{"exits 0 on SIGTERM", `trap 'echo draining; exit 0' TERM; echo started; while :; do sleep 0.01; done`, 0},
		{"exit status reported", `trap 'exit 3' TERM; echo started; while :; do sleep 0.01; done`, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := Start(t, "script", "sh", "-c", tc.script)
			WaitFor(t, "the script to start", func() (bool, string) {
				return strings.Contains(p.Logs(), "started"), p.Logs()
			})
			if code := p.Terminate(t); code != tc.wantCode {
				t.Errorf("exit status %d, want %d%s", code, tc.wantCode, p.Logs())
			}
		})
	}
}

// TestCleanup: what a test made is gone once its cleanup ran: a process
// still running is killed; as root, the namespace and its /etc/netns files
// are removed.
func TestCleanup(t *testing.T) {
	var pid int
	var ns string
	t.Run("makes them", func(t *testing.T) {
		pid = Start(t, "sleeper", "sleep", "600").Pid()
		if os.Geteuid() != 0 {
			return
		}
		ns = NewNetns(t, "cleanup")
		WriteNetnsFile(t, ns, "resolv.conf", "nameserver 127.0.0.1\n")
		if got := NetnsRun(t, ns, "cat", "/etc/resolv.conf"); got != "nameserver 127.0.0.1\n" {
			t.Errorf("resolv.conf inside the namespace = %q", got)
		}
	})
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); !os.IsNotExist(err) {
		t.Errorf("process %d still exists after its test's cleanup (stat: %v)", pid, err)
	}
	if ns == "" {
		t.Skip("needs root for the namespace part (CI runs as root)")
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), ns) {
		t.Errorf("namespace %s still listed after cleanup:\n%s", ns, out)
	}
	if _, err := os.Stat(filepath.Join("/etc/netns", ns)); !os.IsNotExist(err) {
		t.Errorf("/etc/netns/%s still exists after cleanup (stat: %v)", ns, err)
	}
}

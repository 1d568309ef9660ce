package sidecar

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/localdns/localdns/internal/systest"
)

// TestBinary runs the real localdns-stub: it serves, `probe` exits 0 against
// it, 1 against nothing or a garbage responder, 2 on a bad command line, and
// SIGTERM drains and exits 0.
func TestBinary(t *testing.T) {
	bin := systest.BuildBinaries(t, "github.com/localdns/localdns/cmd/localdns-stub")["localdns-stub"]
	node := startFake(t, ipv4, "node cache", nodeCacheAnswer)
	listen := unusedAddr(t)
	stub := systest.Start(t, "localdns-stub", bin, "--listen", listen.String(), "--node-cache", node.Addr().String(),
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
	systest.WaitFor(t, "the stub to answer its probe", func() (bool, string) {
		code, out := probe("--listen", listen.String())
		return code == 0, out + stub.Logs()
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

	if code := stub.Terminate(t); code != 0 {
		t.Fatalf("exit status %d after SIGTERM, want 0\n%s", code, stub.Logs())
	}
	for _, want := range []string{`msg="serving DNS"`, `msg="no --fallback`, `msg="stopping: draining in-flight queries"`, "msg=stopped"} {
		if !strings.Contains(stub.Logs(), want) {
			t.Errorf("log lacks %s\n%s", want, stub.Logs())
		}
	}
}

package forward

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/systest"
	"github.com/localdns/localdns/internal/testutil"
)

// deadPeerChildEnv marks the copy of the test binary that runs inside the
// test's own network namespace; its value is the test to run there.
const deadPeerChildEnv = "LOCALDNS_FORWARD_DEADPEER_NETNS"

// inOwnNetns runs the calling test again in a copy of the test binary inside
// a network namespace of its own, where it may change iptables, and reports
// whether this is that copy (then the test goes on; else it returns).
func inOwnNetns(t *testing.T) bool {
	if os.Getenv(deadPeerChildEnv) == t.Name() {
		return true
	}
	systest.RequireRoot(t)
	ns := systest.NewNetns(t, "deadpeer")
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), deadPeerChildEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	t.Logf("in network namespace %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("test in the network namespace: %v", err)
	}
	return false
}

// TestDeadPeerMarkedDown: a server whose packets vanish (a deleted replica
// behind a Service address, a node gone) is told from a slow one by the
// kernel: the query on its pooled connection is never acknowledged
// (TCP_USER_TIMEOUT), the probe started when the server answered nothing for
// SuspectAfter gets no answer either, and the server is marked down by those
// dead signals with the defaults' timings; the query fails at that moment
// rather than at its own timeout. It runs
// in a network namespace of its own, where an iptables rule drops what is sent
// to the server.
func TestDeadPeerMarkedDown(t *testing.T) {
	t.Parallel()
	if !inOwnNetns(t) {
		return
	}

	up := startFake(t)
	f, reg := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: 5 * time.Second}}}}})
	u := upstreamOf(t, f, up.addr)
	mustAnswer(t, f, "pooled.example.") // leaves an idle connection in the pool

	host, port := up.Addr().Addr().String(), up.Addr().Port()
	rule := []string{"INPUT", "-p", "tcp", "-d", host, "--dport", strconv.Itoa(int(port)), "-j", "DROP"}
	systest.Run(t, append([]string{"iptables", "-I"}, rule...)...)

	start := time.Now()
	_, err := f.Exchange(context.Background(), query("gone.example."))
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("Exchange with every packet to the server dropped succeeded")
	}
	t.Logf("query failed after %v: %v", elapsed.Round(time.Millisecond), err)
	if !u.health.isDown() {
		t.Errorf("server not marked down by the query's dead signals (%d counted)", u.health.fails.Load())
	}
	if got := errorCount(t, reg, up.addr, reasonUnreachable); got < 1 {
		t.Errorf("unreachable errors %v, want at least 1 (the unacknowledged query)", got)
	}
	if r := classify(err); r != reasonUnreachable {
		t.Errorf("query failed for reason %s, want %s: the kernel told it was dead, not slow", r, reasonUnreachable)
	}

	systest.Run(t, append([]string{"iptables", "-D"}, rule...)...)
	testutil.Eventually(t, "a probe to mark the server up again", func() bool { return !u.health.isDown() })
	mustAnswer(t, f, "back.example.")
}

// TestHalfTheReplicasRefuse: behind one Service address, a replica is gone
// and refuses its connections (a reset to 30% of the dials, at random);
// the other answers. Sequential queries, each on a new connection, are all
// answered and the server is never marked down: one attempt strikes once at
// most, however many of its dials are refused, and a strike counts only if the
// server answered nothing since the attempt began.
func TestHalfTheReplicasRefuse(t *testing.T) {
	t.Parallel()
	if !inOwnNetns(t) {
		return
	}
	up := startFake(t)
	f, reg := newTestForwarder(t, Config{
		Zones:         []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: 5 * time.Second}}}},
		MaxConnAge:    time.Nanosecond, // every query dials anew, as after each replica change
		ProbeInterval: 5 * time.Millisecond,
	})
	host, port := up.Addr().Addr().String(), up.Addr().Port()
	systest.Run(t, "iptables", "-I", "INPUT", "-p", "tcp", "--syn", "-d", host, "--dport", strconv.Itoa(int(port)),
		"-m", "statistic", "--mode", "random", "--probability", "0.3", "-j", "REJECT", "--reject-with", "tcp-reset")
	for i := range 40 {
		if _, err := f.Exchange(context.Background(), query(fmt.Sprintf("q%d.example.", i))); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	refused := errorCount(t, reg, up.addr, reasonRefused)
	t.Logf("40 queries answered; %v dials refused", refused)
	if refused == 0 {
		t.Error("no dial was refused: the rule did not apply")
	}
	if got := testutil.MetricValue(t, reg, "test_upstream_healthy", nil); got != 1 {
		t.Errorf("upstream_healthy %v at the end, want 1", got)
	}
}

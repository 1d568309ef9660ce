package e2etest

import (
	"strings"
	"testing"
)

// The kept message names the test and the caller's line, not this package's.
func TestKeepNamesTestAndCaller(t *testing.T) {
	failures.msgs = nil
	t.Cleanup(func() { failures.msgs = nil })
	keepFromHere(t)
	if len(failures.msgs) != 1 {
		t.Fatalf("kept %d messages, want 1", len(failures.msgs))
	}
	got := failures.msgs[0]
	if !strings.HasPrefix(got, "TestKeepNamesTestAndCaller (failures_test.go:") || !strings.HasSuffix(got, "): answer 42") {
		t.Errorf("kept %q", got)
	}
}

// keepFromHere calls keep as Errorf does: two frames below the caller.
func keepFromHere(t *testing.T) { func() { keep(t, "answer 42") }() }

// stateTB is a testing.TB whose Failed reports failed, so that Explainf can
// be tried on a failed test without failing this one.
type stateTB struct {
	testing.TB
	failed bool
}

func (s stateTB) Failed() bool { return s.failed }

// A post-mortem is kept for the summary only once its test has failed.
func TestExplainfKeepsOnlyAfterAFailure(t *testing.T) {
	for _, tc := range []struct {
		failed bool
		want   int
	}{{false, 0}, {true, 1}} {
		failures.msgs = nil
		Explainf(stateTB{TB: t, failed: tc.failed}, "node cache waited %s", "2s")
		if len(failures.msgs) != tc.want {
			t.Errorf("failed=%v: kept %q, want %d message(s)", tc.failed, failures.msgs, tc.want)
		}
		if tc.want == 1 && !strings.HasSuffix(failures.msgs[0], "): why: node cache waited 2s") {
			t.Errorf("kept %q", failures.msgs[0])
		}
	}
	failures.msgs = nil
}

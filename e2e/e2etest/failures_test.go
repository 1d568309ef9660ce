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

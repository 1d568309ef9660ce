package nodecache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestReadyFileLifecycle: the file appears only once ready reports nil,
// holds the pid, and checkReady follows it; a start removes a predecessor's.
func TestReadyFileLifecycle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ready")
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil { // a restarted container's predecessor
		t.Fatal(err)
	}
	if err := removeReadyFile(path); err != nil {
		t.Fatal(err)
	}
	if err := checkReady(path); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("checkReady with no file: %v, want not ready", err)
	}

	calls := 0
	ready := func() error { // not ready for the first three checks
		if calls++; calls <= 3 {
			return errors.New("not yet")
		}
		return nil
	}
	writeReadyFileWhenReady(context.Background(), path, ready, discard())
	if calls != 4 {
		t.Errorf("ready checked %d times, want 4 (until it reported nil)", calls)
	}
	if err := checkReady(path); err != nil {
		t.Fatalf("checkReady after ready: %v", err)
	}
	if got, _ := os.ReadFile(path); strings.TrimSpace(string(got)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("ready file holds %q, want this pid", got)
	}
	if err := removeReadyFile(path); err != nil {
		t.Fatal(err)
	}
	if err := removeReadyFile(path); err != nil {
		t.Errorf("removing an absent ready file: %v", err)
	}
	if err := removeReadyFile(""); err != nil {
		t.Errorf("no ready file configured: %v", err)
	}

	// Stopped before ever being ready: no file.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	writeReadyFileWhenReady(ctx, path, func() error { return errors.New("never") }, discard())
	if err := checkReady(path); err == nil {
		t.Error("a file was written although the instance never got ready")
	}
}

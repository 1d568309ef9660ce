package nodecache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"
)

// readyPoll is how often a starting instance checks whether it is ready;
// the kubelet probes every few seconds, so finer would buy nothing.
const readyPoll = 200 * time.Millisecond

// writeReadyFileWhenReady waits until ready reports nil, then creates path holding
// this process's pid. It gives up when ctx ends.
func writeReadyFileWhenReady(ctx context.Context, path string, ready func() error, logger *slog.Logger) {
	if !untilReady(ctx, ready) {
		return
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		logger.Error("cannot write the ready file: the readiness probe will fail", "path", path, "err", err)
		return
	}
	logger.Info("ready", "ready_file", path)
}

// untilReady polls ready until it reports nil (true) or ctx ends (false).
func untilReady(ctx context.Context, ready func() error) bool {
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	for ready() != nil {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
	return true
}

// removeReadyFile removes path if it exists; an empty path is no file.
func removeReadyFile(path string) error {
	if path == "" {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove ready file: %w", err)
	}
	return nil
}

// checkReady is `localdns-nodecache ready`: nil when path exists.
func checkReady(path string) error {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("not ready: %s does not exist (this container's node cache is not serving yet, or is stopping)", path)
		}
		return fmt.Errorf("not ready: %w", err)
	}
	return nil
}

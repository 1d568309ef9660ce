package localdns

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// RunQueueWait is how long the threads of process pid have waited, in
// total, for a CPU while runnable (the second field of each thread's
// /proc/<pid>/task/<tid>/schedstat). A node cache that waits for a CPU
// answers late however well it works: on a starved node this is where a
// slow lookup's time went.
func RunQueueWait(pid int) (time.Duration, error) {
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(stats) == 0 {
		return 0, fmt.Errorf("schedstat of process %d: none found (%v)", pid, err)
	}
	var total time.Duration
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			return 0, fmt.Errorf("%s: %q: want 3 fields", path, b)
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// RunQueueWatch samples a process's run-queue wait every interval until
// Stop, and reports the worst intervals: when a node cache waited longest
// for a CPU, to set beside the times of slow lookups.
type RunQueueWatch struct {
	pid      int
	interval time.Duration
	stop     chan struct{}
	done     chan struct{} // closed by run: Stop reads samples and err after it

	samples []RunQueueSample
	err     error
}

// RunQueueSample is the wait accrued in the interval ending At.
type RunQueueSample struct {
	At   time.Time
	Wait time.Duration
}

// WatchRunQueue starts sampling process pid.
func WatchRunQueue(pid int, interval time.Duration) *RunQueueWatch {
	w := &RunQueueWatch{pid: pid, interval: interval, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *RunQueueWatch) run() {
	defer close(w.done)
	last, err := RunQueueWait(w.pid)
	if err != nil {
		w.err = err
		return
	}
	tick := time.NewTicker(w.interval)
	defer tick.Stop()
	for {
		select {
		case <-w.stop:
			return
		case now := <-tick.C:
			cur, err := RunQueueWait(w.pid)
			if err != nil {
				w.err = err
				return
			}
			w.samples = append(w.samples, RunQueueSample{At: now, Wait: cur - last})
			last = cur
		}
	}
}

// Done is closed once the sampling has ended: at Stop, or when the
// process is gone.
func (w *RunQueueWatch) Done() <-chan struct{} { return w.done }

// Stop ends the sampling and returns the n intervals with the longest
// waits, longest first, and the total wait.
func (w *RunQueueWatch) Stop(n int) (worst []RunQueueSample, total time.Duration, err error) {
	close(w.stop)
	<-w.done
	for _, s := range w.samples {
		total += s.Wait
	}
	worst = slices.Clone(w.samples)
	slices.SortFunc(worst, func(a, b RunQueueSample) int { return int(b.Wait - a.Wait) })
	return worst[:min(n, len(worst))], total, w.err
}

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

// RunQueueWaits are how long each thread of process pid has waited, in
// all, for a CPU while runnable (by thread ID; the second field of
// /proc/<pid>/task/<tid>/schedstat). The kernel adds a wait when it ends,
// as the thread gets a CPU: a thread kept off for a second shows it at
// once. A node cache that waits for a CPU answers late however well it
// works, and a client that does counts the wait as lookup time: on a
// starved node this is where a slow lookup's time went.
func RunQueueWaits(pid int) (map[int]time.Duration, error) {
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(stats) == 0 {
		return nil, fmt.Errorf("schedstat of process %d: none found (%v)", pid, err)
	}
	waits := make(map[int]time.Duration, len(stats))
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			return nil, fmt.Errorf("%s: %q: want 3 fields", path, b)
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		tid, err := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		waits[tid] = time.Duration(ns)
	}
	return waits, nil
}

// waitsBetween is what the threads of cur waited since prev: in all, and
// the one thread that waited longest. A thread new since prev waited all
// its wait in between; one gone since is left out.
func waitsBetween(prev, cur map[int]time.Duration) (total, longest time.Duration) {
	for tid, w := range cur {
		d := w - prev[tid]
		total += d
		longest = max(longest, d)
	}
	return total, longest
}

// RunQueueWatch samples a process's run-queue waits every interval until
// Stop or the process's exit, and reports the worst intervals: when a
// process waited longest for a CPU, to set beside the times of slow lookups.
type RunQueueWatch struct {
	pid      int
	interval time.Duration
	stop     chan struct{}
	done     chan struct{} // closed by run: Stop reads samples and err after it

	samples []RunQueueSample
	err     error
}

// RunQueueSample is what the process's threads waited in the interval
// ending At: in all, and the longest of one thread.
type RunQueueSample struct {
	At            time.Time
	Wait, Longest time.Duration
}

// WatchRunQueue starts sampling process pid.
func WatchRunQueue(pid int, interval time.Duration) *RunQueueWatch {
	w := &RunQueueWatch{pid: pid, interval: interval, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *RunQueueWatch) run() {
	defer close(w.done)
	last, err := RunQueueWaits(w.pid)
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
			cur, err := RunQueueWaits(w.pid)
			if err != nil {
				w.err = err
				return
			}
			total, longest := waitsBetween(last, cur)
			w.samples = append(w.samples, RunQueueSample{At: now, Wait: total, Longest: longest})
			last = cur
		}
	}
}

// Done is closed once the sampling has ended: at Stop, or when the
// process is gone.
func (w *RunQueueWatch) Done() <-chan struct{} { return w.done }

// Stop ends the sampling and returns the n intervals in which one thread
// waited longest, longest first, and the total wait of all threads.
func (w *RunQueueWatch) Stop(n int) (worst []RunQueueSample, total time.Duration, err error) {
	close(w.stop)
	<-w.done
	for _, s := range w.samples {
		total += s.Wait
	}
	worst = slices.Clone(w.samples)
	slices.SortFunc(worst, func(a, b RunQueueSample) int { return int(b.Longest - a.Longest) })
	return worst[:min(n, len(worst))], total, w.err
}

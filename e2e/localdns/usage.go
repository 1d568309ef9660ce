package localdns

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of /proc/PID/stat's CPU times: USER_HZ, 100 on every
// Linux architecture Kubernetes runs on.
const userHZ = 100

// Usage is what one process used between two samples of it.
type Usage struct {
	PID  int
	CPU  time.Duration // user + system time between the first and last sample
	Wall time.Duration // time between the first and last sample
	// PeakRSS is the process's resident-set high-water mark (VmHWM), bytes.
	PeakRSS int64
}

// CPUShare is CPU over Wall: 1 is one core busy all the time.
func (u Usage) CPUShare() float64 {
	if u.Wall <= 0 {
		return 0
	}
	return u.CPU.Seconds() / u.Wall.Seconds()
}

func (u Usage) String() string {
	return fmt.Sprintf("pid %d: %.1f%% of a core over %s (%s CPU), peak RSS %.1f MiB",
		u.PID, 100*u.CPUShare(), u.Wall.Round(100*time.Millisecond), u.CPU.Round(10*time.Millisecond), float64(u.PeakRSS)/(1<<20))
}

// PIDsByComm lists the processes whose command name (15 bytes kept) is comm.
func PIDsByComm(comm string) ([]int, error) {
	procs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range procs {
		got, err := os.ReadFile(filepath.Join(p, "comm"))
		if err != nil || strings.TrimSpace(string(got)) != comm {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(p)); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// WatchNewProcess waits for a process named comm that is not in before,
// then samples it every interval until it exits or ctx ends.
func WatchNewProcess(ctx context.Context, comm string, before []int, interval time.Duration) (Usage, error) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	pid := 0
	for pid == 0 {
		pids, err := PIDsByComm(comm)
		if err != nil {
			return Usage{}, err
		}
		for _, p := range pids {
			if !slices.Contains(before, p) {
				pid = p
			}
		}
		if pid != 0 {
			break
		}
		select {
		case <-ctx.Done():
			return Usage{}, fmt.Errorf("no new %s process: %w", comm, ctx.Err())
		case <-tick.C:
		}
	}
	u := Usage{PID: pid}
	var firstCPU time.Duration
	var first time.Time
	for {
		cpu, hwm, err := readProc(pid)
		if err != nil { // gone: the last sample stands
			if first.IsZero() {
				return u, fmt.Errorf("%s (pid %d) exited before a sample: %w", comm, pid, err)
			}
			return u, nil
		}
		now := time.Now()
		if first.IsZero() {
			first, firstCPU = now, cpu
		}
		u.CPU, u.Wall, u.PeakRSS = cpu-firstCPU, now.Sub(first), hwm
		select {
		case <-ctx.Done():
			return u, nil
		case <-tick.C:
		}
	}
}

// CPUTime is the CPU time process pid has used (user and system, all
// threads), and its resident-set high-water mark (VmHWM, bytes).
func CPUTime(pid int) (cpu time.Duration, peakRSS int64, err error) {
	return readProc(pid)
}

// readProc returns a process's user+system time and VmHWM.
func readProc(pid int) (cpu time.Duration, hwm int64, err error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	return parseProc(string(stat), string(status))
}

// parseProc reads utime and stime (fields 14 and 15; the command name in
// parentheses may hold spaces) and VmHWM (kB).
func parseProc(stat, status string) (cpu time.Duration, hwm int64, err error) {
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, 0, fmt.Errorf("stat %q: no command name", stat)
	}
	f := strings.Fields(stat[end+1:]) // f[0] is field 3, the state
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("stat: %d fields after the name, want >= 13", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("stat cpu time %q: %w", s, err)
		}
		ticks += v
	}
	for _, line := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("status VmHWM %q: %w", rest, err)
			}
			return time.Duration(ticks) * time.Second / userHZ, kb << 10, nil
		}
	}
	return 0, 0, fmt.Errorf("status: no VmHWM")
}

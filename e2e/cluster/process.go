package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// daemonRecord identifies a started process for a later stop, also from
// another process (`cluster down`) or after a crash: the start time guards
// against a reused pid.
type daemonRecord struct {
	seq       int
	name      string
	pid       int
	startTime string
}

// startDaemon starts argv in the node's network namespace with its output
// in <logs>/<name>.log. nsenter execs argv, so the recorded pid is argv's
// own. `ip netns exec` is not used: it remounts /sys and hides the cgroup
// mounts from the kubelet and runc.
//
// The process gets its own session, so a Ctrl-C on the terminal reaches only
// the harness, which then stops everything in order.
func (c *Cluster) startDaemon(name string, argv ...string) error {
	argv = append([]string{"/usr/bin/nsenter", "--net=" + c.netnsPath(), "--"}, argv...)
	logf, err := os.OpenFile(c.logPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log of %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	// Reap it when it exits, so a stop sees it gone rather than a zombie.
	go func() { _ = cmd.Wait() }()
	start, err := procStartTime(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("record %s: %w", name, err)
	}
	if err := c.joinDaemonsCgroup(name, cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("start %s: %w", name, err)
	}
	c.seq++
	rec := fmt.Sprintf("%d %s %d %s\n", c.seq, name, cmd.Process.Pid, start)
	if err := os.WriteFile(filepath.Join(c.dir("pids"), fmt.Sprintf("%02d-%s", c.seq, name)), []byte(rec), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("record %s: %w", name, err)
	}
	return nil
}

// KillDaemons SIGKILLs every daemon of the cluster and leaves the rest —
// containers, mounts, namespaces, files — as a crash would: a drill for the
// cleanup that the next Up (or Down) of the same name runs.
func (c *Cluster) KillDaemons() error {
	recs, err := readDaemons(c.dir("pids"))
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		if r.alive() {
			if err := syscall.Kill(r.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("kill %s (pid %d): %w", r.name, r.pid, err))
			}
		}
	}
	return errors.Join(errs...)
}

// readDaemons returns the recorded daemons of a run directory, last started first.
func readDaemons(pidDir string) ([]daemonRecord, error) {
	entries, err := os.ReadDir(pidDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pid records: %w", err)
	}
	var recs []daemonRecord
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(pidDir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read pid record: %w", err)
		}
		var r daemonRecord
		if _, err := fmt.Sscanf(string(b), "%d %s %d %s", &r.seq, &r.name, &r.pid, &r.startTime); err != nil {
			return nil, fmt.Errorf("parse pid record %s: %w", e.Name(), err)
		}
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].seq > recs[j].seq })
	return recs, nil
}

// alive reports whether the recorded process still runs (and is the same one).
func (r daemonRecord) alive() bool {
	start, err := procStartTime(r.pid)
	return err == nil && start == r.startTime
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs.
func (r daemonRecord) stop(grace time.Duration) error {
	if !r.alive() {
		return nil
	}
	if err := syscall.Kill(r.pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %s (pid %d): %w", r.name, r.pid, err)
	}
	if waitGone(r.alive, grace) {
		return nil
	}
	if err := syscall.Kill(r.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s (pid %d): %w", r.name, r.pid, err)
	}
	if !waitGone(r.alive, 5*time.Second) {
		return fmt.Errorf("%s (pid %d) survived SIGKILL", r.name, r.pid)
	}
	return nil
}

// waitGone polls alive until it turns false or d passes. Polling is the only
// way to wait for a process that is not our child.
func waitGone(alive func() bool, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for alive() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// procStartTime reads the start time (field 22 of /proc/<pid>/stat) of a
// live process; a zombie counts as gone.
func procStartTime(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", err
	}
	// The command name (field 2) may hold spaces; fields after it don't.
	s := string(b)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[end+1:])
	if len(fields) < 20 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	if fields[0] == "Z" || fields[0] == "X" {
		return "", fmt.Errorf("pid %d is a zombie", pid)
	}
	return fields[19], nil
}

// pidsInNetns lists the processes whose network namespace is the one bound
// at nsPath: the node's daemons, containerd shims, container processes.
func pidsInNetns(nsPath string) ([]int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat(nsPath, &want); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name()+"/ns/net", &st) != nil {
			continue
		}
		if st.Dev == want.Dev && st.Ino == want.Ino {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killNetns SIGKILLs every process in the namespace at nsPath until none is left.
func killNetns(nsPath string) error {
	for range 20 {
		pids, err := pidsInNetns(nsPath)
		if errors.Is(err, os.ErrNotExist) || len(pids) == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("list processes in %s: %w", nsPath, err)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("processes keep running in %s", nsPath)
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	// Reverse mount order unmounts children before parents, and the
	// latest of stacked mounts first.
	for i, j := 0, len(mounts)-1; i < j; i, j = i+1, j-1 {
		mounts[i], mounts[j] = mounts[j], mounts[i]
	}
	return mounts, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountAll detaches every mount at or below dir.
func unmountAll(dir string) error {
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, mp := range mounts {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

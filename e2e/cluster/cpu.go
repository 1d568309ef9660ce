package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
)

// The node's CPU is shared as on a real node. There the kubelet gives the
// pods' cgroup (kubepods) cpu.shares of the node's allocatable CPU, 1024 a
// core, the node's daemons share system.slice (1024), and the control
// plane runs on other machines. Here everything shares one machine, and
// the kubelet runs with cgroupsPerQOS off: containerd's k8s.io cgroup,
// the parent of every container, would weigh 1024 while each thread of
// etcd, the API server and the other daemons weighs 1024 of its own at the
// root, so a busy control plane starves every pod — the node cache among
// them, and its clients' lookups take seconds for reasons no worker node
// has. So the daemons share one cgroup (1024), and k8s.io gets 1024 a
// core. Only the cgroup v1 cpu controller is handled; elsewhere nothing
// changes and Up says so.
const cpuCgroupRoot = "/sys/fs/cgroup/cpu"

// daemonsCgroup is the cpu cgroup of this cluster's daemons.
func (c *Cluster) daemonsCgroup() string {
	return filepath.Join(cpuCgroupRoot, c.cfg.Name+"-daemons")
}

// shareCPULikeANode makes the daemons' cgroup and weighs k8s.io, before
// containerd starts: an error means the machine has no cgroup v1 cpu
// controller (startDaemon then leaves the daemons where they are).
func (c *Cluster) shareCPULikeANode() error {
	if _, err := os.Stat(filepath.Join(cpuCgroupRoot, "cpu.shares")); err != nil {
		return fmt.Errorf("no cgroup v1 cpu controller: %w", err)
	}
	pods := filepath.Join(cpuCgroupRoot, "k8s.io")
	for dir, shares := range map[string]int{c.daemonsCgroup(): 1024, pods: 1024 * runtime.NumCPU()} {
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("cpu cgroup: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cpu.shares"), []byte(strconv.Itoa(shares)), 0o644); err != nil {
			return fmt.Errorf("cpu cgroup: %w", err)
		}
	}
	return nil
}

// upstreamDaemon is the fake upstream resolver: it stands for the
// resolvers kube-dns forwards to, which run off the node, so it stays out
// of the node's daemons' share.
const upstreamDaemon = "upstream-dns"

// joinDaemonsCgroup moves a started daemon (all its threads, and the
// children it starts later) into the daemons' cgroup, when there is one.
func (c *Cluster) joinDaemonsCgroup(name string, pid int) error {
	if name == upstreamDaemon {
		return nil
	}
	procs := filepath.Join(c.daemonsCgroup(), "cgroup.procs")
	if _, err := os.Stat(procs); err != nil {
		return nil
	}
	if err := os.WriteFile(procs, []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("move pid %d to %s: %w", pid, c.daemonsCgroup(), err)
	}
	return nil
}

// removeDaemonsCgroup removes the daemons' cgroup once nothing is left in
// it (rmdir fails on a cgroup in use, so nothing running is touched).
func (c *Cluster) removeDaemonsCgroup() {
	_ = syscall.Rmdir(c.daemonsCgroup())
}

package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Interfaces inside the node namespace. A veth pair, both ends inside,
// gives the node bridge a port and so a carrier, so routes through it (the
// Service CIDR) are usable; this kernel has no dummy interfaces.
const (
	nodeBridge = "node0"
	nodePort   = "node0-port"
	nodePeer   = "node0-peer"
)

// run runs a short command and returns its error with its output.
func run(argv ...string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// createNode makes the node namespace: loopback, the node bridge with the
// node IP and the fake upstream's address of each family, the Service CIDRs
// routed on it, and no default route — nothing inside can reach the
// machine's networks.
func (c *Cluster) createNode() error {
	ns := c.cfg.Name
	nsenter := []string{"/usr/bin/nsenter", "--net=" + c.netnsPath(), "--"}
	steps := [][]string{
		{"ip", "netns", "add", ns},
		// Forwarding between pods, and bridged traffic through iptables so
		// a Service reply on the same bridge is un-DNATed. No duplicate
		// address detection: the node is alone on its links, and DAD would
		// leave new IPv6 addresses (the CNI bridge's gateway) unusable for
		// their first second or two. Set before any interface exists, which
		// takes "default" from then on.
		append(nsenter, "sysctl", "-q", "-w",
			"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
			"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
			"net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1"),
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "link", "add", nodeBridge, "type", "bridge"},
		{"ip", "-n", ns, "link", "add", nodePort, "type", "veth", "peer", "name", nodePeer},
		{"ip", "-n", ns, "link", "set", nodePort, "master", nodeBridge},
	}
	for _, f := range c.families {
		steps = append(steps,
			[]string{"ip", "-n", ns, "addr", "add", fmt.Sprintf("%s/%d", f.NodeIP, f.NodePrefix.Bits()), "dev", nodeBridge, "nodad"},
			[]string{"ip", "-n", ns, "addr", "add", fmt.Sprintf("%s/%d", f.UpstreamIP, f.UpstreamIP.BitLen()), "dev", nodeBridge, "nodad"})
	}
	steps = append(steps,
		[]string{"ip", "-n", ns, "link", "set", nodePort, "up"},
		[]string{"ip", "-n", ns, "link", "set", nodePeer, "up"},
		[]string{"ip", "-n", ns, "link", "set", nodeBridge, "up"})
	for _, f := range c.families {
		steps = append(steps, []string{"ip", "-n", ns, "route", "add", f.ServiceCIDR.String(), "dev", nodeBridge, "src", f.NodeIP.String()})
	}
	for _, argv := range steps {
		if err := run(argv...); err != nil {
			return err
		}
	}
	return nil
}

// removeNode deletes the node namespace, and with it its interfaces,
// routes and iptables/nftables state.
func (c *Cluster) removeNode() error {
	if _, err := os.Stat(c.netnsPath()); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return run("ip", "netns", "delete", c.cfg.Name)
}

// leftoverContainer is what a container the node's containerd still has
// a bundle for holds outside the run directory.
type leftoverContainer struct {
	netns  string // a pod's namespace under /var/run/netns, or "" when it joins another's
	cgroup string // relative to each cgroup hierarchy's root
}

// leftoverContainers reads the OCI bundles in containerd's state directory.
// containerd 1.6 makes the pods' network namespaces under /var/run/netns
// (cni-<uuid>, not configurable), so a crashed run's are found through
// the bundles that name them, never by their shared prefix.
func (c *Cluster) leftoverContainers() ([]leftoverContainer, error) {
	specs, err := filepath.Glob(filepath.Join(c.dir("containerd"), "state", "io.containerd.runtime.v2.task", "*", "*", "config.json"))
	if err != nil {
		return nil, err
	}
	var found []leftoverContainer
	for _, path := range specs {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read bundle: %w", err)
		}
		var spec struct {
			Linux struct {
				CgroupsPath string `json:"cgroupsPath"`
				Namespaces  []struct{ Type, Path string }
			}
		}
		if err := json.Unmarshal(b, &spec); err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		lc := leftoverContainer{cgroup: spec.Linux.CgroupsPath}
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type == "network" && strings.HasPrefix(ns.Path, "/var/run/netns/") {
				lc.netns = ns.Path
			}
		}
		found = append(found, lc)
	}
	return found, nil
}

// removeContainers kills what is left of the containers of a crashed run
// (their processes survive containerd and its shims), removes the pods'
// network namespaces and the containers' cgroups.
func (c *Cluster) removeContainers() error {
	containers, err := c.leftoverContainers()
	if err != nil {
		return err
	}
	var errs []error
	for _, lc := range containers {
		if lc.netns == "" {
			continue
		}
		errs = append(errs, killNetns(lc.netns))
		if err := syscall.Unmount(lc.netns, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", lc.netns, err))
		}
		if err := os.Remove(lc.netns); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, lc := range containers {
		if lc.cgroup == "" || strings.Contains(lc.cgroup, "..") {
			continue
		}
		dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", lc.cgroup))
		for _, d := range dirs {
			_ = syscall.Rmdir(d) // fails while in use: never removes a live cgroup
		}
	}
	return errors.Join(errs...)
}

// DropKubeDNSUDP makes the node drop the given share (0..1) of UDP packets
// from pods to each kube-dns ClusterIP's port 53 (one rule per family,
// iptables or ip6tables): the effect of the conntrack race on the parallel
// A/AAAA queries of glibc and musl, which kernel 6.18 no longer shows. The
// rules sit in the raw table, before conntrack and kube-proxy's DNAT, so
// they work under both proxy modes. The returned function removes them;
// teardown removes them anyway.
func (c *Cluster) DropKubeDNSUDP(ctx context.Context, share float64) (remove func() error, err error) {
	if share <= 0 || share > 1 {
		return nil, fmt.Errorf("drop share %v: want (0, 1]", share)
	}
	rule := func(f Family, op string) []string {
		return []string{f.iptables(), "-w", "-t", "raw", op, "PREROUTING",
			"-s", f.PodCIDR.String(), "-d", f.KubeDNSIP.String(), "-p", "udp", "--dport", "53",
			"-m", "statistic", "--mode", "random", "--probability", strconv.FormatFloat(share, 'f', -1, 64),
			"-m", "comment", "--comment", "localdns-e2e: emulated conntrack race", "-j", "DROP"}
	}
	apply := func(argv []string) error {
		if out, err := c.NodeCommand(ctx, argv...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	var added []Family
	remove = func() error {
		var errs []error
		for _, f := range added {
			errs = append(errs, apply(rule(f, "-D")))
		}
		return errors.Join(errs...)
	}
	for _, f := range c.families {
		if err := apply(rule(f, "-A")); err != nil {
			return nil, errors.Join(err, remove())
		}
		added = append(added, f)
	}
	return remove, nil
}

package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
// node IP and the fake upstream's address, the Service CIDR routed on it,
// and no default route — nothing inside can reach the machine's networks.
func (c *Cluster) createNode() error {
	ns := c.cfg.Name
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "link", "add", nodeBridge, "type", "bridge"},
		{"ip", "-n", ns, "link", "add", nodePort, "type", "veth", "peer", "name", nodePeer},
		{"ip", "-n", ns, "link", "set", nodePort, "master", nodeBridge},
		{"ip", "-n", ns, "addr", "add", fmt.Sprintf("%s/%d", NodeIP, NodePrefix.Bits()), "dev", nodeBridge},
		{"ip", "-n", ns, "addr", "add", UpstreamIP.String() + "/32", "dev", nodeBridge},
		{"ip", "-n", ns, "link", "set", nodePort, "up"},
		{"ip", "-n", ns, "link", "set", nodePeer, "up"},
		{"ip", "-n", ns, "link", "set", nodeBridge, "up"},
		{"ip", "-n", ns, "route", "add", ServiceCIDR.String(), "dev", nodeBridge, "src", NodeIP.String()},
		// Forwarding between pods, and bridged traffic through iptables so
		// a Service reply on the same bridge is un-DNATed.
		{"/usr/bin/nsenter", "--net=" + c.netnsPath(), "--", "sysctl", "-q", "-w",
			"net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1"},
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

// removePodNetns unmounts and removes the pod namespaces containerd left in
// the run directory (it makes them under $XDG_RUNTIME_DIR/netns).
func (c *Cluster) removePodNetns() error {
	dir := filepath.Join(c.dir("xdg"), "netns")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list pod namespaces: %w", err)
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if err := killNetns(p); err != nil {
			errs = append(errs, err)
		}
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

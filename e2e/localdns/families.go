package localdns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/localdns/localdns/e2e/cluster"
)

// LocalIPv6 is the node cache's IPv6 address on every node (the webhook's
// --local-ipv6 default, the ipv6 and dual-stack overlays' --listen).
const LocalIPv6 = "fd6c:6f63:616c::10"

// NodeCacheIP is the node cache's address of family f.
func NodeCacheIP(f cluster.Family) string {
	if f.IsIPv6() {
		return LocalIPv6
	}
	return LocalIP
}

// NodeCacheIPs are the node cache's addresses of families, in their order.
func NodeCacheIPs(families []cluster.Family) []string {
	ips := make([]string, len(families))
	for i, f := range families {
		ips[i] = NodeCacheIP(f)
	}
	return ips
}

// loopbackOf is the stub's address in a pod whose primary family is f.
func loopbackOf(f cluster.Family) string {
	if f.IsIPv6() {
		return "::1"
	}
	return "127.0.0.1"
}

// OverlayOf is the kustomization for a cluster of the given IP families
// (cluster.IPv4, IPv6 or DualStack), relative to the repository: the one
// docs/deploy.md names for that kind of cluster.
func OverlayOf(ipFamilies string) string {
	switch ipFamilies {
	case cluster.IPv6:
		return "manifests/overlays/ipv6"
	case cluster.DualStack:
		return "manifests/overlays/dual-stack"
	}
	return Overlay
}

// isRuleOf reports whether a NodeState rule was listed by the iptables of
// family f (iptables-*-save or ip6tables-*-save).
func isRuleOf(f cluster.Family) func(rule string) bool {
	tool := "iptables-"
	if f.IsIPv6() {
		tool = "ip6tables-"
	}
	return func(rule string) bool { return strings.HasPrefix(rule, tool) }
}

// ServingNodeCachePIDs are the NodeCachePIDs that serve with the node
// setup: not the standby (`localdns-nodecache standby`), nor the cleanup
// or the ready probe the kubelet execs, which run subcommands.
func ServingNodeCachePIDs(c *cluster.Cluster) ([]int, error) {
	all, err := NodeCachePIDs(c)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, pid := range all {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && servesWithSetup(cmdline) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// KillNodeCache SIGKILLs every node cache process on the node (never its
// standby) and returns their pids.
func KillNodeCache(c *cluster.Cluster) ([]int, error) {
	pids, err := ServingNodeCachePIDs(c)
	if err != nil {
		return nil, err
	}
	for _, pid := range pids {
		// Gone meanwhile is as good as killed.
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return pids, fmt.Errorf("kill -9 %d: %w", pid, err)
		}
	}
	return pids, nil
}

// servesWithSetup reports whether a localdns-nodecache command line (NUL
// separated, as /proc/PID/cmdline) runs the node cache itself: flags only,
// no subcommand.
func servesWithSetup(cmdline []byte) bool {
	argv := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	return argv[0] != "" && (len(argv) == 1 || strings.HasPrefix(argv[1], "-"))
}

// StandbyTakeovers is the standby's localdns_nodecache_standby_takeovers_total
// (its metrics listener, hostNetwork :9254): the times it began serving the
// node cache's addresses because no node cache was linked to it.
func StandbyTakeovers(ctx context.Context, c *cluster.Cluster) (float64, error) {
	lines, err := scrapeMetrics(ctx, c, "http://127.0.0.1:9254/metrics", "localdns_nodecache_standby_takeovers_total")
	if err != nil {
		return 0, err
	}
	if len(lines) == 0 {
		return 0, fmt.Errorf("the standby exports no localdns_nodecache_standby_takeovers_total")
	}
	return sumSamples(lines)
}

package localdns

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/localdns/localdns/e2e/cluster"
)

// ShellPod runs script with busybox's sh in a pod (restartPolicy Never) in
// ns, with the localdns.io/mode annotation mode unless mode is empty, and
// returns its output; an error unless the script exits 0.
func ShellPod(ctx context.Context, c *cluster.Cluster, ns, name, mode, script string) (string, error) {
	meta := map[string]any{"name": name, "namespace": ns}
	if mode != "" {
		meta["annotations"] = map[string]string{ModeAnnotation: mode}
	}
	pod := map[string]any{
		"apiVersion": "v1", "kind": "Pod", "metadata": meta,
		"spec": map[string]any{
			"restartPolicy":                 "Never",
			"terminationGracePeriodSeconds": 0,
			"containers": []map[string]any{{
				"name": "sh", "image": cluster.BusyboxImage, "imagePullPolicy": "Never",
				"command": []string{"/bin/sh", "-c", script},
			}},
		},
	}
	manifest, err := json.Marshal(pod)
	if err != nil {
		return "", err
	}
	return c.RunPod(ctx, ns, name, manifest)
}

// nodeCacheComm is localdns-nodecache's command name: the kernel keeps 15 bytes.
const nodeCacheComm = "localdns-nodeca"

// What a localdns-nodecache process runs, by its first argument: the node
// cache serves with flags only; its standby, the cleanup and the ready
// probe (exec'd in the node cache's container every 2 s) are subcommands.
const (
	RoleNodeCache = "serve"
	RoleStandby   = "standby"
)

// processRole is the command a localdns-nodecache process runs, from its
// NUL-separated /proc/PID/cmdline.
func processRole(cmdline []byte) string {
	argv := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(argv) < 2 || strings.HasPrefix(argv[1], "-") {
		return RoleNodeCache
	}
	return argv[1]
}

// NodeCachePIDs are the node cache's processes in the node's network
// namespace (the DaemonSet's, on hostNetwork): not its standby's, cleanup's
// or ready probe's.
func NodeCachePIDs(c *cluster.Cluster) ([]int, error) { return nodeCachePIDs(c, RoleNodeCache) }

// StandbyPIDs are the standby's processes in the node's network namespace.
func StandbyPIDs(c *cluster.Cluster) ([]int, error) { return nodeCachePIDs(c, RoleStandby) }

// nodeCachePIDs are the localdns-nodecache processes of role in the node's
// network namespace.
func nodeCachePIDs(c *cluster.Cluster, role string) ([]int, error) {
	var node syscall.Stat_t
	if err := syscall.Stat(c.NetnsPath(), &node); err != nil {
		return nil, fmt.Errorf("stat node namespace: %w", err)
	}
	all, err := PIDsByComm(nodeCacheComm)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, pid := range all {
		var ns syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &ns) != nil || ns.Ino != node.Ino || ns.Dev != node.Dev {
			continue
		}
		// A process gone meanwhile has an empty cmdline: not of any role.
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && len(cmdline) > 0 && processRole(cmdline) == role {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// NodeCacheMetrics returns the samples of the node cache serving on the
// node (its metrics listener, hostNetwork :9253) whose names start with one
// of prefixes, as "name{labels} value" lines.
func NodeCacheMetrics(ctx context.Context, c *cluster.Cluster, prefixes ...string) ([]string, error) {
	return scrapeMetrics(ctx, c, "http://127.0.0.1:9253/metrics", prefixes...)
}

// StandbyMetrics is NodeCacheMetrics of the standby (hostNetwork :9254).
func StandbyMetrics(ctx context.Context, c *cluster.Cluster, prefixes ...string) ([]string, error) {
	return scrapeMetrics(ctx, c, "http://127.0.0.1:9254/metrics", prefixes...)
}

// StandbyState is what the standby's metrics say about its turns.
type StandbyState struct {
	// Takeovers counts the times it began serving the address.
	Takeovers float64
	// Serving is whether it serves the address now.
	Serving bool
	// Requests are the queries it has answered (UDP and TCP).
	Requests float64
}

// ReadStandby scrapes the standby's takeovers, serving state and requests.
func ReadStandby(ctx context.Context, c *cluster.Cluster) (StandbyState, error) {
	const takeovers, serving, requests = "localdns_nodecache_standby_takeovers_total", "localdns_nodecache_standby_serving", "localdns_nodecache_requests_total"
	lines, err := StandbyMetrics(ctx, c, takeovers, serving, requests)
	if err != nil {
		return StandbyState{}, err
	}
	sums := map[string]float64{}
	for _, line := range lines {
		name := line[:strings.IndexAny(line, "{ ")]
		v, err := sumSamples([]string{line})
		if err != nil {
			return StandbyState{}, err
		}
		sums[name] += v
	}
	return StandbyState{Takeovers: sums[takeovers], Serving: sums[serving] == 1, Requests: sums[requests]}, nil
}

func (s StandbyState) String() string {
	return fmt.Sprintf("%.0f takeovers, serving %v, %.0f requests answered", s.Takeovers, s.Serving, s.Requests)
}

// scrapeMetrics fetches a Prometheus endpoint from the node and returns the
// samples whose names start with one of prefixes.
func scrapeMetrics(ctx context.Context, c *cluster.Cluster, url string, prefixes ...string) ([]string, error) {
	out, err := c.NodeCommand(ctx, "curl", "-sf", "--max-time", "5", url).Output()
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		for _, p := range prefixes {
			if strings.HasPrefix(sc.Text(), p) {
				lines = append(lines, sc.Text())
				break
			}
		}
	}
	return lines, sc.Err()
}

// NodeCacheRequests sums localdns_nodecache_requests_total.
func NodeCacheRequests(ctx context.Context, c *cluster.Cluster) (float64, error) {
	lines, err := NodeCacheMetrics(ctx, c, "localdns_nodecache_requests_total")
	if err != nil {
		return 0, err
	}
	return sumSamples(lines)
}

// sumSamples adds up the values of "name{labels} value" lines.
func sumSamples(lines []string) (float64, error) {
	var sum float64
	for _, line := range lines {
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += v
	}
	return sum, nil
}

// NodeSNMP reads the node namespace's /proc/net/snmp counters, keyed
// "Proto.Field" ("Udp.RcvbufErrors", "Icmp.OutRateLimitHost"): a node
// cache socket that overflows, or ICMP errors the kernel rate-limited,
// count here.
func NodeSNMP(ctx context.Context, c *cluster.Cluster) (map[string]int64, error) {
	out, err := c.NodeCommand(ctx, "cat", "/proc/net/snmp").Output()
	if err != nil {
		return nil, fmt.Errorf("read the node's /proc/net/snmp: %w", err)
	}
	return parseSNMP(string(out))
}

// parseSNMP reads /proc/net/snmp's pairs of lines: a header naming the
// fields, then their values, both prefixed "Proto:".
func parseSNMP(text string) (map[string]int64, error) {
	counters := map[string]int64{}
	var header []string
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if header == nil || header[0] != f[0] {
			header = f
			continue
		}
		proto := strings.TrimSuffix(f[0], ":")
		for i := 1; i < len(f) && i < len(header); i++ {
			v, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("snmp %s %s: %w", proto, header[i], err)
			}
			counters[proto+"."+header[i]] = v
		}
		header = nil
	}
	if len(counters) == 0 {
		return nil, fmt.Errorf("no counters in /proc/net/snmp")
	}
	return counters, nil
}

// SNMPDelta is after-before for the named counters, formatted "name +n".
func SNMPDelta(before, after map[string]int64, names ...string) string {
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s +%d", n, after[n]-before[n])
	}
	return strings.Join(parts, ", ")
}

// WaitUpstreamHealthy waits up to d until the node cache counts the kube-dns
// ClusterIP healthy (localdns_nodecache_upstream_healthy 1): a probe or a
// query of its got an answer through kube-proxy's rules.
func WaitUpstreamHealthy(ctx context.Context, c *cluster.Cluster, d time.Duration) error {
	want := fmt.Sprintf("localdns_nodecache_upstream_healthy{server=%q} 1", net.JoinHostPort(cluster.KubeDNSIP.String(), "53"))
	return poll(ctx, d, func() error {
		lines, err := NodeCacheMetrics(ctx, c, "localdns_nodecache_upstream_healthy")
		if err != nil {
			return err
		}
		if !slices.Contains(lines, want) {
			return fmt.Errorf("node cache reports %q", lines)
		}
		return nil
	})
}

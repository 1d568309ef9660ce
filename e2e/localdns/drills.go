package localdns

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/localdns/localdns/e2e/cluster"
)

// Datagrams are the UDP datagrams the node counted to LocalIP:53 and from
// it, by the packet counters of the node cache's own filter rules (`localdns:
// accept udp to|from`): every query a pod sends the node cache, and every
// answer the node cache or its standby sends back. Between two readings
// taken while no load runs, In - Out is the queries nobody answered: those
// that met no socket (Udp.NoPorts), overflowed one (Udp.RcvbufErrors), or
// sat in a socket whose process died.
type Datagrams struct{ In, Out int64 }

// Unanswered is In - Out.
func (d Datagrams) Unanswered() int64 { return d.In - d.Out }

// Sub is d - before.
func (d Datagrams) Sub(before Datagrams) Datagrams {
	return Datagrams{In: d.In - before.In, Out: d.Out - before.Out}
}

// ReadDatagrams reads the counters from both iptables backends of the node
// (`iptables-*-save -c`). The rules must be the same ones throughout: the
// node cache adopts them across restarts, cleanup removes them.
func ReadDatagrams(ctx context.Context, c *cluster.Cluster) (Datagrams, error) {
	var d Datagrams
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		out, err := c.NodeCommand(ctx, save, "-c", "-t", "filter").CombinedOutput()
		if err != nil {
			return d, fmt.Errorf("%s -c: %w: %s", save, err, out)
		}
		in, outCount, err := parseDatagramCounters(string(out))
		if err != nil {
			return d, fmt.Errorf("%s: %w", save, err)
		}
		d.In += in
		d.Out += outCount
	}
	return d, nil
}

// parseDatagramCounters sums the packet counters ("[packets:bytes] -A ...")
// of the rules accepting UDP to and from LocalIP:53.
func parseDatagramCounters(save string) (in, out int64, err error) {
	to := fmt.Sprintf("%s accept udp to %s:53", RuleComment, LocalIP)
	from := fmt.Sprintf("%s accept udp from %s:53", RuleComment, LocalIP)
	for _, line := range strings.Split(save, "\n") {
		var sum *int64
		switch {
		case strings.Contains(line, `"`+to+`"`):
			sum = &in
		case strings.Contains(line, `"`+from+`"`):
			sum = &out
		default:
			continue
		}
		rest, ok := strings.CutPrefix(line, "[")
		packets, _, _ := strings.Cut(rest, ":")
		n, perr := strconv.ParseInt(packets, 10, 64)
		if !ok || perr != nil {
			return 0, 0, fmt.Errorf("no packet counter in %q (saved without -c?)", line)
		}
		*sum += n
	}
	return in, out, nil
}

// KillNodeCache SIGKILLs every node cache process on the node (never its
// standby) and returns their pids.
func KillNodeCache(c *cluster.Cluster) ([]int, error) {
	pids, err := NodeCachePIDs(c)
	if err != nil {
		return nil, err
	}
	for _, pid := range pids {
		// Gone meanwhile is as good as killed.
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
			return pids, fmt.Errorf("kill -9 %d: %w", pid, err)
		}
	}
	return pids, nil
}

// holdDownPoll is how often HoldDown looks for a restarted node cache: well
// under the time a new one takes to find kube-dns and check its rules before
// it binds.
const holdDownPoll = 50 * time.Millisecond

// Kill is one node cache process SIGKILLed.
type Kill struct {
	PID int
	At  time.Time
}

// HoldDown keeps the node cache down for d from now, the way a crash loop
// does: it SIGKILLs the node cache process, then every one the kubelet
// starts again (after its back-off) until d has passed. It returns every
// kill.
func HoldDown(ctx context.Context, c *cluster.Cluster, d time.Duration) ([]Kill, error) {
	var kills []Kill
	tick := time.NewTicker(holdDownPoll)
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); {
		pids, err := KillNodeCache(c)
		for _, pid := range pids {
			kills = append(kills, Kill{PID: pid, At: time.Now()})
		}
		if err != nil {
			return kills, err
		}
		select {
		case <-ctx.Done():
			return kills, ctx.Err()
		case <-tick.C:
		}
	}
	return kills, nil
}

// NodeCachePod is the node cache pod's state, as the kubelet reports it.
type NodeCachePod struct {
	Name     string
	Ready    bool
	Restarts int
	// MemoryLimit is its container's (resources.limits.memory).
	MemoryLimit string
	// LastTermination is why its container last ended ("OOMKilled",
	// "Error"), empty if it never did.
	LastTermination string
}

// ReadNodeCachePods reads the node cache's pods that are not being deleted.
func ReadNodeCachePods(ctx context.Context, c *cluster.Cluster) ([]NodeCachePod, error) {
	out, err := listPods(ctx, c, Namespace, "app.kubernetes.io/name="+NodeCacheDS)
	if err != nil {
		return nil, err
	}
	return parseNodeCachePods(out)
}

func parseNodeCachePods(list []byte) ([]NodeCachePod, error) {
	pods, err := decodePods(list, "node cache")
	if err != nil {
		return nil, err
	}
	var out []NodeCachePod
	for _, it := range pods.Items {
		if it.Metadata.DeletionTimestamp != nil {
			continue
		}
		p := NodeCachePod{Name: it.Metadata.Name}
		if len(it.Spec.Containers) > 0 {
			p.MemoryLimit = it.Spec.Containers[0].Resources.Limits["memory"]
		}
		for _, cs := range it.Status.ContainerStatuses {
			p.Ready, p.Restarts = cs.Ready, cs.RestartCount
			if cs.LastState.Terminated != nil {
				p.LastTermination = cs.LastState.Terminated.Reason
			}
		}
		out = append(out, p)
	}
	return out, nil
}

package localdns_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/localdns/localdns/e2e/clients"
	"github.com/localdns/localdns/e2e/cluster"
	"github.com/localdns/localdns/e2e/e2etest"
	"github.com/localdns/localdns/e2e/localdns"
)

// The node cache's failure drills (issue 14): killed and held down as a
// crash loop does, its pod force-deleted, OOM-killed, rolled; under load of
// glibc and Go in node cache mode and musl in stub mode. Its standby takes
// the address the moment it dies; what nothing can save are the queries
// that sat in the dead process's sockets, and those are counted.

// drillLoads are the loads every node cache drill runs through: the seeds'
// Service, looked up by glibc (node cache mode), musl (stub mode) and Go
// (node cache mode) at a steady 300, 300 and 600 lookups/s (each lookup
// four queries: two names of the search path, A and AAAA), so that the 2
// cores keep room for the drill itself. The Go client's goroutines each
// resolve on their own, as glibc's and musl's threads do.
func drillLoads(prefix string, d time.Duration) []*backgroundLoad {
	loads := []*backgroundLoad{
		optedLoad(prefix+"-glibc", clients.Glibc, serviceHost, 10, d),
		optedLoad(prefix+"-musl", clients.Musl, serviceHost, 10, d),
		optedLoad(prefix+"-go", clients.Go, serviceHost, 20, d),
	}
	for i, rate := range []float64{300, 300, 600} {
		loads[i].load.Rate = rate
	}
	// The checks allow one slow lookup per lost query; Go's goroutines
	// sharing one resolver share the resolution a lost query stalls (CI
	// once counted 3 slow lookups for 2 lost queries, 2 of them Go's,
	// started together).
	loads[2].load.OwnResolvers = true
	return loads
}

// timeline is a drill's events and its clients' slow lookups, as offsets
// from the moment the loads were on.
type timeline struct {
	origin time.Time
	mu     sync.Mutex
	events []string
}

// mark records an event at a time.
func (tl *timeline) mark(at time.Time, format string, args ...any) {
	tl.add(fmt.Sprintf("%s at %+.2fs", fmt.Sprintf(format, args...), at.Sub(tl.origin).Seconds()))
}

func (tl *timeline) add(event string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.events = append(tl.events, event)
}

func (tl *timeline) String() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return strings.Join(tl.events, "\n  ")
}

// slowAt is when a load's slow lookups started, on the timeline.
func (tl *timeline) slowAt(bl *backgroundLoad) string {
	start := time.Unix(0, bl.res.StartUnixNano)
	var at []string
	for _, off := range bl.res.SlowAt {
		at = append(at, fmt.Sprintf("%+.2fs", start.Add(off).Sub(tl.origin).Seconds()))
	}
	return strings.Join(at, " ")
}

// nodeCacheDrill runs drill from 3 s into drillLoads (d long), then checks:
//   - the drill loads outlasted the drill, none of their lookups failed,
//     none took 5 s;
//   - every query the pods sent to LocalIP was answered but, when a process
//     is killed (kills), those it took with it (queued in its sockets, or
//     read and not yet answered) and those that arrived in the instant
//     between its death and the standby's bind (no socket: refused, and
//     counted apart); none overflowed a socket (Udp.InErrors);
//   - the drill loads' lookups of 1 s or more are at most the unanswered
//     queries (each costs its client at most one resolver timeout before
//     the fallback answers; musl's stub retries sooner): with no kill, none.
//
// Every figure is logged, with the drill's timeline and when the slow
// lookups started. The datagram counters are read before the loads start
// and after they all ended, so no query is in flight at either reading.
func (e *env) nodeCacheDrill(t *testing.T, prefix string, d time.Duration, kills bool, drill func(tl *timeline)) {
	t.Helper()
	dg0, snmp0 := e.nodeCounters(t)
	loads := drillLoads(prefix, d)
	e.startLoads(t, loads...)
	tl := &timeline{origin: time.Now()}
	// The standby answers while the node cache is down: its waits for a
	// CPU explain an answer it gave late.
	pids, err := localdns.StandbyPIDs(e.c)
	stopStandbyWatch := watchCPU("standby", pids, err, tl.origin)
	time.Sleep(3 * time.Second) // mid-load
	drill(tl)
	e.checkStillRunning(t, loads...)
	done := finished(t, loads...)
	dg1, snmp1 := e.nodeCounters(t)
	standbyCPU := stopStandbyWatch()

	dg := dg1.Sub(dg0)
	noSocket := snmp1["Udp.NoPorts"] - snmp0["Udp.NoPorts"]
	overflowed := snmp1["Udp.InErrors"] - snmp0["Udp.InErrors"]
	withKilled := dg.Unanswered() - noSocket - overflowed
	var slow int64
	var slowBy []string
	for _, bl := range done {
		slow += bl.res.DNSOver1s()
		slowBy = append(slowBy, fmt.Sprintf("%s %d (max %s, %d more client-starved)", bl.kind, bl.res.DNSOver1s(), bl.res.Max.Round(time.Millisecond), bl.res.SelfStarved))
		if len(bl.res.SlowAt) > 0 {
			tl.add(fmt.Sprintf("%s's lookups >= 1 s started at %s", bl.kind, tl.slowAt(bl)))
		}
		if bl.res.Lookups == 0 || bl.res.Errors != 0 || bl.res.Over5s != 0 {
			e2etest.Errorf(t, "%s: %d lookups, %d errors (%s), %d >= 5 s (max %s); want lookups, no error, none >= 5 s",
				bl.name, bl.res.Lookups, bl.res.Errors, bl.res.FirstError, bl.res.Over5s, bl.res.Max)
		}
	}
	if kills {
		e.logStandbyMetrics(t)
	}
	switch {
	case overflowed != 0:
		e2etest.Errorf(t, "%d queries to %s overflowed a socket: the address was overrun", overflowed, localdns.LocalIP)
	case !kills && dg.Unanswered() != 0:
		e2etest.Errorf(t, "%d queries to %s unanswered (%d met no socket) with no process killed, want every one answered", dg.Unanswered(), localdns.LocalIP, noSocket)
	case slow > dg.Unanswered():
		// Each unanswered query costs its client at most one resolver
		// timeout: more slow lookups than that is slowness of its own.
		e2etest.Errorf(t, "%d lookups took 1 s or more (%s), more than the %d queries to %s left unanswered", slow, strings.Join(slowBy, ", "), dg.Unanswered(), localdns.LocalIP)
	}
	e2etest.Explainf(t, "queries to %s: %d, answered %d, unanswered %d: %d went with a killed process, %d met no socket (Udp.NoPorts: refused), %d overflowed one (Udp.InErrors); lookups >= 1 s: %s; %s\ntimeline (from the loads' start):\n  %s",
		localdns.LocalIP, dg.In, dg.Out, dg.Unanswered(), withKilled, noSocket, overflowed, strings.Join(slowBy, ", "), standbyCPU, tl)
}

// nodeCounters reads the node's datagram counters for LocalIP and its
// /proc/net/snmp, or fails the test.
func (e *env) nodeCounters(t *testing.T) (localdns.Datagrams, map[string]int64) {
	t.Helper()
	dg, err := localdns.ReadDatagrams(e.ctx, e.c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	snmp, err := localdns.NodeSNMP(e.ctx, e.c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	return dg, snmp
}

// waitNodeCacheBack waits until one node cache pod is ready and the standby
// has stood down (a node cache is linked to it again), and returns how long
// that took.
func (e *env) waitNodeCacheBack(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	if err := e.c.Step("node cache pod ready, standby stood down", func() error {
		return waitUntil(2*time.Minute, func() error {
			pods, err := localdns.ReadNodeCachePods(e.ctx, e.c)
			if err != nil || len(pods) != 1 || !pods[0].Ready {
				return fmt.Errorf("node cache not back: pods %+v (%v)", pods, err)
			}
			if st, err := localdns.ReadStandby(e.ctx, e.c); err != nil || st.Serving {
				return fmt.Errorf("node cache back, standby not standing by: %s (%v)", st, err)
			}
			return nil
		})
	}); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	return time.Since(start)
}

// readStandby reads the standby's state, or fails the test.
func (e *env) readStandby(t *testing.T) localdns.StandbyState {
	t.Helper()
	st, err := localdns.ReadStandby(e.ctx, e.c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	return st
}

// checkStandbyServed asserts the standby took over, answered queries and
// stood down once the node cache was back; with mayNotAnswer it need not
// have answered: a node cache the kubelet restarts within the clients'
// resolver timeout (1 s) is back before their next query, which the dead
// one's lost queries hold back.
func checkStandbyServed(t *testing.T, what string, before, after localdns.StandbyState, mayNotAnswer bool) {
	t.Helper()
	t.Logf("standby, %s: %s -> %s", what, before, after)
	answered := after.Requests > before.Requests || mayNotAnswer
	if after.Takeovers <= before.Takeovers || !answered || after.Serving {
		e2etest.Errorf(t, "standby, %s: %s -> %s; want it to take over, answer and stand down", what, before, after)
	}
}

// crashLoopHold is how long the killed node cache is kept down: the
// kubelet's back-off restarts it at once, then 10 s and 20 s later, and the
// drill kills each start again, the first half-minute of a crash loop.
const crashLoopHold = 30 * time.Second

// nodeCacheKilled: the node cache SIGKILLed and every restart of it killed
// too for 30 s (a crash loop), then, once it is back, its pod
// force-deleted (the kubelet stops it with a 2 s grace; the DaemonSet makes
// a new pod at once): the standby serves each time and stands down after.
// The load runs 60 s: the node cache's return after the hold waits for
// the kubelet's back-off (up to 20 s after the last kill) and readiness,
// and took until 45 s once.
func (e *env) nodeCacheKilled(t *testing.T) {
	e.nodeCacheDrill(t, "kill", 60*time.Second, true, func(tl *timeline) {
		st0 := e.readStandby(t)
		var kills []localdns.Kill
		if err := e.c.Step(fmt.Sprintf("SIGKILL the node cache, and each restart of it for %s", crashLoopHold), func() error {
			var err error
			if kills, err = localdns.HoldDown(e.ctx, e.c, crashLoopHold); err == nil && len(kills) == 0 {
				err = errors.New("no node cache process to kill")
			}
			return err
		}); err != nil {
			e2etest.Fatalf(t, "%v", err)
		}
		for _, k := range kills {
			tl.mark(k.At, "SIGKILL node cache pid %d", k.PID)
		}
		e.waitNodeCacheBack(t)
		tl.mark(time.Now(), "node cache back, standby stood down")
		st1 := e.readStandby(t)
		checkStandbyServed(t, "crash loop", st0, st1, false)

		tl.mark(time.Now(), "force-delete the node cache pod")
		if err := e.c.Step("force-delete the node cache pod", func() error {
			_, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "delete", "pod", "-l", "app.kubernetes.io/name="+localdns.NodeCacheDS,
				"--force", "--grace-period=0")
			return err
		}); err != nil {
			e2etest.Fatalf(t, "%v", err)
		}
		e.waitNodeCacheBack(t)
		tl.mark(time.Now(), "new node cache pod serving, standby standing by")
		// The old node cache, told to stop, hands the address over: to the
		// standby, or to the new pod's node cache if that one is already
		// linked. Either way nothing serves it alone at the end.
		t.Logf("standby, force-deleted pod: %s -> %s", st1, e.readStandby(t))
	})
	e.checkServing(t)
}

// The OOM drill's test-only node cache: a memory limit far below its cache
// budget, so that a working set of big answers outgrows the limit.
const (
	oomMemoryLimit = "40Mi"
	oomCacheBudget = "1Gi"
)

// The working set: unique names of the fake upstream's zone of big answers
// (A and AAAA: ~16 kB a name in the node cache), asked over TCP by dnsperf
// on the node (as a hostNetwork client would), at most oomFloodRate queries
// a second for oomFloodFor. The node cache holds ~2,000 of them under its
// 40Mi; a pod's Go client, slowed by the truncated-then-TCP round trips and
// the drill's own loads, got through 1,552 names in 30 s and never filled it.
const (
	oomFloodNames = 12000
	oomFloodRate  = 800
	oomFloodFor   = 20 * time.Second
)

// nodeCacheOOMKilled: the node cache installed for the test with a tiny
// memory limit (kubectl patch of the DaemonSet: limit 40Mi, cache budget
// 1Gi) OOM-killed by a working set of big answers, again each time the
// kubelet restarts it while the flood lasts (a crash loop), then restored
// (kubectl rollout undo): the standby serves meanwhile and stands down
// after.
func (e *env) nodeCacheOOMKilled(t *testing.T) {
	queries := filepath.Join(t.TempDir(), "big-names")
	var b strings.Builder
	for i := 1; i <= oomFloodNames; i++ {
		fmt.Fprintf(&b, "oom-%d.%s A\noom-%d.%s AAAA\n", i, cluster.BigZone, i, cluster.BigZone)
	}
	if err := os.WriteFile(queries, []byte(b.String()), 0o644); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}

	patch := fmt.Sprintf(`[{"op":"replace","path":"/spec/template/spec/containers/0/resources/limits/memory","value":%q},
{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--cache-max-bytes=%s"}]`, oomMemoryLimit, oomCacheBudget)
	if err := e.c.Step(fmt.Sprintf("test-only node cache: memory limit %s, cache budget %s (kubectl patch, rollout)", oomMemoryLimit, oomCacheBudget), func() error {
		if _, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "patch", "daemonset", localdns.NodeCacheDS, "--type=json", "-p", patch); err != nil {
			return err
		}
		_, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "rollout", "status", "daemonset/"+localdns.NodeCacheDS, "--timeout=2m")
		return err
	}); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	restored := false
	restore := func() error {
		return e.c.Step("restore the node cache (kubectl rollout undo)", func() error {
			if _, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "rollout", "undo", "daemonset/"+localdns.NodeCacheDS); err != nil {
				return err
			}
			restored = true
			_, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "rollout", "status", "daemonset/"+localdns.NodeCacheDS, "--timeout=2m")
			return err
		})
	}
	t.Cleanup(func() {
		if !restored {
			if err := restore(); err != nil {
				e2etest.Errorf(t, "%v", err)
			}
		}
	})
	// The rollout is done once the new pod is available; the old one may
	// be listed a moment longer.
	if err := e.c.Step("the node cache's only pod is the test-only one", func() error {
		return waitUntil(30*time.Second, func() error {
			pods, err := localdns.ReadNodeCachePods(e.ctx, e.c)
			if err != nil || len(pods) != 1 || pods[0].MemoryLimit != oomMemoryLimit || !pods[0].Ready {
				return fmt.Errorf("node cache pods %+v (%v), want one, ready, with memory limit %s", pods, err, oomMemoryLimit)
			}
			return nil
		})
	}); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}

	e.nodeCacheDrill(t, "oom", 35*time.Second, true, func(tl *timeline) {
		st0 := e.readStandby(t)
		flooded := make(chan struct{})
		procs := e.followNodeCacheProcesses(tl, flooded)
		tl.mark(time.Now(), "flood of big answers")
		out, err := e.c.NodeCommand(e.ctx, "dnsperf", "-s", localdns.LocalIP, "-m", "tcp", "-d", queries, "-n", "1",
			"-c", "8", "-T", "1", "-Q", fmt.Sprint(oomFloodRate), "-l", fmt.Sprint(oomFloodFor.Seconds())).CombinedOutput()
		close(flooded)
		<-procs
		tl.mark(time.Now(), "flood over")
		if err != nil {
			e2etest.Fatalf(t, "dnsperf: %v: %s", err, out)
		}
		t.Logf("the flood (dnsperf over TCP from the node): %s", dnsperfSummary(string(out)))
		pods, err := localdns.ReadNodeCachePods(e.ctx, e.c)
		if err != nil {
			e2etest.Fatalf(t, "%v", err)
		}
		t.Logf("node cache after the flood: %+v", pods)
		if len(pods) != 1 || pods[0].Restarts == 0 || pods[0].LastTermination != "OOMKilled" {
			e2etest.Errorf(t, "node cache pods %+v after the flood, want one whose container was OOMKilled", pods)
		}
		tl.mark(time.Now(), "kubectl rollout undo")
		if err := restore(); err != nil {
			e2etest.Fatalf(t, "%v", err)
		}
		e.waitNodeCacheBack(t)
		tl.mark(time.Now(), "node cache back, standby stood down")
		checkStandbyServed(t, "OOM kills", st0, e.readStandby(t), false)
	})
	e.checkServing(t)
}

// dnsperfSummary is the lines of dnsperf's report that count queries.
func dnsperfSummary(out string) string {
	var lines []string
	for _, line := range strings.Split(out, "\n") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "Queries ") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "; ")
}

// followNodeCacheProcesses marks on the timeline each node cache process
// that appears or goes (an OOM kill, a restart) until stop closes; the
// returned channel closes when it has stopped.
func (e *env) followNodeCacheProcesses(tl *timeline, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		var last []int
		for {
			pids, err := localdns.NodeCachePIDs(e.c)
			if err == nil {
				now := time.Now()
				for _, p := range last {
					if !slices.Contains(pids, p) {
						tl.mark(now, "node cache pid %d gone", p)
					}
				}
				for _, p := range pids {
					if !slices.Contains(last, p) {
						tl.mark(now, "node cache pid %d running", p)
					}
				}
				last = pids
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return done
}

// logStandbyMetrics logs what the standby did (its engine's and upstream
// path's samples), for a post-mortem of a slow lookup while it served.
func (e *env) logStandbyMetrics(t *testing.T) {
	t.Helper()
	lines, err := localdns.StandbyMetrics(e.ctx, e.c, "localdns_nodecache_upstream_", "localdns_nodecache_miss_", "localdns_nodecache_cache_")
	if err != nil {
		t.Logf("standby metrics: %v", err)
		return
	}
	t.Logf("standby metrics:\n%s", strings.Join(lines, "\n"))
}

package localdns_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/localdns/localdns/e2e/clients"
	"github.com/localdns/localdns/e2e/cluster"
	"github.com/localdns/localdns/e2e/e2etest"
	"github.com/localdns/localdns/e2e/localdns"
)

// familyScenarios run on the IPv6 single-stack and the dual-stack cluster:
// correctness, the seeds' test opted in (10 s per client, the race emulated
// on every kube-dns ClusterIP) and the node cache SIGKILLed with its standby
// serving. The IPv4 runs hold the rest, and the harness's own test proves
// the race emulation bites through an IPv6 ClusterIP (its IPv6 boot); make
// test has no room for every scenario on every family.
var familyScenarios = []scenario{
	{name: "correctness", run: (*env).correctness},
	{name: "seeds", run: (*env).seedsOptedIn},
	{name: "nodecache-sigkill-standby", run: (*env).standbyTakesOver},
}

// TestLocaldnsOnClusterIPv6 boots an IPv6 single-stack node (kube-proxy in
// iptables mode), installs localdns with manifests/overlays/ipv6, and runs
// familyScenarios. LOCALDNS_E2E=1 only, as the IPv4 runs.
func TestLocaldnsOnClusterIPv6(t *testing.T) {
	testFamilies(t, cluster.IPv6, "localdns-e2e-ld6")
}

// TestLocaldnsOnClusterDualStack is TestLocaldnsOnClusterIPv6 on a
// dual-stack node (IPv4 primary, the kube-dns Service RequireDualStack),
// with manifests/overlays/dual-stack.
func TestLocaldnsOnClusterDualStack(t *testing.T) {
	testFamilies(t, cluster.DualStack, "localdns-e2e-ld46")
}

func testFamilies(t *testing.T, families, name string) {
	cfg := cluster.DefaultConfig()
	cfg.Name = name // fixed: a crashed earlier run's leftovers are found
	cfg.IPFamilies = families
	e := bootEnv(t, cfg, false)
	for _, sc := range familyScenarios {
		t.Run(sc.name, func(t *testing.T) { sc.run(e, t) })
	}
}

// standbyTakesOver: the node cache process SIGKILLed under load in node
// cache mode, its standby left running. The standby serves the node cache's
// addresses of every family the moment the node cache's sockets close: no
// lookup fails, none takes 5 s, and the standby takes over, answers and
// stands down once the kubelet has restarted the node cache, which serves
// again. The queries that sat in the killed process's sockets are lost
// (nothing can answer them): each costs its lookup one resolver timeout
// (1 s) before the next nameserver answers, so lookups of 1 s are logged,
// not failed. One exception, glibc in an IPv6 single-stack cluster (see
// glibcLostAAAA).
func (e *env) standbyTakesOver(t *testing.T) {
	st0 := e.readStandby(t)
	pods, err := localdns.ReadNodeCachePods(e.ctx, e.c)
	if err != nil || len(pods) != 1 {
		e2etest.Fatalf(t, "node cache pods %+v (%v), want one", pods, err)
	}
	restarts0 := pods[0].Restarts
	load := func(kind string, concurrency int) *backgroundLoad {
		return &backgroundLoad{name: "standby-" + kind, kind: kind,
			load: clients.Load{Host: serviceHost, Concurrency: concurrency, Duration: 15 * time.Second, Slow: time.Second, MaxLookups: 10_000_000}}
	}
	loads := []*backgroundLoad{load(clients.Glibc, 10), load(clients.Go, 20)}
	e.startLoads(t, loads...)

	time.Sleep(3 * time.Second) // mid-load
	pids, err := localdns.KillNodeCache(e.c)
	if err != nil || len(pids) == 0 {
		e2etest.Fatalf(t, "SIGKILL the node cache: pids %v: %v", pids, err)
	}
	killed := time.Now()
	t.Logf("SIGKILLed node cache pid %v (the standby left running)", pids)
	if err := e.c.Step("node cache restarted by the kubelet", func() error {
		return waitUntil(2*time.Minute, func() error {
			pods, err := localdns.ReadNodeCachePods(e.ctx, e.c)
			if err != nil || len(pods) != 1 || pods[0].Restarts <= restarts0 {
				return fmt.Errorf("node cache pods %+v (%v), want one restarted since %d restarts", pods, err, restarts0)
			}
			return nil
		})
	}); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	e.waitNodeCacheBack(t)
	t.Logf("node cache ready again, standby stood down, %s after the kill", time.Since(killed).Round(100*time.Millisecond))
	for _, bl := range finished(t, loads...) {
		res := bl.res
		failed := glibcLostAAAA(e.c, bl)
		if failed > 0 {
			t.Logf("%s: %d lookups failed with %q: their AAAA query died with the node cache", bl.name, failed, eaiNoData)
		}
		if res.Lookups == 0 || res.Errors != failed || res.Over5s != 0 {
			e2etest.Errorf(t, "%s: %d lookups, %d errors (%v), %d >= 5 s (max %s); want lookups, no error (but %d %q), none >= 5 s",
				bl.name, res.Lookups, res.Errors, res.ErrorKinds, res.Over5s, res.Max, failed, eaiNoData)
		}
	}
	checkStandbyServed(t, "SIGKILL", st0, e.readStandby(t), true)
	e.checkServing(t)
}

// eaiNoData is gai_strerror(EAI_NODATA) in glibc.
const eaiNoData = "No address associated with hostname"

// glibcLostAAAA is how many of a glibc load's failed lookups are allowed to
// be EAI_NODATA because their AAAA query died with a killed node cache, in
// a cluster whose primary family is IPv6: there a Service has AAAA records
// only, and glibc (2.36), which asks A and then AAAA (single-request-reopen;
// without the option, once a thread has seen one such timeout), returns the
// A query's NODATA alone when the AAAA query times out after it, without
// asking the next nameserver (reproduced in a network namespace, see
// docs/e2e.md). In IPv4 and dual-stack clusters the A answer carries an
// address, and the same loss costs 1 s, not the lookup. Each glibc thread
// has one query in flight, so at most one per thread.
func glibcLostAAAA(c *cluster.Cluster, bl *backgroundLoad) int64 {
	if bl.kind != clients.Glibc || !c.Primary().IsIPv6() {
		return 0
	}
	return min(bl.res.ErrorKinds[eaiNoData], int64(bl.load.Concurrency))
}

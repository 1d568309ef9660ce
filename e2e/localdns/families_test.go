package localdns_test

import (
	"fmt"
	"strings"
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
	e := bootEnv(t, cfg)
	for _, sc := range familyScenarios {
		t.Run(sc.name, func(t *testing.T) { sc.run(e, t) })
	}
}

// standbyTakesOver: the node cache process SIGKILLed under load in node
// cache mode, its standby left running. The standby serves the node cache's
// addresses of every family the moment the node cache's sockets close: no
// lookup fails, none takes 5 s, and the standby counts a takeover; the
// kubelet restarts the node cache, which serves again. The queries that sat
// in the killed process's sockets are lost (nothing can answer them): each
// costs its lookup one resolver timeout (1 s) before the next nameserver
// answers, so lookups of 1 s are logged, not failed. One exception, glibc in
// an IPv6 single-stack cluster (see glibcLostAAAA).
func (e *env) standbyTakesOver(t *testing.T) {
	takeovers0, err := localdns.StandbyTakeovers(e.ctx, e.c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	restarts0, err := e.nodeCacheRestarts()
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
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
	if err := e.c.Step("node cache restarted by the kubelet and ready", func() error {
		return e.waitNodeCacheRestarted(restarts0)
	}); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	t.Logf("node cache ready again %s after the kill", time.Since(killed).Round(100*time.Millisecond))
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
	if takeovers1, err := localdns.StandbyTakeovers(e.ctx, e.c); err != nil {
		e2etest.Errorf(t, "%v", err)
	} else if takeovers1 <= takeovers0 {
		e2etest.Errorf(t, "standby takeovers %.0f -> %.0f: the standby never served while the node cache was down", takeovers0, takeovers1)
	}
	e.checkServing(t)
}

// nodeCacheRestarts is the node cache container's restart count.
func (e *env) nodeCacheRestarts() (int, error) {
	restarts, _, err := e.nodeCacheContainer()
	return restarts, err
}

// waitNodeCacheRestarted waits until the node cache container has restarted
// since it had `before` restarts, and is ready.
func (e *env) waitNodeCacheRestarted(before int) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		restarts, ready, err := e.nodeCacheContainer()
		switch {
		case err == nil && restarts > before && ready:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("node cache not restarted and ready after 2m: %d restarts (before %d), ready %v, %v", restarts, before, ready, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// nodeCacheContainer reads the restart count and readiness of the node
// cache pod's container (the cluster has one node, so one pod).
func (e *env) nodeCacheContainer() (restarts int, ready bool, err error) {
	out, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "get", "pod", "-l", "app.kubernetes.io/name="+localdns.NodeCacheDS,
		"-o", `jsonpath={range .items[*]}{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}{"\n"}{end}`)
	if err != nil {
		return 0, false, err
	}
	var readyText string
	if _, err := fmt.Sscan(strings.TrimSpace(out), &restarts, &readyText); err != nil || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		return 0, false, fmt.Errorf("node cache pods %q: want one", out)
	}
	return restarts, readyText == "true", nil
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

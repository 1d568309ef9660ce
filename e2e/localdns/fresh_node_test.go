package localdns_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/localdns/localdns/e2e/clients"
	"github.com/localdns/localdns/e2e/e2etest"
	"github.com/localdns/localdns/e2e/localdns"
)

// A pod's first lookups (issue 14, items 4 and 5): on a node whose node
// cache is not there yet, and right after the pod starts.

// cloudGateway is the route that makes this node drop packets to an
// address it does not have, in silence, as a cloud node's gateway does;
// without it the node (no route out) answers "network unreachable" at once
// and hides the exposure.
const cloudGateway = "blackhole 169.254.0.0/16"

// freshLoads are pods that start and resolve on a node whose node cache is
// not serving: glibc and Go in node cache mode, musl in stub mode.
func freshLoads(prefix string, d time.Duration) []*backgroundLoad {
	return []*backgroundLoad{
		optedLoad(prefix+"-glibc", clients.Glibc, serviceHost, 4, d),
		optedLoad(prefix+"-musl", clients.Musl, serviceHost, 4, d),
		optedLoad(prefix+"-go", clients.Go, serviceHost, 4, d),
	}
}

// freshNode: a node whose pods start before its node cache (a new node, a
// reboot), emulated on this node: the cloud gateway's silent drop, the node
// cache and its standby removed with their address and rules (the
// uninstall's steps 3 and 4), then
//  1. without the startup taint (today): pods start and resolve while the
//     node cache comes back (kubectl apply -k of the overlay): until it
//     serves, each lookup waits out the pod's 1 s timeout for the fallback
//     nameserver. Measured; asserted only to bite (glibc and Go see
//     lookups >= 1 s), as the seeds' baseline is;
//  2. with it: the node tainted as kubelet --register-with-taints does,
//     the same pods created and left Pending, the node cache brought back
//     with the startup-taint overlay: it removes the taint once it serves,
//     no pod is scheduled before that, and the pods see no error and no
//     lookup >= 1 s.
//
// The install is the startup-taint overlay's afterwards.
func (e *env) freshNode(t *testing.T) {
	if e.helm {
		t.Skip("the startup taint is applied here as its kustomize overlay")
	}
	e.nodeRoute(t, "add")
	t.Cleanup(func() { e.nodeRoute(t, "del") })

	e.removeNodeCache(t)
	// Long enough to outlast the node cache's return: the apply, the
	// rollouts and the webhook's first mutation took 8-17 s, and 26 s once
	// (the apply alone 15.7 s) behind pods starting at once.
	today := freshLoads("fresh", 45*time.Second)
	launched := time.Now()
	e.launchLoads(today...)
	tl := &timeline{origin: launched}
	for _, bl := range today {
		// A stub-mode pod's client starts once its stub's startup probe
		// has passed.
		if err := e.waitRunning(bl.name); err != nil {
			e2etest.Fatalf(t, "%v", err)
		}
		tl.mark(time.Now(), "%s running", bl.name)
	}
	time.Sleep(3 * time.Second) // the pods resolve with no node cache
	tl.mark(time.Now(), "kubectl apply -k %s", e.overlay)
	if err := localdns.ApplyOverlay(e.ctx, e.c, e.repo, e.overlay); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	tl.mark(time.Now(), "node cache and standby rolled out, webhook mutating")
	e.checkStillRunning(t, today...)
	for _, bl := range finished(t, today...) {
		t.Logf("without the startup taint, %s: %d of %d lookups >= 1 s (max %s), %d errors, first answers after %s",
			bl.kind, bl.res.Over1s, bl.res.Lookups, bl.res.Max.Round(time.Millisecond), bl.res.Errors, bl.res.First.Round(time.Millisecond))
		if len(bl.res.SlowAt) > 0 {
			tl.add(fmt.Sprintf("%s's lookups >= 1 s started at %s", bl.kind, tl.slowAt(bl)))
		}
		if bl.kind != clients.Musl && bl.res.DNSOver1s() == 0 {
			e2etest.Errorf(t, "%s started before the node cache: no lookup took 1 s or more: the cloud gateway's emulation did not bite", bl.name)
		}
	}
	t.Logf("without the startup taint (from the pods' creation):\n  %s", tl)

	e.removeNodeCache(t)
	node := e.c.Name()
	if _, err := e.c.Kubectl(e.ctx, nil, "taint", "nodes", node, localdns.StartupTaint+"=:NoSchedule"); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	t.Cleanup(func() {
		// Gone already unless the node cache failed to remove it.
		_, _ = e.c.Kubectl(e.ctx, nil, "taint", "nodes", node, localdns.StartupTaint+"-")
	})
	tainted := freshLoads("tainted", 10*time.Second)
	e.launchLoads(tainted...)
	if err := e.waitUnschedulable(tainted); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	watch := e.watchScheduling(node, tainted)
	e.overlay = localdns.StartupTaintOverlay
	back := time.Now()
	if err := localdns.ApplyOverlay(e.ctx, e.c, e.repo, e.overlay); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	report := <-watch
	t.Logf("startup taint: node cache ready %s after kubectl apply -k %s; taint removed after %s, pods scheduled after %s",
		time.Since(back).Round(100*time.Millisecond), e.overlay, report.untainted.Round(100*time.Millisecond), report.scheduled.Round(100*time.Millisecond))
	if report.err != nil {
		e2etest.Errorf(t, "%v", report.err)
	}
	waitLoads(t, false, tainted...)
	e.logNodeCacheMetrics(t, "with the startup taint", "localdns_nodecache_startup_taint_removals_total")
	lines, err := localdns.NodeCacheMetrics(e.ctx, e.c, `localdns_nodecache_startup_taint_removals_total{result="removed"}`)
	if err != nil || len(lines) != 1 || strings.HasSuffix(lines[0], " 0") {
		e2etest.Errorf(t, "node cache's taint removals %q (%v), want one removed", lines, err)
	}
}

// nodeRoute adds or deletes the cloud gateway's route in the node.
func (e *env) nodeRoute(t *testing.T, verb string) {
	t.Helper()
	if out, err := e.c.NodeCommand(e.ctx, append([]string{"ip", "route", verb}, strings.Fields(cloudGateway)...)...).CombinedOutput(); err != nil {
		e2etest.Errorf(t, "ip route %s %s: %v: %s", verb, cloudGateway, err, out)
	}
}

// removeNodeCache removes the node cache and its standby with their address
// and rules, and checks the node is clean.
func (e *env) removeNodeCache(t *testing.T) {
	t.Helper()
	if err := localdns.RemoveNodeCache(e.ctx, e.c, e.repo); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	e.checkNodeClean(t, "node cache removed")
}

// podScheduling is the part of a pod the startup taint's checks read.
type podScheduling struct {
	Spec struct {
		NodeName string `json:"nodeName"`
	} `json:"spec"`
	Status struct {
		Conditions []podCondition `json:"conditions"`
	} `json:"status"`
}

type podCondition struct {
	Type   string `json:"type"`
	Status string `json:"status"`
	Reason string `json:"reason"`
}

// unschedulable reports whether the scheduler found no node for the pod.
func (p podScheduling) unschedulable() bool {
	return slices.Contains(p.Status.Conditions, podCondition{Type: "PodScheduled", Status: "False", Reason: "Unschedulable"})
}

func (e *env) getPodScheduling(name string) (podScheduling, error) {
	var p podScheduling
	out, err := e.c.Kubectl(e.ctx, nil, "-n", optedNS, "get", "pod", name, "-o", "json")
	if err != nil {
		return p, err
	}
	return p, json.Unmarshal([]byte(out), &p)
}

// waitUnschedulable waits until the scheduler has found no node for each
// load's pod (PodScheduled False, reason Unschedulable).
func (e *env) waitUnschedulable(loads []*backgroundLoad) error {
	return e.c.Step("pods Pending: the scheduler finds no node for them", func() error {
		return waitUntil(time.Minute, func() error {
			for _, bl := range loads {
				p, err := e.getPodScheduling(bl.name)
				if err != nil || !p.unschedulable() || p.Spec.NodeName != "" {
					return fmt.Errorf("pod %s not unschedulable: %+v (%v)", bl.name, p, err)
				}
			}
			return nil
		})
	})
}

// schedulingReport is when the taint went and the pods were placed, from
// the watch's start, and the first pod placed while the taint stood.
type schedulingReport struct {
	untainted, scheduled time.Duration
	err                  error
}

// watchScheduling follows the node's startup taint and the loads' pods
// until every pod is scheduled (or 3 minutes pass): each round reads the
// pods first, then the node, so a pod seen scheduled on a node still
// tainted was scheduled while the taint stood.
func (e *env) watchScheduling(node string, loads []*backgroundLoad) <-chan schedulingReport {
	ch := make(chan schedulingReport, 1)
	start := time.Now()
	go func() {
		var r schedulingReport
		defer func() { ch <- r }()
		var once sync.Once
		for ; time.Since(start) < 3*time.Minute; time.Sleep(200 * time.Millisecond) {
			scheduled := 0
			for _, bl := range loads {
				if p, err := e.getPodScheduling(bl.name); err == nil && p.Spec.NodeName != "" {
					scheduled++
				}
			}
			taints, err := e.c.Kubectl(e.ctx, nil, "get", "node", node, "-o", "jsonpath={.spec.taints[*].key}")
			if err != nil {
				continue
			}
			tainted := slices.Contains(strings.Fields(taints), localdns.StartupTaint)
			if !tainted {
				once.Do(func() { r.untainted = time.Since(start) })
			}
			if scheduled > 0 && tainted && r.err == nil {
				r.err = fmt.Errorf("%d pods scheduled while the node still had the startup taint", scheduled)
			}
			if scheduled == len(loads) {
				r.scheduled = time.Since(start)
				return
			}
		}
		r.err = fmt.Errorf("pods not all scheduled within 3m (taint removed after %s)", r.untainted)
	}()
	return ch
}

// firstLookups: pods whose client looks the seeds' Service up the moment
// it starts (4 threads, 8 lookups), started together, two of each: glibc
// and Go in node cache mode, musl and glibc in stub mode (their client
// starts once the stub's startup probe has passed): no error, none >= 1 s.
// Each client's time from its start to every thread's first answer is
// logged.
func (e *env) firstLookups(t *testing.T) {
	stub := map[string]string{localdns.ModeAnnotation: localdns.ModeStub}
	l := clients.Load{Host: serviceHost, Concurrency: 4, Duration: 20 * time.Second, Slow: time.Second, MaxLookups: 8}
	var pods []*backgroundLoad
	for i := 1; i <= 2; i++ {
		pods = append(pods,
			&backgroundLoad{name: fmt.Sprintf("first-glibc-%d", i), kind: clients.Glibc, load: l},
			&backgroundLoad{name: fmt.Sprintf("first-go-%d", i), kind: clients.Go, load: l},
			&backgroundLoad{name: fmt.Sprintf("first-musl-%d", i), kind: clients.Musl, load: l},
			&backgroundLoad{name: fmt.Sprintf("first-glibc-stub-%d", i), kind: clients.Glibc, load: l, annotations: stub},
		)
	}
	e.launchLoads(pods...)
	var firsts []string
	for _, bl := range finished(t, pods...) {
		checkClean(t, bl.name, bl.res, false)
		firsts = append(firsts, fmt.Sprintf("%s %s", bl.name, bl.res.First.Round(100*time.Microsecond)))
	}
	t.Logf("from each client's start to every thread's first answer: %s", strings.Join(firsts, ", "))
	for _, p := range []struct{ name, mode string }{{"first-glibc-1", localdns.ModeNodeCache}, {"first-glibc-stub-1", localdns.ModeStub}} {
		if _, err := localdns.CheckPod(e.ctx, e.c, optedNS, p.name, p.mode); err != nil {
			e2etest.Errorf(t, "%v", err)
		}
	}
}

// kubectlPlugin: kubectl-localdns against the healthy install, as an
// operator runs it (status, pods, explain, restart).
func (e *env) kubectlPlugin(t *testing.T) {
	if err := localdns.CheckKubectlPlugin(e.ctx, e.c, e.repo, t.TempDir()); err != nil {
		e2etest.Errorf(t, "%v", err)
	}
}

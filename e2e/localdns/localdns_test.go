package localdns_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/localdns/localdns/e2e/clients"
	"github.com/localdns/localdns/e2e/cluster"
	"github.com/localdns/localdns/e2e/dnsload"
	"github.com/localdns/localdns/e2e/e2etest"
	"github.com/localdns/localdns/e2e/localdns"
	"github.com/localdns/localdns/e2e/seeds"
)

// TestMain repeats the failures at the end of the long verbose output.
func TestMain(m *testing.M) { os.Exit(e2etest.Main(m)) }

// Namespaces of the scenarios: one never opted in, one opted in.
const (
	plainNS = "plain"
	optedNS = "opted"
)

// env is one booted cluster with localdns installed, shared by the
// scenarios, which run in order (each leaves the cluster as the next one
// expects it; the last uninstalls).
type env struct {
	ctx  context.Context
	c    *cluster.Cluster
	repo string
	// full runs every scenario, the opted-in seeds' test in its own
	// shape and with external names resolved beside it; otherwise the
	// seeds' test runs 10 s per client, alone, and the fullOnly
	// scenarios are left out, to keep make test well under 30 minutes.
	full bool
}

// scenario is one named step of a cluster run.
type scenario struct {
	name string
	run  func(e *env, t *testing.T)
	// fullOnly scenarios run in full runs alone (iptables mode): they
	// exercise kube-dns and the node cache's path to it, which kube-proxy's
	// mode does not change (both spread new connections over the endpoints
	// at random).
	fullOnly bool
}

// scenarios are the e2e issue's, in order: correctness through the real
// path, the seeds' test (beside external names in full runs), node cache
// SIGKILL and force-deleted pod under load, rolling update under load,
// kube-dns rolled, scaled up, scaled down and a pod of it force-deleted
// under load, kube-dns down, webhook down, uninstall.
var scenarios = []scenario{
	{name: "correctness", run: (*env).correctness},
	{name: "seeds", run: (*env).seeds},
	{name: "nodecache-sigkill", run: (*env).nodeCacheKilled},
	{name: "rolling-update", run: (*env).rollingUpdate},
	{name: "kube-dns-rolled", run: (*env).kubeDNSRolled, fullOnly: true},
	{name: "kube-dns-scaled-up", run: (*env).kubeDNSScaledUp, fullOnly: true},
	{name: "kube-dns-scaled-down", run: (*env).kubeDNSScaledDown, fullOnly: true},
	{name: "kube-dns-pod-force-deleted", run: (*env).kubeDNSPodForceDeleted, fullOnly: true},
	{name: "kube-dns-down", run: (*env).kubeDNSDown},
	{name: "webhook-down", run: (*env).webhookDown},
	{name: "uninstall", run: (*env).uninstall},
}

// TestLocaldnsOnCluster boots one real node (kube-proxy in iptables mode),
// installs localdns from its own images and manifests, and runs every
// scenario on it in full. It needs root and the provisioned binaries, so
// it runs only with LOCALDNS_E2E=1.
func TestLocaldnsOnCluster(t *testing.T) {
	testOnCluster(t, cluster.ProxyIPTables, "localdns-e2e-ld", true)
}

// TestLocaldnsOnClusterNFTables runs the scenarios again with kube-proxy
// in nftables mode (NodeLocal DNSCache does not support it), not in full
// (see env.full), to keep make test well under 30 minutes.
func TestLocaldnsOnClusterNFTables(t *testing.T) {
	testOnCluster(t, cluster.ProxyNFTables, "localdns-e2e-ldnft", false)
}

func testOnCluster(t *testing.T, mode, name string, full bool) {
	cfg := cluster.DefaultConfig()
	cfg.Name = name // fixed: a crashed earlier run's leftovers are found
	cfg.ProxyMode = mode
	e := bootEnv(t, cfg)
	e.full = full
	for _, sc := range scenarios {
		if sc.fullOnly && !full {
			continue
		}
		t.Run(sc.name, func(t *testing.T) { sc.run(e, t) })
	}
}

// bootEnv boots cfg's cluster (the product images build meanwhile, and it
// is torn down when the test ends), installs localdns (Install: the
// overlay of the cluster's IP families), imports the load clients and
// creates the seeds' Service and the scenarios' namespaces.
func bootEnv(t *testing.T, cfg cluster.Config) *env {
	ctx, repo := e2etest.Start(t)
	work := t.TempDir()

	// The product images build while the cluster boots.
	type built struct {
		imgs localdns.Images
		err  error
	}
	images := make(chan built, 1)
	go func() {
		imgs, err := localdns.BuildImages(ctx, repo, filepath.Join(work, "product"))
		images <- built{imgs, err}
	}()
	cfg.Progress = e2etest.LogWriter(t)
	start := time.Now()
	c, err := cluster.Up(ctx, cfg)
	if err != nil {
		<-images
		e2etest.Fatalf(t, "boot: %v", err)
	}
	t.Logf("boot took %s", time.Since(start).Round(100*time.Millisecond))
	t.Cleanup(func() {
		start := time.Now()
		if err := c.Down(); err != nil {
			e2etest.Errorf(t, "teardown: %v", err)
		}
		t.Logf("teardown took %s", time.Since(start).Round(100*time.Millisecond))
	})
	b := <-images
	if b.err != nil {
		e2etest.Fatalf(t, "build localdns images: %v", b.err)
	}
	e := &env{ctx: ctx, c: c, repo: repo}

	start = time.Now()
	if err := localdns.Install(ctx, c, repo, b.imgs); err != nil {
		e2etest.Fatalf(t, "install: %v\nlogs in %s", err, c.LogsDir())
	}
	t.Logf("install took %s", time.Since(start).Round(100*time.Millisecond))
	st, err := localdns.ReadNodeState(ctx, c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	if !st.HasSetup() {
		e2etest.Fatalf(t, "after install the node lacks the node cache's address or the localdns: rules of a family (%s): %+v", cfg.IPFamilies, st)
	}
	t.Logf("node: %s; %d localdns rules", st.Addresses, len(st.Rules))

	clientsDir := filepath.Join(work, "clients")
	if err := os.Mkdir(clientsDir, 0o755); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	if err := seeds.Prepare(ctx, c, repo, clientsDir, seeds.Default()); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	for _, ns := range []struct {
		name  string
		optIn bool
	}{{plainNS, false}, {optedNS, true}} {
		if err := localdns.EnsureNamespace(ctx, c, ns.name, ns.optIn); err != nil {
			e2etest.Fatalf(t, "%v", err)
		}
	}
	return e
}

// modeOf is the mode the webhook gives a client kind under localdns.io/mode:
// auto (its images are named after it: the musl one matches "musl").
func modeOf(kind string) string {
	if kind == clients.Musl {
		return localdns.ModeStub
	}
	return localdns.ModeNodeCache
}

var autoMode = map[string]string{localdns.ModeAnnotation: "auto"}

// load runs one client pod to completion and returns its result.
func (e *env) load(t *testing.T, ns, name, kind string, l clients.Load, annotations map[string]string) dnsload.Result {
	t.Helper()
	res, err := e.runLoad(ns, name, kind, l, annotations)
	if err != nil {
		e2etest.Fatalf(t, "%s: %v\nlogs in %s", name, err, e.c.LogsDir())
	}
	t.Logf("%s (%s, %d x %s of %s): %s", name, kind, l.Concurrency, l.Duration, l.Host, res)
	return res
}

func (e *env) runLoad(ns, name, kind string, l clients.Load, annotations map[string]string) (dnsload.Result, error) {
	manifest, err := clients.PodManifest(ns, name, kind, l, annotations)
	if err != nil {
		return dnsload.Result{}, err
	}
	logs, err := e.c.RunPod(e.ctx, ns, name, manifest)
	if err != nil {
		return dnsload.Result{}, err
	}
	return clients.ParseResult([]byte(logs))
}

// backgroundLoad starts client pods and returns a function that waits for
// their results, once each pod runs (the load is on).
type backgroundLoad struct {
	name, kind string
	load       clients.Load
	done       chan struct{}
	res        dnsload.Result
	err        error
}

// launchLoads creates the loads' pods and returns at once.
func (e *env) launchLoads(loads ...*backgroundLoad) {
	for _, bl := range loads {
		bl.done = make(chan struct{})
		go func() {
			defer close(bl.done)
			bl.res, bl.err = e.runLoad(optedNS, bl.name, bl.kind, bl.load, autoMode)
		}()
	}
}

// startLoads launches the loads and returns once each pod runs (its load
// is on).
func (e *env) startLoads(t *testing.T, loads ...*backgroundLoad) {
	t.Helper()
	e.launchLoads(loads...)
	for _, bl := range loads {
		if err := e.waitRunning(bl.name); err != nil {
			e2etest.Fatalf(t, "%v", err)
		}
	}
}

// waitLoads waits for the loads and asserts none failed and none took
// 1 s or more (5 s or more when over5sOnly).
func waitLoads(t *testing.T, over5sOnly bool, loads ...*backgroundLoad) {
	t.Helper()
	for _, bl := range finished(t, loads...) {
		checkClean(t, bl.name, bl.res, over5sOnly)
	}
}

// finished waits for the loads, logs their results and returns the loads
// that have one (a load whose pod failed is an error).
func finished(t *testing.T, loads ...*backgroundLoad) []*backgroundLoad {
	t.Helper()
	var done []*backgroundLoad
	for _, bl := range loads {
		<-bl.done
		if bl.err != nil {
			e2etest.Errorf(t, "%s: %v", bl.name, bl.err)
			continue
		}
		t.Logf("%s (%s, %d x %s of %s): %s", bl.name, bl.kind, bl.load.Concurrency, bl.load.Duration, bl.load.Host, bl.res)
		done = append(done, bl)
	}
	return done
}

// checkClean asserts a load had lookups, no error and none that took 1 s
// or more (5 s or more when over5sOnly).
func checkClean(t *testing.T, what string, res dnsload.Result, over5sOnly bool) {
	t.Helper()
	slow := res.Over1s
	if over5sOnly {
		slow = res.Over5s
	}
	if res.Lookups == 0 || res.Errors != 0 || slow != 0 {
		e2etest.Errorf(t, "%s: %d lookups, %d errors (%s), %d >= 1 s, %d >= 5 s (max %s)", what, res.Lookups, res.Errors,
			res.FirstError, res.Over1s, res.Over5s, res.Max)
	}
}

// waitRunning waits until the pod exists and runs (its load is on).
func (e *env) waitRunning(pod string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		phase, err := e.c.Kubectl(e.ctx, nil, "-n", optedNS, "get", "pod", pod, "--ignore-not-found", "-o", "jsonpath={.status.phase}")
		switch {
		case err != nil:
			return err
		case phase == "Running":
			return nil
		case phase == "Succeeded" || phase == "Failed":
			return fmt.Errorf("pod %s %s before the drill", pod, phase)
		case time.Now().After(deadline):
			return fmt.Errorf("pod %s not running after 2m (phase %q)", pod, phase)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// serviceHost is the seeds' Service, looked up through the search path.
var serviceHost = seeds.Default().Service + "." + seeds.Default().ServiceNamespace

// correctness: the pods' stored dnsConfig and kubelet-written resolv.conf
// are the design's pod view (of the cluster's IP families); A or AAAA,
// SRV, PTR and NXDOMAIN answers through the node cache and through the
// stub; getaddrinfo (glibc, musl in stub mode) and Go's resolver find a
// Service through the search path, a large answer over TCP, and get
// NXDOMAIN as an error.
func (e *env) correctness(t *testing.T) {
	primary := e.c.Primary()
	for _, mode := range []string{localdns.ModeNodeCache, localdns.ModeStub} {
		// busybox's nslookup asks the first nameserver: the node cache, or
		// the stub. It ignores the search path, so names are given in full.
		api := "kubernetes.default.svc." + cluster.ClusterDomain
		script := strings.Join([]string{
			"nslookup " + api,
			"nslookup -type=SRV _https._tcp." + api,
			"nslookup " + primary.APIServiceIP.String(),
			"nslookup upstream.test",
			"nslookup nosuch.default.svc." + cluster.ClusterDomain + " 2>&1 || true",
		}, " && ")
		name := "nslookup-" + mode
		out, err := localdns.ShellPod(e.ctx, e.c, optedNS, name, mode, script)
		if err != nil {
			e2etest.Fatalf(t, "%s mode: %v", mode, err)
		}
		resolv, err := localdns.CheckPod(e.ctx, e.c, optedNS, name, mode)
		if err != nil {
			e2etest.Errorf(t, "%v", err)
		}
		t.Logf("kubelet-written resolv.conf, %s mode:\n%s", mode, resolv)
		wants := []string{
			"Address: " + primary.APIServiceIP.String(), // A (AAAA in an IPv6 cluster)
			"service = 0 100 443 " + api,                // SRV of the named port https
			"name = " + api,                             // PTR of the kubernetes ClusterIP
			"NXDOMAIN",
		}
		for _, f := range e.c.Families() { // forwarded: an address of each family
			wants = append(wants, "Name:\tupstream.test\nAddress: "+f.UpstreamIP.String())
		}
		for _, want := range wants {
			if !strings.Contains(out, want) {
				e2etest.Errorf(t, "%s mode: nslookup output lacks %q:\n%s", mode, want, out)
			}
		}
	}

	// Every client pod at once: 20 lookups each, a light load together.
	notFound := map[*backgroundLoad]bool{}
	var lookups []*backgroundLoad
	for _, kind := range clients.Kinds {
		for _, tt := range []struct {
			host      string
			wantFound bool
		}{
			{serviceHost, true},              // search path, ndots:5
			{cluster.LargeAnswerName, true},  // truncated over UDP: retried over TCP, or (musl < 1.2.4) the records that fit
			{"nosuch-e2e." + optedNS, false}, // NXDOMAIN after every search suffix
		} {
			bl := &backgroundLoad{name: fmt.Sprintf("lookup-%s-%s", kind, strings.ReplaceAll(strings.Split(tt.host, ".")[0], "_", "")),
				kind: kind, load: clients.Load{Host: tt.host, Concurrency: 2, Duration: 20 * time.Second, Slow: time.Second, MaxLookups: 20}}
			lookups = append(lookups, bl)
			notFound[bl] = !tt.wantFound
		}
	}
	e.launchLoads(lookups...)
	for _, bl := range finished(t, lookups...) {
		res, l := bl.res, bl.load
		wantErrors := int64(0)
		if notFound[bl] {
			wantErrors = res.Lookups
		}
		if res.Lookups != l.MaxLookups || res.Errors != wantErrors || res.Over1s != 0 {
			e2etest.Errorf(t, "%s %s: %d lookups, %d errors (%s), %d >= 1 s; want %d lookups, %d errors, none slow",
				bl.kind, l.Host, res.Lookups, res.Errors, res.FirstError, res.Over1s, l.MaxLookups, wantErrors)
		}
		if _, err := localdns.CheckPod(e.ctx, e.c, optedNS, bl.name, modeOf(bl.kind)); err != nil {
			e2etest.Errorf(t, "%v", err)
		}
	}
}

// seeds: the seeds' test with the conntrack race emulated. Not opted in,
// every client sees lookups of 1 s or more (the emulation works); opted in
// (musl in stub mode), none does, in full runs also while other pods
// resolve external names (see startExternalNames).
func (e *env) seeds(t *testing.T) {
	e.seedsBaseline(t)
	e.seedsOptedIn(t)
}

// seedsBaseline: not opted in, every client sees lookups of 1 s or more.
func (e *env) seedsBaseline(t *testing.T) {
	base := seeds.Default()
	base.Namespace = plainNS
	base.CDuration, base.GoDuration = 8*time.Second, 8*time.Second
	rows, err := seeds.RunClients(e.ctx, e.c, base)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	logTable(t, "baseline, namespace not opted in", rows)
	for _, r := range rows {
		if r.Over1s == 0 {
			e2etest.Errorf(t, "baseline %s: no lookup took 1 s or more: the race emulation did not bite", r.Client)
		}
	}
}

// seedsOptedIn: opted in, no client sees a lookup of 1 s or more.
func (e *env) seedsOptedIn(t *testing.T) {
	opted := seeds.Default() // the seeds' own shape: 50 x 15 s, Go 200 x 30 s
	if !e.full {
		opted.CDuration, opted.GoDuration = 10*time.Second, 10*time.Second
	}
	opted.Namespace = optedNS
	opted.Annotations = autoMode
	var external *externalNames
	if e.full {
		external = e.startExternalNames(t)
	}
	snmp0, err := localdns.NodeSNMP(e.ctx, e.c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	rows, err := seeds.RunClients(e.ctx, e.c, opted)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	if external != nil {
		e.checkExternalNames(t, external)
	}
	if snmp1, err := localdns.NodeSNMP(e.ctx, e.c); err == nil {
		t.Logf("node during the opted-in run: %s", localdns.SNMPDelta(snmp0, snmp1, "Udp.InErrors", "Udp.RcvbufErrors"))
	}
	// What the node cache saw, for a post-mortem of any slow lookup.
	e.logNodeCacheMetrics(t, "after the opted-in run", "localdns_nodecache_upstream_", "localdns_nodecache_miss_",
		"localdns_nodecache_requests_total", "localdns_nodecache_responses_total", "localdns_nodecache_cache_",
		"localdns_nodecache_client_limited_total", "localdns_nodecache_coalesced_total")
	title := "localdns, namespace opted in (glibc, Go: node cache; musl: stub)"
	if external != nil {
		title += ", beside external names"
	}
	logTable(t, title, rows)
	for _, r := range rows {
		checkClean(t, "localdns "+r.Client, r.Result, false)
		if _, err := localdns.CheckPod(e.ctx, e.c, optedNS, "seeds-"+r.Client, modeOf(r.Client)); err != nil {
			e2etest.Errorf(t, "%v", err)
		}
	}
}

func logTable(t *testing.T, title string, rows []seeds.Row) {
	// The machine is shared: its load explains tail latencies.
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		title += ", machine load average " + strings.Join(strings.Fields(string(load))[:3], " ")
	}
	var b strings.Builder
	if err := seeds.WriteTable(&b, rows); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	t.Logf("%s:\n%s", title, b.String())
}

// glibcAndGoLoad is the load the failure drills run through: glibc and Go
// clients in node cache mode, for d.
func glibcAndGoLoad(prefix string, d time.Duration) []*backgroundLoad {
	return []*backgroundLoad{
		{name: prefix + "-glibc", kind: clients.Glibc, load: clients.Load{Host: serviceHost, Concurrency: 10, Duration: d, Slow: time.Second, MaxLookups: 10_000_000}},
		{name: prefix + "-go", kind: clients.Go, load: clients.Load{Host: serviceHost, Concurrency: 20, Duration: d, Slow: time.Second, MaxLookups: 10_000_000}},
	}
}

// nodeCacheKilled: the node cache process SIGKILLed, then its pod
// force-deleted, under load: no lookup fails, none takes 5 s (glibc falls
// back to the ClusterIP at once, the address answering port-unreachable),
// and the restarted node cache serves again.
func (e *env) nodeCacheKilled(t *testing.T) {
	loads := glibcAndGoLoad("kill", 30*time.Second)
	e.startLoads(t, loads...)

	time.Sleep(3 * time.Second) // mid-load
	pids, err := localdns.NodeCachePIDs(e.c)
	if err != nil || len(pids) == 0 {
		e2etest.Fatalf(t, "node cache processes: %v %v", pids, err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			e2etest.Fatalf(t, "kill -9 %d: %v", pid, err)
		}
	}
	t.Logf("SIGKILLed node cache pid %v", pids)
	if err := e.waitNodeCacheReady(); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	if _, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "delete", "pod", "-l", "app.kubernetes.io/name="+localdns.NodeCacheDS,
		"--force", "--grace-period=0"); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	t.Log("force-deleted the node cache pod")
	if err := e.waitNodeCacheReady(); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	waitLoads(t, true, loads...)
	e.checkServing(t)
}

// waitNodeCacheReady waits until the DaemonSet's pod is ready again.
func (e *env) waitNodeCacheReady() error {
	start := time.Now()
	return e.c.Step("node cache pod ready", func() error {
		for {
			out, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "get", "pod", "-l", "app.kubernetes.io/name="+localdns.NodeCacheDS,
				"-o", `jsonpath={range .items[*]}{.metadata.deletionTimestamp}/{.status.containerStatuses[0].ready}{"\n"}{end}`)
			if err == nil && strings.TrimSpace(out) == "/true" {
				return nil
			}
			if time.Since(start) > 2*time.Minute {
				return fmt.Errorf("node cache pods not ready after 2m: %q %v", out, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
}

// checkServing proves the node cache answers pods again: its request
// counter grows while a short glibc load runs.
func (e *env) checkServing(t *testing.T) {
	before, err := localdns.NodeCacheRequests(e.ctx, e.c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	l := clients.Load{Host: serviceHost, Concurrency: 2, Duration: 20 * time.Second, Slow: time.Second, MaxLookups: 50}
	e.load(t, optedNS, "serving-glibc", clients.Glibc, l, autoMode)
	after, err := localdns.NodeCacheRequests(e.ctx, e.c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	t.Logf("node cache requests: %.0f -> %.0f", before, after)
	if after-before < float64(l.MaxLookups) {
		e2etest.Errorf(t, "node cache counted %.0f requests during %d lookups: traffic did not return to it", after-before, l.MaxLookups)
	}
}

// rollingUpdate: `kubectl rollout restart` of the node cache under load:
// no failed and no slow lookups (surge pod, SO_REUSEPORT, setup adopted).
func (e *env) rollingUpdate(t *testing.T) {
	// The replaced pod's log, for a post-mortem of any lost query.
	var oldLog strings.Builder
	follow := e.c.KubectlCommand(e.ctx, "-n", localdns.Namespace, "logs", "-f", "--timestamps", "daemonset/"+localdns.NodeCacheDS)
	follow.Stdout, follow.Stderr = &oldLog, &oldLog
	if err := follow.Start(); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	defer func() {
		_ = follow.Process.Kill()
		_ = follow.Wait()
		if t.Failed() {
			t.Logf("the replaced node cache pod's log:\n%s", oldLog.String())
		}
	}()
	snmp0, err := localdns.NodeSNMP(e.ctx, e.c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	loads := glibcAndGoLoad("roll", 25*time.Second)
	e.startLoads(t, loads...)
	time.Sleep(3 * time.Second) // mid-load
	if err := e.c.Step("kubectl rollout restart daemonset "+localdns.NodeCacheDS, func() error {
		if _, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "rollout", "restart", "daemonset/"+localdns.NodeCacheDS); err != nil {
			return err
		}
		_, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "rollout", "status", "daemonset/"+localdns.NodeCacheDS, "--timeout=2m")
		return err
	}); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	waitLoads(t, false, loads...)
	if snmp1, err := localdns.NodeSNMP(e.ctx, e.c); err == nil {
		t.Logf("node during the rolling update: %s", localdns.SNMPDelta(snmp0, snmp1, "Udp.NoPorts", "Udp.InErrors", "Udp.RcvbufErrors", "Icmp.OutDestUnreachs"))
	}
	e.logNodeCacheMetrics(t, "of the new node cache", "localdns_nodecache_setup_", "localdns_nodecache_malformed")
	st, err := localdns.ReadNodeState(e.ctx, e.c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	if !st.HasSetup() {
		e2etest.Errorf(t, "after the rolling update the node lacks its setup: %+v", st)
	}
	e.checkServing(t)
}

// kubeDNSDown: kube-dns scaled to 0. Names the node cache has seen keep
// resolving (stale once their TTL passed), others fail fast with SERVFAIL,
// nothing stalls 5 s; back up, new names resolve.
func (e *env) kubeDNSDown(t *testing.T) {
	warm := clients.Load{Host: serviceHost, Concurrency: 1, Duration: 10 * time.Second, Slow: time.Second, MaxLookups: 5}
	e.load(t, optedNS, "warm-glibc", clients.Glibc, warm, autoMode)
	warmed := time.Now()
	if err := e.scaleKubeDNS(0); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	t.Cleanup(func() { _ = e.scaleKubeDNS(2) })
	// kube-dns gives Service records a TTL of 30 s: past it, only a stale
	// answer can come.
	if wait := 31*time.Second - time.Since(warmed); wait > 0 {
		t.Logf("waiting %s for the cached answer's TTL to pass", wait.Round(time.Second))
		time.Sleep(wait)
	}
	cached := clients.Load{Host: serviceHost, Concurrency: 5, Duration: 5 * time.Second, Slow: time.Second, MaxLookups: 10_000_000}
	for _, kind := range []string{clients.Glibc, clients.Go} {
		res := e.load(t, optedNS, "stale-"+kind, kind, cached, autoMode)
		if res.Lookups == 0 || res.Errors != 0 || res.Over1s != 0 {
			e2etest.Errorf(t, "%s, cached name with kube-dns down: %d lookups, %d errors (%s), %d >= 1 s (max %s)", kind, res.Lookups, res.Errors, res.FirstError, res.Over1s, res.Max)
			e.logNodeCacheMetrics(t, "serving stale", downMetrics...)
		}
	}
	// One query straight at the node cache, from the node: the rcode and
	// how long the node cache takes to give it.
	start := time.Now()
	out, err := e.c.NodeCommand(e.ctx, "dig", "+tries=1", "+time=5", "@"+localdns.LocalIP,
		"never-seen-dig.default.svc."+cluster.ClusterDomain).CombinedOutput()
	took := time.Since(start)
	t.Logf("dig @%s of an uncached name with kube-dns down: %s in %s", localdns.LocalIP, digStatus(string(out)), took.Round(time.Millisecond))
	if err != nil || digStatus(string(out)) != "SERVFAIL" || took >= time.Second {
		e2etest.Errorf(t, "node cache, uncached name with kube-dns down: %q after %s (%v), want SERVFAIL within 1 s (the pods' resolver timeout)",
			digStatus(string(out)), took.Round(time.Millisecond), err)
	}
	uncached := clients.Load{Host: "never-seen-e2e.default", Concurrency: 2, Duration: 20 * time.Second, Slow: time.Second, MaxLookups: 20}
	// Without the fallback nameserver the pod sees the node cache alone:
	// its SERVFAIL, at once (every server down: nothing sent, see forward).
	noFallback := map[string]string{localdns.ModeAnnotation: "auto", "localdns.io/fallback": "false"}
	for _, kind := range []string{clients.Glibc, clients.Go} {
		res := e.load(t, optedNS, "nofallback-"+kind, kind, uncached, noFallback)
		if res.Errors != res.Lookups || res.Over1s != 0 {
			e2etest.Errorf(t, "%s, fallback off, uncached name with kube-dns down: %d lookups, %d errors, %d >= 1 s (max %s); want all failing fast",
				kind, res.Lookups, res.Errors, res.Over1s, res.Max)
		}
		// Go names the rcode: SERVFAIL is "server misbehaving".
		if kind == clients.Go && !strings.Contains(res.FirstError, "server misbehaving") {
			e2etest.Errorf(t, "Go, fallback off, uncached name with kube-dns down: error %q, want SERVFAIL (server misbehaving)", res.FirstError)
		}
	}
	// With the fallback (the default), a SERVFAIL from the node cache sends
	// glibc and Go on to the kube-dns ClusterIP, which kube-proxy rejects
	// with ICMP port-unreachable while it has no endpoints. The kernel
	// rate-limits that ICMP per client (net.ipv4.icmp_ratelimit: a burst of
	// 6, then 1/s), so past the burst a pod's query to the fallback waits out
	// its 1 s timeout: measured, and checked to be that. With the documented
	// node tuning (docs/deploy.md) the rejects come at once: no 5 s stall.
	icmp := []string{"Icmp.OutDestUnreachs", "Icmp.OutRateLimitHost", "Icmp.OutRateLimitGlobal"}
	for _, tuned := range []bool{false, true} {
		if tuned {
			e.setNodeSysctl(t, "net.ipv4.icmp_ratelimit", "0")
		}
		for _, kind := range []string{clients.Glibc, clients.Go} {
			snmp0, err := localdns.NodeSNMP(e.ctx, e.c)
			if err != nil {
				e2etest.Fatalf(t, "%v", err)
			}
			res := e.load(t, optedNS, fmt.Sprintf("uncached-tuned-%v-%s", tuned, kind), kind, uncached, autoMode)
			snmp1, err := localdns.NodeSNMP(e.ctx, e.c)
			if err != nil {
				e2etest.Fatalf(t, "%v", err)
			}
			rateLimited := snmp1["Icmp.OutRateLimitHost"] - snmp0["Icmp.OutRateLimitHost"] + snmp1["Icmp.OutRateLimitGlobal"] - snmp0["Icmp.OutRateLimitGlobal"]
			t.Logf("kube-dns down, fallback on, node tuned %v, %s: node %s", tuned, kind, localdns.SNMPDelta(snmp0, snmp1, icmp...))
			switch {
			case res.Errors != res.Lookups:
				e2etest.Errorf(t, "%s, uncached name with kube-dns down: %d of %d lookups answered, want all failing", kind, res.Lookups-res.Errors, res.Lookups)
			case res.Over1s > 0 && rateLimited == 0:
				e2etest.Errorf(t, "%s, uncached name with kube-dns down: %d lookups >= 1 s (max %s) with no ICMP rate-limited: not the kernel's limit", kind, res.Over1s, res.Max)
			case tuned && res.Over5s != 0:
				e2etest.Errorf(t, "%s, uncached name with kube-dns down, node tuned: %d lookups >= 5 s (max %s), want none", kind, res.Over5s, res.Max)
			}
		}
	}
	// A Service created while kube-dns is down resolves once it is back.
	fresh := seeds.Default()
	fresh.Service = "fresh-svc"
	if err := seeds.Prepare(e.ctx, e.c, e.repo, t.TempDir(), fresh); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	if err := e.scaleKubeDNS(2); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	// Ready CoreDNS pods are not yet a way through the ClusterIP: that
	// takes kube-proxy's next sync, and the node cache's probe (every
	// 500 ms) to find it. Until then both nameservers of a pod fail.
	back := time.Now()
	if err := localdns.WaitUpstreamHealthy(e.ctx, e.c, time.Minute); err != nil {
		e2etest.Fatalf(t, "node cache after kube-dns came back: %v", err)
	}
	t.Logf("node cache counts kube-dns healthy %s after its rollout", time.Since(back).Round(10*time.Millisecond))
	l := clients.Load{Host: "fresh-svc.default", Concurrency: 2, Duration: 20 * time.Second, Slow: time.Second, MaxLookups: 20}
	for _, kind := range []string{clients.Glibc, clients.Go} {
		res := e.load(t, optedNS, "fresh-"+kind, kind, l, autoMode)
		if res.Lookups != l.MaxLookups || res.Errors != 0 {
			e2etest.Errorf(t, "%s, new Service after kube-dns returned: %d lookups, %d errors (%s)", kind, res.Lookups, res.Errors, res.FirstError)
			e.logNodeCacheMetrics(t, "after kube-dns returned", downMetrics...)
		}
	}
}

// downMetrics are the node cache's samples that tell what it did while
// kube-dns was down.
var downMetrics = []string{"localdns_nodecache_upstream_", "localdns_nodecache_cache_stale_total",
	"localdns_nodecache_cache_misses_total", "localdns_nodecache_requests_total"}

// logNodeCacheMetrics logs the node cache's samples named by prefixes, for
// a post-mortem.
func (e *env) logNodeCacheMetrics(t *testing.T, when string, prefixes ...string) {
	t.Helper()
	lines, err := localdns.NodeCacheMetrics(e.ctx, e.c, prefixes...)
	if err != nil {
		t.Logf("node cache metrics %s: %v", when, err)
		return
	}
	t.Logf("node cache metrics %s:\n%s", when, strings.Join(lines, "\n"))
}

// setNodeSysctl sets a sysctl in the node's network namespace until the
// (sub)test ends, even when it fails, so later scenarios see the stock value.
func (e *env) setNodeSysctl(t *testing.T, key, value string) {
	t.Helper()
	old, err := e.c.NodeCommand(e.ctx, "sysctl", "-n", key).Output()
	if err != nil {
		e2etest.Fatalf(t, "read %s: %v", key, err)
	}
	set := func(v string) error {
		if out, err := e.c.NodeCommand(e.ctx, "sysctl", "-w", key+"="+v).CombinedOutput(); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w: %s", key, v, err, out)
		}
		return nil
	}
	if err := set(value); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	t.Cleanup(func() {
		if err := set(strings.TrimSpace(string(old))); err != nil {
			e2etest.Errorf(t, "%v", err)
		}
	})
}

// webhookDown: the webhook scaled to 0: pods of an opted-in namespace are
// still created (failurePolicy Ignore), unmutated, and resolve.
func (e *env) webhookDown(t *testing.T) {
	if err := e.c.Step("scale the webhook to 0", func() error {
		if _, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "scale", "deployment/"+localdns.WebhookDeploy, "--replicas=0"); err != nil {
			return err
		}
		_, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "wait", "--for=delete", "pod", "-l", "app.kubernetes.io/name="+localdns.WebhookDeploy, "--timeout=2m")
		return err
	}); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	e.plainPodResolves(t, "nowebhook")
}

// plainPodResolves runs a pod in the opted-in namespace and checks it was
// not mutated, got the plain cluster DNS and resolves through it.
func (e *env) plainPodResolves(t *testing.T, name string) {
	start := time.Now()
	out, err := localdns.ShellPod(e.ctx, e.c, optedNS, name, "auto",
		"cat /etc/resolv.conf && nslookup kubernetes.default.svc."+cluster.ClusterDomain)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	t.Logf("pod %s created and finished in %s:\n%s", name, time.Since(start).Round(100*time.Millisecond), out)
	p, err := localdns.GetPod(e.ctx, e.c, optedNS, name)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	if got := p.Metadata.Annotations[localdns.InjectedAnnotation]; got != "" || p.Spec.DNSPolicy != "ClusterFirst" {
		e2etest.Errorf(t, "pod %s: %s=%q dnsPolicy %q, want unmutated ClusterFirst", name, localdns.InjectedAnnotation, got, p.Spec.DNSPolicy)
	}
	nameservers, _, _ := localdns.ParseResolvConf(out)
	if len(nameservers) != 1 || nameservers[0] != e.c.Primary().KubeDNSIP.String() {
		e2etest.Errorf(t, "pod %s: nameservers %v, want only the kube-dns ClusterIP", name, nameservers)
	}
	if !strings.Contains(out, "Address: "+e.c.Primary().APIServiceIP.String()) {
		e2etest.Errorf(t, "pod %s did not resolve kubernetes.default", name)
	}
}

// uninstall: the documented sequence removes the address and the rules
// from the node; new pods get the plain ClusterIP and resolve.
func (e *env) uninstall(t *testing.T) {
	if err := localdns.Uninstall(e.ctx, e.c, e.repo); err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	st, err := localdns.ReadNodeState(e.ctx, e.c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	if !st.IsClean() {
		e2etest.Errorf(t, "after uninstall the node keeps %q and rules %v", st.Addresses, st.Rules)
	}
	e.plainPodResolves(t, "after-uninstall")
	l := clients.Load{Host: serviceHost, Concurrency: 2, Duration: 20 * time.Second, Slow: time.Second, MaxLookups: 50}
	res := e.load(t, optedNS, "after-uninstall-glibc", clients.Glibc, l, autoMode)
	if res.Lookups != l.MaxLookups || res.Errors != 0 {
		e2etest.Errorf(t, "glibc after uninstall: %d lookups, %d errors (%s)", res.Lookups, res.Errors, res.FirstError)
	}
}

// digStatus is the rcode in dig's output ("status: NOERROR"), or what went wrong.
func digStatus(out string) string {
	_, rest, ok := strings.Cut(out, "status: ")
	if !ok {
		return "no reply: " + strings.TrimSpace(out)
	}
	status, _, _ := strings.Cut(rest, ",")
	return status
}

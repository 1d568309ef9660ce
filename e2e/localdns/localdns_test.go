package localdns_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	// helm installs (and uninstalls) localdns through the chart with its
	// defaults; otherwise with kubectl apply -k of overlay, which a
	// scenario may change (the startup taint's).
	helm    bool
	overlay string
}

// scenario is one named step of a cluster run.
type scenario struct {
	name string
	run  func(e *env, t *testing.T)
	// fullOnly scenarios run in full runs alone (iptables mode): they
	// exercise kube-dns and the node cache's path to it, which kube-proxy's
	// mode does not change (both spread new connections over the endpoints
	// at random), a node's start, which kube-proxy's mode does not change
	// either, or the node cache OOM-killed: the same takeover by the
	// standby as nodecache-killed, which runs in every mode, with another
	// killer.
	fullOnly bool
	// helmOnly scenarios run once, on the run that installs with Helm.
	helmOnly bool
}

// scenarios are the e2e issue's, in order: correctness through the real
// path, the kubectl plugin on the healthy install, a pod's first lookups,
// the seeds' test (beside external names in full runs), the node cache
// SIGKILLed and held down, then its pod force-deleted, and OOM-killed, all
// under load; rolling update under load, kube-dns rolled, scaled up, scaled
// down and a pod of it force-deleted under load, a node whose pods start
// before its node cache (without and with the startup taint), kube-dns
// down, webhook down, uninstall.
var scenarios = []scenario{
	{name: "correctness", run: (*env).correctness},
	{name: "kubectl-plugin", run: (*env).kubectlPlugin, helmOnly: true},
	{name: "first-lookups", run: (*env).firstLookups},
	{name: "seeds", run: (*env).seeds},
	{name: "nodecache-killed", run: (*env).nodeCacheKilled},
	{name: "nodecache-oom-killed", run: (*env).nodeCacheOOMKilled, fullOnly: true},
	{name: "rolling-update", run: (*env).rollingUpdate},
	{name: "kube-dns-rolled", run: (*env).kubeDNSRolled, fullOnly: true},
	{name: "kube-dns-scaled-up", run: (*env).kubeDNSScaledUp, fullOnly: true},
	{name: "kube-dns-scaled-down", run: (*env).kubeDNSScaledDown, fullOnly: true},
	{name: "kube-dns-pod-force-deleted", run: (*env).kubeDNSPodForceDeleted, fullOnly: true},
	{name: "fresh-node", run: (*env).freshNode, fullOnly: true},
	{name: "kube-dns-down", run: (*env).kubeDNSDown},
	{name: "webhook-down", run: (*env).webhookDown},
	{name: "uninstall", run: (*env).uninstall},
}

// TestLocaldnsOnCluster boots one real node (kube-proxy in iptables mode),
// installs localdns from its own images and manifests (kubectl apply -k),
// and runs every scenario on it in full. It needs root and the provisioned
// binaries, so it runs only with LOCALDNS_E2E=1.
func TestLocaldnsOnCluster(t *testing.T) {
	testOnCluster(t, cluster.ProxyIPTables, "localdns-e2e-ld", true, false)
}

// TestLocaldnsOnClusterNFTables runs the scenarios again with kube-proxy
// in nftables mode (NodeLocal DNSCache does not support it), localdns
// installed with its Helm chart, not in full (see env.full), to keep make
// test well under 30 minutes.
func TestLocaldnsOnClusterNFTables(t *testing.T) {
	testOnCluster(t, cluster.ProxyNFTables, "localdns-e2e-ldnft", false, true)
}

func testOnCluster(t *testing.T, mode, name string, full, helm bool) {
	cfg := cluster.DefaultConfig()
	cfg.Name = name // fixed: a crashed earlier run's leftovers are found
	cfg.ProxyMode = mode
	e := bootEnv(t, cfg, helm)
	e.full = full
	for _, sc := range scenarios {
		if sc.fullOnly && !full || sc.helmOnly && !helm {
			continue
		}
		t.Run(sc.name, func(t *testing.T) { sc.run(e, t) })
	}
}

// bootEnv boots cfg's cluster (the product images build meanwhile, and it
// is torn down when the test ends), installs localdns (with its Helm chart
// if helm, else Install: the overlay of the cluster's IP families),
// imports the load clients and creates the seeds' Service and the
// scenarios' namespaces.
func bootEnv(t *testing.T, cfg cluster.Config, helm bool) *env {
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
		// As the uninstall does, the standby goes before the node cache,
		// which then stops without a hand-over to wait for.
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := localdns.DeleteNodeCacheDaemonSets(dctx, c); err != nil {
			t.Logf("before teardown: %v", err)
		}
		if err := c.Down(); err != nil {
			e2etest.Errorf(t, "teardown: %v", err)
		}
		t.Logf("teardown took %s", time.Since(start).Round(100*time.Millisecond))
	})
	b := <-images
	if b.err != nil {
		e2etest.Fatalf(t, "build localdns images: %v", b.err)
	}
	e := &env{ctx: ctx, c: c, repo: repo, helm: helm}

	start = time.Now()
	var how string
	if helm {
		how = "helm upgrade --install " + localdns.Release + " " + localdns.Chart
		err = localdns.InstallWithHelm(ctx, c, repo, b.imgs)
	} else {
		e.overlay = localdns.OverlayOf(c.IPFamilies())
		how = "kubectl apply -k " + e.overlay
		err = localdns.Install(ctx, c, repo, b.imgs)
	}
	if err != nil {
		e2etest.Fatalf(t, "install: %v\nlogs in %s", err, c.LogsDir())
	}
	t.Logf("install (%s) took %s", how, time.Since(start).Round(100*time.Millisecond))
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

// backgroundLoad is a client pod in the opted-in namespace, run to
// completion in the background; done closes when its result (or error) is in.
type backgroundLoad struct {
	name, kind string
	load       clients.Load
	// annotations are the pod's; nil means autoMode.
	annotations map[string]string
	done        chan struct{}
	res         dnsload.Result
	err         error
}

// launchLoads creates the loads' pods and returns at once.
func (e *env) launchLoads(loads ...*backgroundLoad) {
	for _, bl := range loads {
		bl.done = make(chan struct{})
		annotations := bl.annotations
		if annotations == nil {
			annotations = autoMode
		}
		go func() {
			defer close(bl.done)
			bl.res, bl.err = e.runLoad(optedNS, bl.name, bl.kind, bl.load, annotations)
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
// or more (5 s or more when over5sOnly) but for those its client's own
// waits for a CPU explain (dnsload.Result.SelfStarved).
func checkClean(t *testing.T, what string, res dnsload.Result, over5sOnly bool) {
	t.Helper()
	slow := res.DNSOver1s()
	if over5sOnly {
		slow = res.Over5s
	}
	if res.Lookups == 0 || res.Errors != 0 || slow != 0 {
		e2etest.Errorf(t, "%s: %d lookups, %d errors (%s), %d >= 1 s (%d of them client-starved), %d >= 5 s (max %s)", what, res.Lookups, res.Errors,
			res.FirstError, res.Over1s, res.SelfStarved, res.Over5s, res.Max)
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

// waitUntil calls check every 250 ms until it succeeds or d has passed,
// then returns its last error.
func waitUntil(d time.Duration, check func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
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
	// Three clients' pods at a time, with the two nslookup pods in the first
	// round: one after the other they took 45 s; all eleven at once, on the
	// 2 shared cores, once gave a glibc lookup of 1.3 s.
	type lookupCase struct {
		bl        *backgroundLoad
		wantFound bool
	}
	var rounds [][]lookupCase
	for _, tt := range []struct {
		host      string
		wantFound bool
	}{
		{serviceHost, true},              // search path, ndots:5
		{cluster.LargeAnswerName, true},  // truncated over UDP: retried over TCP, or (musl < 1.2.4) the records that fit
		{"nosuch-e2e." + optedNS, false}, // NXDOMAIN after every search suffix
	} {
		var round []lookupCase
		for _, kind := range clients.Kinds {
			round = append(round, lookupCase{&backgroundLoad{
				name: fmt.Sprintf("lookup-%s-%s", kind, strings.ReplaceAll(strings.Split(tt.host, ".")[0], "_", "")),
				kind: kind,
				load: clients.Load{Host: tt.host, Concurrency: 2, Duration: 20 * time.Second, Slow: time.Second, MaxLookups: 20},
			}, tt.wantFound})
		}
		rounds = append(rounds, round)
	}
	loadsOf := func(round []lookupCase) []*backgroundLoad {
		var loads []*backgroundLoad
		for _, c := range round {
			loads = append(loads, c.bl)
		}
		return loads
	}
	e.launchLoads(loadsOf(rounds[0])...)

	// busybox's nslookup asks the first nameserver: the node cache, or the
	// stub. It ignores the search path, so names are given in full.
	primary := e.c.Primary()
	api := "kubernetes.default.svc." + cluster.ClusterDomain
	script := strings.Join([]string{
		"nslookup " + api,
		"nslookup -type=SRV _https._tcp." + api,
		"nslookup " + primary.APIServiceIP.String(),
		"nslookup upstream.test",
		"nslookup nosuch.default.svc." + cluster.ClusterDomain + " 2>&1 || true",
	}, " && ")
	wants := []string{
		"Address: " + primary.APIServiceIP.String(), // A (AAAA in an IPv6 cluster)
		"service = 0 100 443 " + api,                // SRV of the named port https
		"name = " + api,                             // PTR of the kubernetes ClusterIP
		"NXDOMAIN",
	}
	for _, f := range e.c.Families() { // forwarded: an address of each family
		wants = append(wants, "Name:\tupstream.test\nAddress: "+f.UpstreamIP.String())
	}
	type shellResult struct {
		out string
		err error
	}
	modes := []string{localdns.ModeNodeCache, localdns.ModeStub}
	shells := make([]chan shellResult, len(modes))
	for i, mode := range modes {
		shells[i] = make(chan shellResult, 1)
		go func() {
			out, err := localdns.ShellPod(e.ctx, e.c, optedNS, "nslookup-"+mode, mode, script)
			shells[i] <- shellResult{out, err}
		}()
	}
	for i, mode := range modes {
		r := <-shells[i]
		if r.err != nil {
			e2etest.Errorf(t, "%s mode: %v", mode, r.err)
			continue
		}
		resolv, err := localdns.CheckPod(e.ctx, e.c, optedNS, "nslookup-"+mode, mode)
		if err != nil {
			e2etest.Errorf(t, "%v", err)
		}
		t.Logf("kubelet-written resolv.conf, %s mode:\n%s", mode, resolv)
		for _, want := range wants {
			if !strings.Contains(r.out, want) {
				e2etest.Errorf(t, "%s mode: nslookup output lacks %q:\n%s", mode, want, r.out)
			}
		}
	}

	var cases []lookupCase
	for i, round := range rounds {
		if i > 0 {
			e.launchLoads(loadsOf(round)...)
		}
		finished(t, loadsOf(round)...)
		cases = append(cases, round...)
	}
	for _, c := range cases {
		res, l := c.bl.res, c.bl.load
		if c.bl.err != nil {
			continue // reported by finished
		}
		wantErrors := int64(0)
		if !c.wantFound {
			wantErrors = res.Lookups
		}
		if res.Lookups != l.MaxLookups || res.Errors != wantErrors || res.DNSOver1s() != 0 {
			e2etest.Errorf(t, "%s %s: %d lookups, %d errors (%s), %d >= 1 s; want %d lookups, %d errors, none slow",
				c.bl.kind, l.Host, res.Lookups, res.Errors, res.FirstError, res.Over1s, l.MaxLookups, wantErrors)
		}
		if _, err := localdns.CheckPod(e.ctx, e.c, optedNS, c.bl.name, modeOf(c.bl.kind)); err != nil {
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
		if r.DNSOver1s() == 0 {
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
	origin := time.Now()
	pids, err := localdns.NodeCachePIDs(e.c)
	stops := []func() string{watchCPU("node cache", pids, err, origin)}
	// The seeds' clients, one after the other: gaiload #1 is glibc's, #2 musl's.
	for _, comm := range []string{"gaiload", "dnsload"} {
		stops = append(stops, watchNewProcessesCPU(comm, origin))
	}
	rows, err := seeds.RunClients(e.ctx, e.c, opted)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	// What the node cache, the clients and the node saw, for a post-mortem
	// of any slow lookup: kept with the failure, which CI shows without
	// these logs.
	var postMortem []string
	for _, stop := range stops {
		postMortem = append(postMortem, stop())
	}
	for _, r := range rows {
		if len(r.SlowAt) > 0 {
			tl := &timeline{origin: origin}
			postMortem = append(postMortem, fmt.Sprintf("localdns %s's slow lookups started at %s", r.Client, tl.slowAt(&backgroundLoad{res: r.Result})))
		}
	}
	if external != nil {
		e.checkExternalNames(t, external)
	}
	if snmp1, err := localdns.NodeSNMP(e.ctx, e.c); err == nil {
		postMortem = append(postMortem, "node: "+localdns.SNMPDelta(snmp0, snmp1, "Udp.InErrors", "Udp.RcvbufErrors"))
	}
	metrics := e.logNodeCacheMetrics(t, "after the opted-in run", "localdns_nodecache_upstream_", "localdns_nodecache_miss_",
		"localdns_nodecache_requests_total", "localdns_nodecache_responses_total", "localdns_nodecache_cache_",
		"localdns_nodecache_client_limited_total", "localdns_nodecache_coalesced_total")
	var counts []string
	for _, line := range metrics {
		for _, p := range []string{"localdns_nodecache_cache_stale_total", "localdns_nodecache_cache_prefetch_total",
			`localdns_nodecache_upstream_errors_total{reason="timeout"`} {
			if strings.HasPrefix(line, p) {
				counts = append(counts, line)
			}
		}
	}
	postMortem = append(postMortem, "node cache (since its start): "+strings.Join(counts, ", "))
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
	e2etest.Explainf(t, "%s", strings.Join(postMortem, "; "))
}

// watchCPU samples the CPU use of process what (found as pids, err) and
// its waits for a CPU from now; the returned func stops and describes
// them, with their times from origin: on a starved node, a slow lookup's
// time is where the process answering it waited.
func watchCPU(what string, pids []int, err error, origin time.Time) (stop func() string) {
	if err != nil || len(pids) != 1 {
		return func() string { return fmt.Sprintf("%s's CPU not watched: processes %v (%v)", what, pids, err) }
	}
	pid := pids[0]
	cpu0, _, _ := localdns.CPUTime(pid)
	waits := localdns.WatchRunQueue(pid, 250*time.Millisecond)
	return func() string {
		worst, total, err := waits.Stop(5)
		cpu1, peakRSS, _ := localdns.CPUTime(pid)
		return fmt.Sprintf("%s over %s: CPU used %s, waited for a CPU %s (all threads); one thread's longest waits: %s (err %v); peak RSS %.1f MiB",
			what, time.Since(origin).Round(time.Second), cpu1-cpu0, total.Round(time.Millisecond), waitsAt(worst, origin), err, float64(peakRSS)/(1<<20))
	}
}

// watchNewProcessesCPU reports the waits for a CPU of each process named
// comm that starts from now on (load clients', one after the other), from
// when it is seen until it exits: a client that waits for a CPU counts
// that wait as lookup time, whatever DNS did.
func watchNewProcessesCPU(comm string, origin time.Time) (stop func() string) {
	seen, _ := localdns.PIDsByComm(comm)
	ctx, cancel := context.WithCancel(context.Background())
	var watches []*localdns.RunQueueWatch // the goroutine's until done closes
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			pids, _ := localdns.PIDsByComm(comm)
			for _, pid := range pids {
				if slices.Contains(seen, pid) {
					continue
				}
				seen = append(seen, pid)
				w := localdns.WatchRunQueue(pid, 250*time.Millisecond)
				watches = append(watches, w)
				select {
				case <-w.Done():
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() string {
		cancel()
		<-done
		if len(watches) == 0 {
			return comm + ": no new process seen"
		}
		var each []string
		for i, w := range watches {
			worst, total, _ := w.Stop(3) // its exit ends the sampling: not an error here
			each = append(each, fmt.Sprintf("%s #%d waited for a CPU %s (all threads); one thread's longest waits: %s",
				comm, i+1, total.Round(time.Millisecond), waitsAt(worst, origin)))
		}
		return strings.Join(each, "; ")
	}
}

// waitsAt lists the longest waits of one thread with their times from
// origin (each reported as it ended).
func waitsAt(samples []localdns.RunQueueSample, origin time.Time) string {
	var at []string
	for _, s := range samples {
		at = append(at, fmt.Sprintf("%s at %+.2fs", s.Longest.Round(time.Millisecond), s.At.Sub(origin).Seconds()))
	}
	return strings.Join(at, ", ")
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
// every query answered, no failed and no slow lookup (surge pod,
// SO_REUSEPORT, setup adopted, the old pod draining), the standby never
// needed.
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
	e.nodeCacheDrill(t, "roll", 25*time.Second, false, func(*timeline) {
		if err := e.c.Step("kubectl rollout restart daemonset "+localdns.NodeCacheDS, func() error {
			if _, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "rollout", "restart", "daemonset/"+localdns.NodeCacheDS); err != nil {
				return err
			}
			_, err := e.c.Kubectl(e.ctx, nil, "-n", localdns.Namespace, "rollout", "status", "daemonset/"+localdns.NodeCacheDS, "--timeout=2m")
			return err
		}); err != nil {
			e2etest.Fatalf(t, "%v", err)
		}
	})
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
	for _, bl := range e.loadsTogether(t, "stale-", cached, autoMode) {
		if res := bl.res; res.Lookups == 0 || res.Errors != 0 || res.DNSOver1s() != 0 {
			e2etest.Errorf(t, "%s, cached name with kube-dns down: %d lookups, %d errors (%s), %d >= 1 s (max %s)", bl.kind, res.Lookups, res.Errors, res.FirstError, res.Over1s, res.Max)
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
	for _, bl := range e.loadsTogether(t, "nofallback-", uncached, noFallback) {
		if res := bl.res; res.Errors != res.Lookups || res.DNSOver1s() != 0 {
			e2etest.Errorf(t, "%s, fallback off, uncached name with kube-dns down: %d lookups, %d errors, %d >= 1 s (max %s); want all failing fast",
				bl.kind, res.Lookups, res.Errors, res.Over1s, res.Max)
		}
		// Go names the rcode: SERVFAIL is "server misbehaving".
		if bl.kind == clients.Go && !strings.Contains(bl.res.FirstError, "server misbehaving") {
			e2etest.Errorf(t, "Go, fallback off, uncached name with kube-dns down: error %q, want SERVFAIL (server misbehaving)", bl.res.FirstError)
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
		snmp0, err := localdns.NodeSNMP(e.ctx, e.c)
		if err != nil {
			e2etest.Fatalf(t, "%v", err)
		}
		loads := e.loadsTogether(t, fmt.Sprintf("uncached-tuned-%v-", tuned), uncached, autoMode)
		snmp1, err := localdns.NodeSNMP(e.ctx, e.c)
		if err != nil {
			e2etest.Fatalf(t, "%v", err)
		}
		// Of both clients' pods at once: each pod is rate-limited on its own.
		rateLimited := snmp1["Icmp.OutRateLimitHost"] - snmp0["Icmp.OutRateLimitHost"] + snmp1["Icmp.OutRateLimitGlobal"] - snmp0["Icmp.OutRateLimitGlobal"]
		t.Logf("kube-dns down, fallback on, node tuned %v: node %s", tuned, localdns.SNMPDelta(snmp0, snmp1, icmp...))
		for _, bl := range loads {
			switch res := bl.res; {
			case res.Errors != res.Lookups:
				e2etest.Errorf(t, "%s, uncached name with kube-dns down: %d of %d lookups answered, want all failing", bl.kind, res.Lookups-res.Errors, res.Lookups)
			case res.DNSOver1s() > 0 && rateLimited == 0:
				e2etest.Errorf(t, "%s, uncached name with kube-dns down: %d lookups >= 1 s (max %s) with no ICMP rate-limited: not the kernel's limit", bl.kind, res.Over1s, res.Max)
			case tuned && res.Over5s != 0:
				e2etest.Errorf(t, "%s, uncached name with kube-dns down, node tuned: %d lookups >= 5 s (max %s), want none", bl.kind, res.Over5s, res.Max)
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
	for _, bl := range e.loadsTogether(t, "fresh-", l, autoMode) {
		if res := bl.res; res.Lookups != l.MaxLookups || res.Errors != 0 {
			e2etest.Errorf(t, "%s, new Service after kube-dns returned: %d lookups, %d errors (%s)", bl.kind, res.Lookups, res.Errors, res.FirstError)
			e.logNodeCacheMetrics(t, "after kube-dns returned", downMetrics...)
		}
	}
}

// loadsTogether runs l in a glibc and a Go pod (named prefix+kind) at once
// and returns their results; a pod that fails fails the test.
func (e *env) loadsTogether(t *testing.T, prefix string, l clients.Load, annotations map[string]string) []*backgroundLoad {
	t.Helper()
	loads := []*backgroundLoad{
		{name: prefix + clients.Glibc, kind: clients.Glibc, load: l, annotations: annotations},
		{name: prefix + clients.Go, kind: clients.Go, load: l, annotations: annotations},
	}
	e.launchLoads(loads...)
	done := finished(t, loads...)
	if len(done) != len(loads) {
		e2etest.Fatalf(t, "%s loads failed (logs in %s)", prefix, e.c.LogsDir())
	}
	return done
}

// downMetrics are the node cache's samples that tell what it did while
// kube-dns was down.
var downMetrics = []string{"localdns_nodecache_upstream_", "localdns_nodecache_cache_stale_total",
	"localdns_nodecache_cache_misses_total", "localdns_nodecache_requests_total"}

// logNodeCacheMetrics logs the node cache's samples named by prefixes, for
// a post-mortem, and returns them (none when the scrape failed).
func (e *env) logNodeCacheMetrics(t *testing.T, when string, prefixes ...string) []string {
	t.Helper()
	lines, err := localdns.NodeCacheMetrics(e.ctx, e.c, prefixes...)
	if err != nil {
		t.Logf("node cache metrics %s: %v", when, err)
		return nil
	}
	t.Logf("node cache metrics %s:\n%s", when, strings.Join(lines, "\n"))
	return lines
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

// uninstall: the documented sequence (for the chart, or the overlay last
// applied) removes the address and the rules from the node; new pods get
// the plain ClusterIP and resolve.
func (e *env) uninstall(t *testing.T) {
	var err error
	if e.helm {
		err = localdns.UninstallWithHelm(e.ctx, e.c, e.repo)
	} else {
		err = localdns.Uninstall(e.ctx, e.c, e.repo, e.overlay)
	}
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	e.checkNodeClean(t, "after uninstall")
	e.plainPodResolves(t, "after-uninstall")
	l := clients.Load{Host: serviceHost, Concurrency: 2, Duration: 20 * time.Second, Slow: time.Second, MaxLookups: 50}
	res := e.load(t, optedNS, "after-uninstall-glibc", clients.Glibc, l, autoMode)
	if res.Lookups != l.MaxLookups || res.Errors != 0 {
		e2etest.Errorf(t, "glibc after uninstall: %d lookups, %d errors (%s)", res.Lookups, res.Errors, res.FirstError)
	}
}

// checkNodeClean fails the test unless the node has neither LocalIP nor a
// localdns rule.
func (e *env) checkNodeClean(t *testing.T, when string) {
	t.Helper()
	st, err := localdns.ReadNodeState(e.ctx, e.c)
	if err != nil {
		e2etest.Fatalf(t, "%v", err)
	}
	if !st.IsClean() {
		e2etest.Fatalf(t, "%s, the node keeps %q and rules %v", when, st.Addresses, st.Rules)
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

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/localdns/localdns/e2e/clients"
	"github.com/localdns/localdns/e2e/cluster"
	"github.com/localdns/localdns/e2e/localdns"
	"github.com/localdns/localdns/e2e/seeds"
)

// demoNamespace is the namespace the demo opts in between its two runs.
const demoNamespace = "default"

// demo is `make demo`: boot the cluster, install localdns from its
// manifests, run the seeds' test with the race emulated before and after
// opting a namespace in, show what the pods got and the figures side by
// side, tear everything down (also on failure or Ctrl-C). With bench set
// (`make bench-cluster`) the seeds' test runs in its own shape (the seeds
// flags) instead of -demo-duration, and the stub's footprint under a steady
// load is measured before the teardown.
func demo(ctx context.Context, o options, bench bool) (err error) {
	begin := time.Now()
	if err := demoPrerequisites(ctx, o.cfg); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "localdns-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	clientsDir := filepath.Join(work, "clients")
	if err := os.Mkdir(clientsDir, 0o755); err != nil {
		return err
	}

	// The product images build while the cluster boots.
	type built struct {
		imgs localdns.Images
		err  error
	}
	images := make(chan built, 1)
	go func() {
		imgs, err := localdns.BuildImages(ctx, o.cfg.RepoDir, filepath.Join(work, "product"))
		images <- built{imgs, err}
	}()
	c, err := cluster.Up(ctx, o.cfg)
	if err != nil {
		<-images
		return err
	}
	defer func() {
		err = errors.Join(err, c.Down())
		fmt.Printf("demo took %s\n", time.Since(begin).Round(time.Second))
	}()
	var b built
	if err := c.Step("localdns binaries and images built (hack/imagebuild -product, during the boot)", func() error {
		b = <-images
		return b.err
	}); err != nil {
		return err
	}
	if err := localdns.Install(ctx, c, o.cfg.RepoDir, b.imgs); err != nil {
		return err
	}
	if err := c.Step("node has "+strings.Join(localdns.NodeCacheIPs(c.Families()), ", ")+" and the localdns: NOTRACK rules", func() error {
		st, err := localdns.ReadNodeState(ctx, c)
		if err == nil && !st.HasSetup() {
			err = fmt.Errorf("node setup missing: addresses %q, %d rules", st.Addresses, len(st.Rules))
		}
		return err
	}); err != nil {
		return err
	}

	sc := o.seeds
	sc.Namespace = demoNamespace
	if !bench {
		sc.CDuration, sc.GoDuration = o.demoDuration, o.demoDuration
	}
	sc.Annotations = nil
	if err := seeds.Prepare(ctx, c, o.cfg.RepoDir, clientsDir, sc); err != nil {
		return err
	}
	c.Printf("seeds' test, namespace %s NOT opted in (plain kube-dns ClusterIP)", demoNamespace)
	before, err := seeds.RunClients(ctx, c, sc)
	if err != nil {
		return err
	}
	if err := c.Step(fmt.Sprintf("opt namespace %s in: label %s=enabled", demoNamespace, localdns.InjectLabel), func() error {
		return localdns.EnsureNamespace(ctx, c, demoNamespace, true)
	}); err != nil {
		return err
	}
	// auto: the musl client's image matches the webhook's musl patterns,
	// so it gets the stub; glibc and Go get the node cache.
	sc.Annotations = map[string]string{localdns.ModeAnnotation: "auto"}
	c.Printf("seeds' test, namespace %s opted in, pods annotated %s: auto", demoNamespace, localdns.ModeAnnotation)
	after, err := seeds.RunClients(ctx, c, sc)
	if err != nil {
		return err
	}
	if err := showPods(ctx, c); err != nil {
		return err
	}
	var footprint string
	if bench {
		if footprint, err = stubFootprint(ctx, c, sc); err != nil {
			return err
		}
	}

	heading := fmt.Sprintf("The seeds' test on a real node (kube-proxy %s, %.2g%% of UDP to kube-dns dropped to emulate the conntrack race),\n"+
		"glibc and musl %d threads for %s, Go %d concurrent for %s:", o.cfg.ProxyMode, 100*sc.Drop, sc.CThreads, sc.CDuration, sc.GoConcurrency, sc.GoDuration)
	var rows []seeds.Row
	for i := range before {
		b, a := before[i], after[i]
		b.Client += " kube-dns"
		a.Client += " localdns (" + modeOf(a.Client) + ")"
		rows = append(rows, b, a)
	}
	var table strings.Builder
	if err := seeds.WriteTable(&table, rows); err != nil {
		return err
	}
	fmt.Printf("\n%s\n\n%s", heading, table.String())
	if footprint != "" {
		fmt.Println("\n" + footprint)
	}
	if bench && o.resultsFile != "" {
		section := fmt.Sprintf("## In the cluster\n\nProduced by `go run ./e2e/cmd/cluster bench` (`make bench-cluster`) on %s; %s.\n\n%s\n\n```\n%s```\n\n%s\n",
			time.Now().UTC().Format("2006-01-02 15:04 MST"), machine(), heading, table.String(), footprint)
		if err := writeSection(o.resultsFile, section); err != nil {
			return err
		}
		fmt.Println("written to", o.resultsFile)
	}
	var slow []string
	for _, r := range after {
		if r.DNSOver1s() > 0 || r.Errors > 0 {
			slow = append(slow, fmt.Sprintf("%s: %d lookups >= 1 s, %d errors", r.Client, r.DNSOver1s(), r.Errors))
		}
	}
	if len(slow) > 0 {
		return fmt.Errorf("with localdns: %s", strings.Join(slow, "; "))
	}
	fmt.Println("\nwith localdns: zero lookups of 1 s or more, zero errors, for glibc, musl and Go")
	return nil
}

// stubRate is the Go client's lookups per second in stubFootprint: each
// lookup of an absolute name is one A and one AAAA query, so the stub
// answers 1k queries per second.
const stubRate = 500

// stubFootprint runs a Go client pod in stub mode that looks up the seeds'
// Service by its absolute name at stubRate for 30 s, and samples the
// injected stub's process from the node meanwhile: CPU and peak RSS.
func stubFootprint(ctx context.Context, c *cluster.Cluster, sc seeds.Config) (string, error) {
	const name, comm = "stub-footprint", "localdns-stub"
	load := clients.Load{Host: fmt.Sprintf("%s.%s.svc.%s.", sc.Service, sc.ServiceNamespace, cluster.ClusterDomain),
		Concurrency: 8, Duration: 30 * time.Second, Slow: time.Second, MaxLookups: 1_000_000, Rate: stubRate}
	manifest, err := clients.PodManifest(demoNamespace, name, clients.Go, load, map[string]string{localdns.ModeAnnotation: localdns.ModeStub})
	if err != nil {
		return "", err
	}
	before, err := localdns.PIDsByComm(comm)
	if err != nil {
		return "", err
	}
	type watched struct {
		u   localdns.Usage
		err error
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	usage := make(chan watched, 1)
	go func() {
		u, err := localdns.WatchNewProcess(wctx, comm, before, 500*time.Millisecond)
		usage <- watched{u, err}
	}()
	var logs string
	if err := c.Step(fmt.Sprintf("stub footprint: Go client in stub mode, %d lookups/s (A + AAAA: %d queries/s) of %s for %s",
		stubRate, 2*stubRate, load.Host, load.Duration), func() error {
		logs, err = c.RunPod(ctx, demoNamespace, name, manifest)
		return err
	}); err != nil {
		cancel()
		<-usage
		return "", err
	}
	w := <-usage
	if w.err != nil {
		return "", w.err
	}
	res, err := clients.ParseResult([]byte(logs))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("Stub footprint at %.0f queries/s (Go client in stub mode, %d lookups, %d errors, mean %s, max %s): %s",
		2*float64(res.Lookups)/res.Elapsed.Seconds(), res.Lookups, res.Errors, res.Mean.Round(time.Microsecond), res.Max.Round(time.Microsecond), w.u), nil
}

// showPods prints, for each opted-in seeds pod, what the webhook stored
// and the resolv.conf the kubelet wrote, and fails unless both are the
// design's pod view.
func showPods(ctx context.Context, c *cluster.Cluster) error {
	fmt.Println("\nThe opted-in pods: stored spec (what the webhook wrote) and the kubelet-written /etc/resolv.conf")
	var errs []error
	for _, kind := range clients.Kinds {
		name := "seeds-" + kind
		p, err := localdns.GetPod(ctx, c, demoNamespace, name)
		if err != nil {
			return err
		}
		d := localdns.DNSConfig{}
		if p.Spec.DNSConfig != nil {
			d = *p.Spec.DNSConfig
		}
		var sidecars []string
		for _, ic := range p.Spec.InitContainers {
			sidecars = append(sidecars, fmt.Sprintf("%s (%s, restartPolicy %s)", ic.Name, ic.Image, ic.RestartPolicy))
		}
		fmt.Printf("  %s: %s=%s dnsPolicy=%s\n    dnsConfig: nameservers=%v searches=%v options=%v\n    native sidecars: %v\n",
			name, localdns.InjectedAnnotation, p.Metadata.Annotations[localdns.InjectedAnnotation], p.Spec.DNSPolicy,
			d.Nameservers, d.Searches, d.OptionStrings(), sidecars)
		text, err := localdns.CheckPod(ctx, c, demoNamespace, name, modeOf(kind))
		errs = append(errs, err)
		fmt.Printf("    /etc/resolv.conf: %s\n", strings.ReplaceAll(strings.TrimSpace(text), "\n", " | "))
	}
	return errors.Join(errs...)
}

// modeOf is the mode localdns.io/mode: auto gives a client: the musl
// client's image matches the webhook's musl patterns.
func modeOf(kind string) string {
	if kind == clients.Musl {
		return localdns.ModeStub
	}
	return localdns.ModeNodeCache
}

// demoPrerequisites checks the demo runs as root and installs what it needs.
func demoPrerequisites(ctx context.Context, cfg cluster.Config) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo runs a Kubernetes node (network namespaces, containerd, kubelet): run it as root")
	}
	return installPrerequisites(ctx, cfg)
}

// installPrerequisites installs what the demo needs on its first run, with
// the scripts `make test` uses: Debian packages and Go tools
// (hack/install-deps.sh), then Kubernetes and CoreDNS built once from their
// Go modules, the long part, whose scripts report each component's progress.
func installPrerequisites(ctx context.Context, cfg cluster.Config) error {
	begin := time.Now()
	installed := false
	if missing := missingTools(cfg); len(missing) > 0 {
		fmt.Printf("installing what the demo needs, once (missing %s): hack/install-deps.sh\n", strings.Join(missing, ", "))
		if err := runScript(ctx, cfg.RepoDir, "hack/install-deps.sh"); err != nil {
			return err
		}
		if missing := missingTools(cfg); len(missing) > 0 {
			return fmt.Errorf("still missing after hack/install-deps.sh: %s", strings.Join(missing, ", "))
		}
		installed = true
	}
	var k8sMissing []string
	for _, b := range kubernetesComponents {
		if _, err := os.Stat(filepath.Join(cfg.K8sBinDir, b)); err != nil {
			k8sMissing = append(k8sMissing, b)
		}
	}
	if len(k8sMissing) > 0 {
		fmt.Printf("building Kubernetes %s once (%s; 10-20 min on 2 cores, cached in %s afterwards)\n",
			cluster.KubernetesVersion, strings.Join(k8sMissing, ", "), cfg.K8sBinDir)
		if err := runScript(ctx, cfg.RepoDir, append([]string{"hack/provision-k8s.sh"}, k8sMissing...)...); err != nil {
			return err
		}
		installed = true
	}
	if _, err := os.Stat(cfg.CoreDNSBinary); err != nil {
		fmt.Printf("building CoreDNS %s once (a few minutes, cached as %s)\n", cluster.CoreDNSVersion, cfg.CoreDNSBinary)
		if err := runScript(ctx, cfg.RepoDir, "e2e/hack/provision-coredns.sh"); err != nil {
			return err
		}
		installed = true
	}
	if installed {
		fmt.Printf("one-time setup done in %s; later runs start here\n", time.Since(begin).Round(time.Second))
	}
	return nil
}

// demoTools are the programs the demo runs, from Debian packages
// (hack/install-deps.sh) and Go.
var demoTools = []string{"go", "gcc", "musl-gcc", "containerd", "ctr", "runc", "etcd", "iptables", "conntrack", "nsenter", "curl"}

// kubernetesComponents are the binaries the cluster runs, built by
// hack/provision-k8s.sh.
var kubernetesComponents = []string{"kube-apiserver", "kubectl", "kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler"}

// missingTools names the programs the demo runs that are not installed.
func missingTools(cfg cluster.Config) []string {
	var missing []string
	for _, tool := range demoTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := os.Stat(cfg.BusyboxBinary); err != nil {
		missing = append(missing, "busybox-static")
	}
	return missing
}

func runScript(ctx context.Context, dir string, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return nil
}

// writeSection replaces the "## In the cluster" section of a markdown
// file, which runs to its end, with section (appending it when absent).
func writeSection(path, section string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	text := string(old)
	if i := strings.Index(text, "## In the cluster\n"); i >= 0 && (i == 0 || text[i-1] == '\n') {
		text = text[:i]
	}
	if text != "" && !strings.HasSuffix(text, "\n\n") {
		text = strings.TrimRight(text, "\n") + "\n\n"
	}
	return os.WriteFile(path, []byte(text+section), 0o644)
}

// machine describes this machine for a results file: cores, kernel, load.
func machine() string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	load, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(load))
	if len(f) > 3 {
		f = f[:3]
	}
	return fmt.Sprintf("machine: %d CPUs, kernel %s, load average %s", runtime.NumCPU(), strings.TrimSpace(string(kernel)), strings.Join(f, " "))
}

// Command cluster boots, uses and tears down the e2e single-node cluster
// (package e2e/cluster) from a shell:
//
//	go run ./e2e/cmd/cluster [flags] up        boot and leave it running
//	go run ./e2e/cmd/cluster [flags] check     a pod resolves kubernetes.default via kube-dns
//	go run ./e2e/cmd/cluster [flags] kubectl ARGS...
//	go run ./e2e/cmd/cluster [flags] down      stop everything, remove every trace
//	go run ./e2e/cmd/cluster [flags] seeds     the seeds' test (glibc, musl, Go clients) on an up cluster
//	go run ./e2e/cmd/cluster [flags] smoke     up, check, down (also on failure or Ctrl-C)
//	go run ./e2e/cmd/cluster [flags] install   build the localdns images, import them, apply the default overlay
//	go run ./e2e/cmd/cluster [flags] uninstall the documented uninstall (make undeploy's sequence)
//	go run ./e2e/cmd/cluster [flags] demo      boot, install, seeds' test before and after opt-in, tear down
//	go run ./e2e/cmd/cluster [flags] bench     demo in the seeds' own shape, plus the stub's CPU and RSS at 1k queries/s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/localdns/localdns/e2e/cluster"
	"github.com/localdns/localdns/e2e/localdns"
	"github.com/localdns/localdns/e2e/seeds"
)

type options struct {
	cfg          cluster.Config
	seeds        seeds.Config
	demoDuration time.Duration
	resultsFile  string
	command      string
	args         []string
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	cfg := cluster.DefaultConfig()
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Name, "name", cfg.Name, "cluster name: the node's network namespace and run directory")
	fs.StringVar(&cfg.BaseDir, "base-dir", cfg.BaseDir, "directory holding run and log directories")
	fs.StringVar(&cfg.ProxyMode, "proxy-mode", cfg.ProxyMode, "kube-proxy mode: iptables or nftables")
	fs.StringVar(&cfg.IPFamilies, "ip-families", cfg.IPFamilies, "the cluster's IP families: ipv4, ipv6 or dual (IPv4 primary); commands on a running cluster take the ones it booted with")
	sc := seeds.Default()
	fs.StringVar(&sc.Namespace, "seeds-namespace", sc.Namespace, "seeds: namespace of the client pods")
	fs.IntVar(&sc.CThreads, "seeds-threads", sc.CThreads, "seeds: getaddrinfo threads of the glibc and musl clients")
	fs.DurationVar(&sc.CDuration, "seeds-c-duration", sc.CDuration, "seeds: run time of the glibc and musl clients")
	fs.IntVar(&sc.GoConcurrency, "seeds-go-concurrency", sc.GoConcurrency, "seeds: concurrent lookups of the Go client")
	fs.DurationVar(&sc.GoDuration, "seeds-go-duration", sc.GoDuration, "seeds: run time of the Go client")
	fs.Float64Var(&sc.Drop, "seeds-drop", sc.Drop, "seeds: share of UDP packets to the kube-dns ClusterIP dropped (emulated conntrack race); 0 for none")
	var mode string
	fs.StringVar(&mode, "seeds-mode", "", "seeds: localdns.io/mode annotation of the client pods (auto puts musl in stub mode); empty for none")
	var demoDuration time.Duration
	fs.DurationVar(&demoDuration, "demo-duration", 10*time.Second, "demo: run time of each client in each seeds' run (the seeds' own: 15s for glibc and musl, 30s for Go)")
	var resultsFile string
	fs.StringVar(&resultsFile, "results", "", "bench: also write the figures as the \"## In the cluster\" section of this markdown file (replacing it), e.g. bench/results.md")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: cluster [flags] up|check|seeds|down|smoke|install|uninstall|demo|bench|kubectl ARGS...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return options{}, errors.New("missing command")
	}
	if mode != "" {
		sc.Annotations = map[string]string{localdns.ModeAnnotation: mode}
	}
	o := options{cfg: cfg, seeds: sc, demoDuration: demoDuration, resultsFile: resultsFile, command: fs.Arg(0), args: fs.Args()[1:]}
	switch o.command {
	case "up", "check", "seeds", "down", "smoke", "install", "uninstall", "demo", "bench", "kubectl":
	default:
		return options{}, fmt.Errorf("unknown command %q", o.command)
	}
	if err := sc.Validate(); err != nil {
		return options{}, err
	}
	if demoDuration < time.Second {
		return options{}, fmt.Errorf("demo duration %s: want >= 1s", demoDuration)
	}
	return o, nil
}

func main() {
	o, err := parseOptions(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(2)
	}
	// Ctrl-C cancels the boot or the check; teardown then still runs.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	switch o.command {
	case "up":
		c, err := cluster.Up(ctx, o.cfg)
		if err != nil {
			return err
		}
		fmt.Printf("use: go run ./e2e/cmd/cluster -name %s kubectl get pods -A\n", c.Name())
		fmt.Printf("     nsenter --net=%s -- kubectl --kubeconfig=%s ...\n", c.NetnsPath(), c.Kubeconfig())
		fmt.Printf("stop: go run ./e2e/cmd/cluster -name %s down\n", c.Name())
		return nil
	case "smoke":
		c, err := cluster.Up(ctx, o.cfg)
		if err != nil {
			return err
		}
		return errors.Join(check(ctx, c), c.Down())
	case "demo":
		return demo(ctx, o, false)
	case "bench":
		return demo(ctx, o, true)
	}
	c, err := cluster.Attach(o.cfg)
	if err != nil {
		return err
	}
	switch o.command {
	case "check":
		return check(ctx, c)
	case "seeds":
		return runSeeds(ctx, c, o)
	case "install":
		return install(ctx, c, o.cfg.RepoDir)
	case "uninstall":
		return localdns.Uninstall(ctx, c, o.cfg.RepoDir, localdns.OverlayOf(c.IPFamilies()))
	case "kubectl":
		cmd := c.KubectlCommand(ctx, o.args...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		return cmd.Run()
	default: // down
		return c.Down()
	}
}

func runSeeds(ctx context.Context, c *cluster.Cluster, o options) error {
	work, err := os.MkdirTemp("", "localdns-seeds-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	rows, err := seeds.Run(ctx, c, o.cfg.RepoDir, work, o.seeds)
	if err != nil {
		return err
	}
	return seeds.WriteTable(os.Stdout, rows)
}

func check(ctx context.Context, c *cluster.Cluster) error {
	var out string
	err := c.Step(fmt.Sprintf("pod resolves kubernetes.default through kube-dns %v", c.KubeDNSIPs()), func() error {
		var err error
		out, err = c.CheckDNS(ctx)
		return err
	})
	fmt.Print(out)
	return err
}

// install builds the product images in a scratch directory and installs
// them with the default overlay.
func install(ctx context.Context, c *cluster.Cluster, repoDir string) error {
	work, err := os.MkdirTemp("", "localdns-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	var imgs localdns.Images
	if err := c.Step("build localdns binaries and images (hack/imagebuild -product)", func() error {
		imgs, err = localdns.BuildImages(ctx, repoDir, work)
		return err
	}); err != nil {
		return err
	}
	if err := localdns.Install(ctx, c, repoDir, imgs); err != nil {
		return err
	}
	return c.Step("node has "+strings.Join(localdns.NodeCacheIPs(c.Families()), ", ")+" and the localdns: rules", func() error {
		st, err := localdns.ReadNodeState(ctx, c)
		if err != nil {
			return err
		}
		if !st.HasSetup() {
			return fmt.Errorf("node setup missing: addresses %q, %d rules", st.Addresses, len(st.Rules))
		}
		return nil
	})
}

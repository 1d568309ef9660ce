// Package seeds runs the seeds' DNS test on the e2e cluster: the glibc and
// musl getaddrinfo clients and the Go client, one after the other, each in
// a pod looking up a Service name for a fixed time, optionally with the
// conntrack race emulated (a share of the UDP packets to the kube-dns
// ClusterIP dropped), and tabulates the results side by side.
package seeds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/localdns/localdns/e2e/clients"
	"github.com/localdns/localdns/e2e/cluster"
	"github.com/localdns/localdns/e2e/dnsload"
)

// Config is one run of the seeds' test.
type Config struct {
	// Namespace runs the client pods (and holds the Service looked up).
	Namespace string
	// Service is created (ClusterIP, no endpoints: DNS needs none) and
	// looked up as "<Service>.<its namespace>" through the search path.
	Service, ServiceNamespace string
	// CThreads and CDuration shape the glibc and musl runs.
	CThreads  int
	CDuration time.Duration
	// GoConcurrency and GoDuration shape the Go run.
	GoConcurrency int
	GoDuration    time.Duration
	// Drop is the share of UDP packets to the kube-dns ClusterIP dropped
	// during the runs; 0 drops none.
	Drop float64
	// Annotations of the client pods (nil: none), e.g. localdns.io/mode:
	// auto, which puts the musl client in stub mode.
	Annotations map[string]string
}

// Default is the seeds' shape: 50 threads x 15 s of getaddrinfo for glibc
// and musl, 200 concurrent x 30 s for Go, "nginx-service.default", 0.5% of
// UDP to kube-dns dropped (kernel 6.18 does not lose packets to the race).
func Default() Config {
	return Config{
		Namespace: "default", Service: "nginx-service", ServiceNamespace: "default",
		CThreads: 50, CDuration: 15 * time.Second, GoConcurrency: 200, GoDuration: 30 * time.Second,
		Drop: 0.005,
	}
}

// Row is one client's result.
type Row struct {
	Client string
	dnsload.Result
}

// Run prepares the cluster (Prepare), then runs each client in turn
// (RunClients). c's progress output shows every step.
func Run(ctx context.Context, c *cluster.Cluster, repoDir, workDir string, cfg Config) ([]Row, error) {
	if err := Prepare(ctx, c, repoDir, workDir, cfg); err != nil {
		return nil, err
	}
	return RunClients(ctx, c, cfg)
}

// Prepare builds and imports the client images and creates the Service.
func Prepare(ctx context.Context, c *cluster.Cluster, repoDir, workDir string, cfg Config) error {
	if err := c.Step("build and import load client images (glibc, musl, Go)", func() error {
		bins, err := clients.Build(repoDir, workDir)
		if err != nil {
			return err
		}
		return c.BuildAndImport(ctx, bins.Images()...)
	}); err != nil {
		return err
	}
	return c.Step("create Service "+cfg.ServiceNamespace+"/"+cfg.Service, func() error {
		return c.Apply(ctx, serviceManifest(cfg.ServiceNamespace, cfg.Service))
	})
}

// RunClients runs the glibc, musl and Go clients one after the other, with
// the race emulated during the runs when cfg.Drop > 0.
func RunClients(ctx context.Context, c *cluster.Cluster, cfg Config) ([]Row, error) {
	if cfg.Drop > 0 {
		var remove func() error
		if err := c.Step(fmt.Sprintf("drop %.2g%% of UDP from pods to kube-dns %v (emulated conntrack race)", cfg.Drop*100, c.KubeDNSIPs()), func() error {
			var err error
			remove, err = c.DropKubeDNSUDP(ctx, cfg.Drop)
			return err
		}); err != nil {
			return nil, err
		}
		defer func() { _ = remove() }()
	}
	host := cfg.Service + "." + cfg.ServiceNamespace
	var rows []Row
	for _, kind := range clients.Kinds {
		load := clients.Load{Host: host, Concurrency: cfg.CThreads, Duration: cfg.CDuration, Slow: time.Second, MaxLookups: 10_000_000}
		if kind == clients.Go {
			load.Concurrency, load.Duration = cfg.GoConcurrency, cfg.GoDuration
		}
		name := "seeds-" + kind
		manifest, err := clients.PodManifest(cfg.Namespace, name, kind, load, cfg.Annotations)
		if err != nil {
			return nil, err
		}
		var logs string
		if err := c.Step(fmt.Sprintf("%s client: %d x %s of lookups of %q", kind, load.Concurrency, load.Duration, host), func() error {
			logs, err = c.RunPod(ctx, cfg.Namespace, name, manifest)
			return err
		}); err != nil {
			return nil, err
		}
		res, err := clients.ParseResult([]byte(logs))
		if err != nil {
			return nil, err
		}
		rows = append(rows, Row{Client: kind, Result: res})
	}
	return rows, nil
}

func serviceManifest(namespace, name string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Service
metadata: {name: %s, namespace: %s}
spec:
  selector: {app: %s}
  ports: [{port: 80, protocol: TCP}]
`, name, namespace, name)
}

// WriteTable prints the rows side by side: lookups, errors, mean, p99,
// max, the lookups that took 1 s and 5 s or more, and of those >= 1 s the
// ones the client's own waits for a CPU explain (dnsload.Result.SelfStarved).
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "client\tlookups\terrors\tmean\tp99\tmax\t>=1s\t>=5s\tof >=1s, client starved\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%d (%.2f%%)\t%d (%.2f%%)\t%d\t\n", r.Client, r.Lookups, r.Errors,
			ms(r.Mean), ms(r.P99), ms(r.Max), r.Over1s, pct(r.Over1s, r.Lookups), r.Over5s, pct(r.Over5s, r.Lookups), r.SelfStarved)
	}
	return tw.Flush()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

func pct(n, of int64) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	if c.Namespace == "" || c.Service == "" || c.ServiceNamespace == "" || strings.ContainsAny(c.Service, ". ") {
		errs = append(errs, fmt.Errorf("namespace %q, service %q in %q: want DNS labels", c.Namespace, c.Service, c.ServiceNamespace))
	}
	if c.CThreads < 1 || c.GoConcurrency < 1 {
		errs = append(errs, fmt.Errorf("threads %d, Go concurrency %d: want >= 1", c.CThreads, c.GoConcurrency))
	}
	if c.CDuration < time.Second || c.GoDuration < time.Second {
		errs = append(errs, fmt.Errorf("durations %s, %s: want >= 1s", c.CDuration, c.GoDuration))
	}
	if c.Drop < 0 || c.Drop > 1 {
		errs = append(errs, fmt.Errorf("drop %v: want 0..1", c.Drop))
	}
	return errors.Join(errs...)
}

// Command slowkubedns measures DNS caches in front of a slow kube-dns: the
// "slow kube-dns" section of `make bench` (bench/peers.sh runs it). Every
// load is bounded in time and count and sends only to the loopback address
// it is given.
//
//	slowkubedns kube-dns -dir DIR -listen IP:PORT
//	    writes DIR/Corefile and its zone files: the real CoreDNS as kube-dns,
//	    cluster.local answered at once, ext.test after 200 ms, stuck.test
//	    never, big.test with a 60,000-byte TXT record for every name.
//	slowkubedns load -server IP:PORT -name NAME -out FILE [-duration 20s]
//	    40 outstanding unique ext.test names (at most 200/s) while 50/s unique
//	    cluster names, all misses, are timed; the figures to FILE (JSON).
//	slowkubedns hostile -server IP:PORT -load big|flood|tcp|stuck -pid PID -out FILE
//	    one hostile client's load, while 50/s cluster names from another
//	    client are timed; the server's peak RSS (PID's VmHWM) at the end.
//	slowkubedns report -memory-limit 128Mi FILE...
//	    the markdown tables of the FILEs, in the order given.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/localdns/localdns/internal/flagutil"
	"k8s.io/apimachinery/pkg/api/resource"
)

const usage = `Usage:
  slowkubedns kube-dns -dir DIR -listen IP:PORT [-external-delay 200ms]
  slowkubedns load -server IP:PORT -name NAME -out FILE [flags]
  slowkubedns hostile -server IP:PORT -load big|flood|tcp|stuck -pid PID -out FILE [flags]
  slowkubedns report -memory-limit QUANTITY FILE...
`

var errUsage = errors.New("want a command: kube-dns, load, hostile or report")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "slowkubedns:", err)
		if errors.Is(err, errUsage) {
			fmt.Fprint(os.Stderr, usage)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "kube-dns":
		return kubeDNSCommand(args)
	case "load":
		return loadCommand(ctx, args)
	case "hostile":
		return hostileCommand(ctx, args)
	case "report":
		return reportCommand(args, stdout)
	}
	return fmt.Errorf("unknown command %q: %w", cmd, errUsage)
}

func kubeDNSCommand(args []string) error {
	fs := flagutil.NewFlagSet("slowkubedns kube-dns", usage)
	dir := fs.String("dir", "", "directory for the Corefile and zone files")
	listen := fs.String("listen", "", "IP:PORT kube-dns serves on")
	delay := fs.Duration("external-delay", 200*time.Millisecond, "how long kube-dns takes to answer an ext.test name")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addr, err := loopback(*listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	if *dir == "" {
		return errors.New("-dir is required")
	}
	return writeKubeDNS(*dir, addr, *delay)
}

// measuring is the flags that load and hostile share: the server under
// test and the file for the figures.
type measuring struct {
	fs     *flag.FlagSet
	server *string
	out    *string
}

func newMeasuring(cmd string) measuring {
	fs := flagutil.NewFlagSet("slowkubedns "+cmd, usage)
	return measuring{
		fs:     fs,
		server: fs.String("server", "", "IP:PORT of the DNS cache under test"),
		out:    fs.String("out", "", "file for the figures (JSON)"),
	}
}

// parse parses args and returns the server's address.
func (m measuring) parse(args []string) (netip.AddrPort, error) {
	if err := m.fs.Parse(args); err != nil {
		return netip.AddrPort{}, err
	}
	if *m.out == "" {
		return netip.AddrPort{}, errors.New("-out is required")
	}
	addr, err := loopback(*m.server)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("-server: %w", err)
	}
	return addr, nil
}

func loadCommand(ctx context.Context, args []string) error {
	m := newMeasuring("load")
	name := m.fs.String("name", "", "the server's name in the report")
	cfg := defaultLoad
	m.fs.DurationVar(&cfg.duration, "duration", cfg.duration, "how long the load runs")
	m.fs.IntVar(&cfg.externalOutstanding, "external-outstanding", cfg.externalOutstanding, "ext.test queries outstanding at once")
	m.fs.IntVar(&cfg.externalRate, "external-rate", cfg.externalRate, "at most this many ext.test queries per second")
	m.fs.IntVar(&cfg.clusterRate, "cluster-rate", cfg.clusterRate, "cluster names timed per second")
	m.fs.DurationVar(&cfg.timeout, "timeout", cfg.timeout, "how long a client waits for a reply")
	var err error
	if cfg.server, err = m.parse(args); err != nil {
		return err
	}
	if err := cfg.check(); err != nil {
		return err
	}
	if *name == "" {
		return errors.New("-name is required")
	}
	res := runLoad(ctx, cfg)
	res.Name = *name
	fmt.Fprintln(os.Stderr, res.summary())
	return writeJSON(*m.out, res)
}

func hostileCommand(ctx context.Context, args []string) error {
	m := newMeasuring("hostile")
	kind := m.fs.String("load", "", "big, flood, tcp or stuck")
	pid := m.fs.Int("pid", 0, "the server's process, for its peak RSS")
	cfg := defaultHostile
	m.fs.IntVar(&cfg.count, "count", 0, "queries or connections of the load (0: the load's default)")
	m.fs.DurationVar(&cfg.limit, "limit", cfg.limit, "the longest the load may run")
	m.fs.DurationVar(&cfg.hold, "hold", cfg.hold, "tcp, stuck: how long the load is held once sent")
	m.fs.DurationVar(&cfg.timeout, "timeout", cfg.timeout, "how long a client waits for a reply")
	var err error
	if cfg.server, err = m.parse(args); err != nil {
		return err
	}
	if cfg.load, err = hostileLoadNamed(*kind); err != nil {
		return fmt.Errorf("-load: %w", err)
	}
	if *pid <= 0 {
		return errors.New("-pid is required")
	}
	if cfg.count == 0 {
		cfg.count = cfg.load.count
	}
	res, err := runHostile(ctx, cfg, *pid)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, res.summary())
	return writeJSON(*m.out, res)
}

func reportCommand(args []string, stdout io.Writer) error {
	fs := flagutil.NewFlagSet("slowkubedns report", usage)
	limit := fs.String("memory-limit", "", "the node cache DaemonSet's memory limit (a Kubernetes quantity)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	q, err := resource.ParseQuantity(*limit)
	if err != nil {
		return fmt.Errorf("-memory-limit: %w", err)
	}
	slow, hostile, err := readResults(fs.Args())
	if err != nil {
		return err
	}
	return writeReport(stdout, slow, hostile, q.Value())
}

// loopback parses IP:PORT and insists on a loopback IP: the bench never
// sends anywhere else.
func loopback(s string) (netip.AddrPort, error) {
	addr, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if !addr.Addr().IsLoopback() {
		return netip.AddrPort{}, fmt.Errorf("%s is not a loopback address", s)
	}
	return addr, nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

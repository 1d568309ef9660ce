// Command fakedns is a stand-in for kube-dns in the demo, the benchmark and
// the integration tests: the fake kube-dns of internal/kubednsfake on UDP and
// TCP. It answers the cluster zone the way CoreDNS does for Services
// (authoritative, TTL 5, SOA on NXDOMAIN and NODATA), external zones after a
// latency, never answers silent zones, answers big zones with huge TXT
// records, refuses every other name and never forwards anything anywhere.
// Like CoreDNS it handles one TCP connection's queries one at a time, and
// with --lameduck it keeps serving that long after SIGTERM.
//
// The cluster zone holds kubernetes.default, kube-dns.kube-system and
// --services Services svc-<i>.default, each with A, AAAA and an _http._tcp
// SRV record.
//
// Like CoreDNS (whose core/dnsserver sets MaxTCPQueries to -1), it serves any
// number of queries on one TCP connection; --max-tcp-queries N closes each
// connection after N, as miekg/dns servers do by default (128) and CoreDNS
// releases that left it unset did.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/localdns/localdns/internal/flagutil"
	"github.com/localdns/localdns/internal/kubednsfake"
	"github.com/miekg/dns"
)

type config struct {
	listen        []string
	zones         kubednsfake.Config
	maxTCPQueries int // per connection; -1 = unlimited
	lameduck      time.Duration
}

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("fakedns", flag.ContinueOnError)
	var (
		listen        = fs.String("listen", "127.0.0.1:5301", "comma-separated ip:port list to serve on, UDP and TCP")
		zone          = fs.String("zone", "cluster.local", "the cluster zone to answer")
		services      = fs.Int("services", 100, "how many svc-<i>.default Services the zone holds")
		ttl           = fs.Uint("ttl", kubednsfake.ClusterTTL, "TTL of every cluster record, as CoreDNS's kubernetes plugin uses")
		maxTCP        = fs.Int("max-tcp-queries", -1, "queries served on one TCP connection before it is closed; -1 = unlimited, as CoreDNS")
		externalZones flagutil.List
		silentZones   flagutil.List
		bigZones      flagutil.List
		externalDelay = kubednsfake.Latency{Min: 10 * time.Millisecond, Max: 300 * time.Millisecond}
		bigSize       = fs.Int("big-size", 60000, fmt.Sprintf("bytes of TXT text in each answer of a --big-zone (at most %d)", kubednsfake.MaxBigSize))
		lameduck      = fs.Duration("lameduck", 0, "on SIGTERM, keep serving this long before stopping, as CoreDNS's health { lameduck }")
	)
	fs.Var(&externalZones, "external-zone", "zone answered after --external-delay (A 192.0.2.53, AAAA 2001:db8::53); repeatable or comma-separated")
	fs.Var(&externalDelay, "external-delay", "how long an external zone takes to answer: a duration or a range MIN-MAX")
	fs.Var(&silentZones, "silent-zone", "zone whose queries are never answered; repeatable or comma-separated")
	fs.Var(&bigZones, "big-zone", "zone answering every TXT query with --big-size bytes; repeatable or comma-separated")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	cfg := config{maxTCPQueries: *maxTCP, lameduck: *lameduck}
	for a := range strings.SplitSeq(*listen, ",") {
		if _, err := netip.ParseAddrPort(a); err != nil {
			return config{}, fmt.Errorf("--listen: %w", err)
		}
		cfg.listen = append(cfg.listen, a)
	}
	cluster, err := kubednsfake.NewClusterZone(*zone, *services, uint32(*ttl))
	if err != nil {
		return config{}, fmt.Errorf("--zone, --services: %w", err)
	}
	cfg.zones = kubednsfake.Config{Cluster: cluster, Silent: silentZones.Values}
	for _, z := range externalZones.Values {
		cfg.zones.External = append(cfg.zones.External, kubednsfake.ExternalZone{Name: z, Latency: externalDelay})
	}
	for _, z := range bigZones.Values {
		cfg.zones.Big = append(cfg.zones.Big, kubednsfake.BigZone{Name: z, Size: *bigSize})
	}
	if cfg.maxTCPQueries == 0 || cfg.maxTCPQueries < -1 {
		return config{}, fmt.Errorf("--max-tcp-queries: %d is neither positive nor -1", cfg.maxTCPQueries)
	}
	if cfg.lameduck < 0 {
		return config{}, fmt.Errorf("--lameduck: %v is negative", cfg.lameduck)
	}
	return cfg, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err == nil {
		err = run(cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakedns:", err)
		os.Exit(2)
	}
}

func run(cfg config) error {
	kubeDNS, err := kubednsfake.New(cfg.zones)
	if err != nil {
		return err
	}
	var answered atomic.Int64
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		answered.Add(1)
		kubeDNS.ServeDNS(w, req)
	})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var servers []*kubednsfake.Server
	defer func() {
		for _, s := range servers {
			_ = s.Shutdown()
		}
		fmt.Fprintf(os.Stderr, "fakedns: handled %d queries\n", answered.Load())
	}()
	for _, addr := range cfg.listen {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			pc.Close()
			return err
		}
		s, err := kubednsfake.Serve(pc, l, handler, func(s *dns.Server) { s.MaxTCPQueries = cfg.maxTCPQueries })
		if err != nil {
			return err
		}
		servers = append(servers, s)
	}
	fmt.Fprintf(os.Stderr, "fakedns: serving %s on %s (%d queries per TCP connection; external %v, silent %v, big %v)\n",
		cfg.zones.Cluster.Origin(), strings.Join(cfg.listen, ","), cfg.maxTCPQueries, cfg.zones.External, cfg.zones.Silent, cfg.zones.Big)
	<-ctx.Done()
	if cfg.lameduck > 0 {
		fmt.Fprintf(os.Stderr, "fakedns: lameduck: serving %v more\n", cfg.lameduck)
		time.Sleep(cfg.lameduck)
	}
	return nil
}

// Command fakedns is a stand-in for kube-dns in the demo, the benchmark and
// the integration tests. It answers the cluster zone the way CoreDNS does for
// Services (authoritative, TTL 5, SOA on NXDOMAIN and NODATA), refuses every
// other name and never forwards anything anywhere.
//
// The zone holds kubernetes.default, kube-dns.kube-system and --services
// Services svc-<i>.default, each with A, AAAA and an _http._tcp SRV record.
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
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/miekg/dns"
)

type config struct {
	listen        []string
	zone          string
	services      int
	ttl           uint32
	maxTCPQueries int // per connection; -1 = unlimited
}

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("fakedns", flag.ContinueOnError)
	var (
		listen   = fs.String("listen", "127.0.0.1:5301", "comma-separated ip:port list to serve on, UDP and TCP")
		zone     = fs.String("zone", "cluster.local", "the cluster zone to answer")
		services = fs.Int("services", 100, "how many svc-<i>.default Services the zone holds")
		ttl      = fs.Uint("ttl", 5, "TTL of every record, as CoreDNS's kubernetes plugin uses")
		maxTCP   = fs.Int("max-tcp-queries", -1, "queries served on one TCP connection before it is closed; -1 = unlimited, as CoreDNS")
	)
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	cfg := config{zone: dns.CanonicalName(*zone), services: *services, ttl: uint32(*ttl), maxTCPQueries: *maxTCP}
	for a := range strings.SplitSeq(*listen, ",") {
		if _, err := netip.ParseAddrPort(a); err != nil {
			return config{}, fmt.Errorf("--listen: %w", err)
		}
		cfg.listen = append(cfg.listen, a)
	}
	if _, ok := dns.IsDomainName(cfg.zone); !ok || cfg.zone == "." {
		return config{}, fmt.Errorf("--zone: %q is not a domain", *zone)
	}
	if cfg.services < 0 || cfg.services > 1<<16 {
		return config{}, fmt.Errorf("--services: %d is not in 0..65536", cfg.services)
	}
	if cfg.maxTCPQueries == 0 || cfg.maxTCPQueries < -1 {
		return config{}, fmt.Errorf("--max-tcp-queries: %d is neither positive nor -1", cfg.maxTCPQueries)
	}
	return cfg, nil
}

// zone is the answer data: records by lower-case owner name, plus the empty
// non-terminals (names that exist only as parents), which answer NODATA.
type zone struct {
	origin  string
	soa     dns.RR
	records map[string][]dns.RR
	exists  map[string]bool
}

func buildZone(cfg config) *zone {
	z := &zone{origin: cfg.zone, records: map[string][]dns.RR{}, exists: map[string]bool{}}
	hdr := func(name string, t uint16) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: cfg.ttl}
	}
	z.soa = &dns.SOA{Hdr: hdr(cfg.zone, dns.TypeSOA), Ns: "ns.dns." + cfg.zone, Mbox: "hostmaster." + cfg.zone,
		Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: cfg.ttl}
	z.add(z.soa)
	z.add(&dns.NS{Hdr: hdr(cfg.zone, dns.TypeNS), Ns: "ns.dns." + cfg.zone})
	z.add(&dns.A{Hdr: hdr("ns.dns."+cfg.zone, dns.TypeA), A: netip.MustParseAddr("10.96.0.10").AsSlice()})
	z.add(&dns.A{Hdr: hdr("kubernetes.default.svc."+cfg.zone, dns.TypeA), A: netip.MustParseAddr("10.96.0.1").AsSlice()})
	z.add(&dns.A{Hdr: hdr("kube-dns.kube-system.svc."+cfg.zone, dns.TypeA), A: netip.MustParseAddr("10.96.0.10").AsSlice()})
	for i := range cfg.services {
		name := fmt.Sprintf("svc-%d.default.svc.%s", i, cfg.zone)
		v4 := netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)})
		v6 := netip.AddrFrom16([16]byte{0: 0xfd, 3: 0x97, 14: byte(i >> 8), 15: byte(i)})
		z.add(&dns.A{Hdr: hdr(name, dns.TypeA), A: v4.AsSlice()})
		z.add(&dns.AAAA{Hdr: hdr(name, dns.TypeAAAA), AAAA: v6.AsSlice()})
		z.add(&dns.SRV{Hdr: hdr("_http._tcp."+name, dns.TypeSRV), Priority: 0, Weight: 100, Port: 80, Target: name})
	}
	return z
}

func (z *zone) add(rr dns.RR) {
	name := strings.ToLower(rr.Header().Name)
	z.records[name] = append(z.records[name], rr)
	for n := name; dns.IsSubDomain(z.origin, n); {
		z.exists[n] = true
		i, end := dns.NextLabel(n, 0)
		if end {
			break
		}
		n = n[i:]
	}
}

// answer fills the reply for one question.
func (z *zone) answer(q dns.Question, reply *dns.Msg) {
	name := strings.ToLower(q.Name)
	if q.Qclass != dns.ClassINET || !dns.IsSubDomain(z.origin, name) {
		reply.Rcode = dns.RcodeRefused
		return
	}
	reply.Authoritative = true
	if !z.exists[name] {
		reply.Rcode = dns.RcodeNameError
		reply.Ns = []dns.RR{z.soa}
		return
	}
	for _, rr := range z.records[name] {
		if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
			c := dns.Copy(rr)
			c.Header().Name = q.Name // keep the query's case, as servers do
			reply.Answer = append(reply.Answer, c)
		}
	}
	if len(reply.Answer) == 0 {
		reply.Ns = []dns.RR{z.soa} // NODATA
	}
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakedns:", err)
		os.Exit(2)
	}
	z := buildZone(cfg)
	var answered atomic.Int64
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, req *dns.Msg) {
		reply := new(dns.Msg)
		reply.SetReply(req)
		if len(req.Question) != 1 {
			reply.Rcode = dns.RcodeFormatError
		} else {
			z.answer(req.Question[0], reply)
		}
		if opt := req.IsEdns0(); opt != nil {
			reply.SetEdns0(opt.UDPSize(), false)
		}
		answered.Add(1)
		_ = w.WriteMsg(reply)
	})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errc := make(chan error, 2*len(cfg.listen))
	var servers []*dns.Server
	for _, addr := range cfg.listen {
		for _, network := range []string{"udp", "tcp"} {
			srv := &dns.Server{Addr: addr, Net: network, Handler: mux, MaxTCPQueries: cfg.maxTCPQueries}
			started := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(started) }
			servers = append(servers, srv)
			go func() { errc <- srv.ListenAndServe() }()
			select {
			case <-started:
			case err := <-errc:
				fmt.Fprintf(os.Stderr, "fakedns: serve %s/%s: %v\n", addr, network, err)
				os.Exit(1)
			}
		}
	}
	fmt.Fprintf(os.Stderr, "fakedns: serving %s on %s (%d services, TTL %d, %d queries per TCP connection)\n",
		cfg.zone, strings.Join(cfg.listen, ","), cfg.services, cfg.ttl, cfg.maxTCPQueries)
	select {
	case <-ctx.Done():
	case err := <-errc:
		fmt.Fprintln(os.Stderr, "fakedns:", err)
	}
	for _, srv := range servers {
		_ = srv.Shutdown()
	}
	fmt.Fprintf(os.Stderr, "fakedns: answered %d queries\n", answered.Load())
}

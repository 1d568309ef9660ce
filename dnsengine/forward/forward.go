// Package forward sends the DNS queries a cache cannot answer to upstream
// servers, chosen per zone, over pipelined TCP or UDP, with health tracking.
//
// # Routing
//
// Each Zone maps a domain suffix to an ordered list of servers. A query goes
// to the zone with the longest suffix of its name (case-insensitive, whole
// labels: "notcluster.local." does not match "cluster.local."); the zone "."
// catches everything. A name no zone matches fails with ErrNoZone.
//
// # Transports
//
// TCP is the default (RFC 7766): each server has a small pool of persistent
// connections; every connection carries many outstanding queries, each
// rewritten to an ID unique on that connection and matched back by ID and
// question. A connection is closed when idle longer than Config.IdleTimeout,
// when the server closes or breaks it (replies already sent are still read;
// the queries left unanswered are sent again, see below), and when a query on
// it times out while nothing at all has been read from it since that query was
// sent (a black-holed connection).
//
// Servers may close a connection after a number of queries (miekg/dns servers
// after 128 by default, RFC 7766 lets any server close), dropping the
// pipelined queries they had not read. When a server stops answering the
// queries outstanding on a connection after answering later ones and closes
// it, the pool learns that number and then sends at most that many queries on
// each connection: one that reaches it takes no new queries, does not count
// towards MaxConnsPerServer, and is closed once answered. The limit is
// forgotten after 64 connections reached it, in case it was learnt from a
// close for another reason, and learnt again at the next such close.
//
// UDP sends each query under a random ID from a connected socket, reused (up
// to MaxConnsPerServer idle per server) only after a clean exchange. Replies
// whose ID or question do not match are dropped and counted, and reading goes
// on until the attempt's deadline. An ICMP port-unreachable (ECONNREFUSED) ends
// the attempt at once; this is what makes failover fast when a node-local
// cache process is gone but its address still exists. A truncated UDP reply is
// retried over TCP to the same server within the same attempt.
//
// # Retries and failover
//
// Exchange makes one pass over the zone's servers: first, in order, every
// server not marked down; then, as a last resort when every one of those
// failed, in order, the servers that were skipped because they were down.
// When every server of the zone is marked down, Exchange fails at once with
// ErrAllDown and sends nothing: the probes (one per server) find the way back
// within Config.ProbeInterval. Trying dead servers per query would cost every
// miss a timeout while kube-dns is gone (its ClusterIP without endpoints
// rejects with ICMP, which the kernel rate-limits, so connects then wait out
// SYN retransmits), where failing fast lets the cache serve stale answers and
// clients get SERVFAIL at once. Each attempt is bounded by its Server.Timeout and by
// the caller's ctx; when ctx ends, Exchange stops. A query that was written
// but not answered on a TCP connection that closed or broke is sent again on
// another connection to the same server, up to 3 times within the attempt
// (a connection found closed before the query was written uses up one of
// these too), before the server is charged with a failure. A server that
// closes connections but answers the queries sent again is never charged.
//
// # Result contract of Exchange
//
//   - A reply with any RCODE other than SERVFAIL and REFUSED (NOERROR,
//     NXDOMAIN, ...) is a success: it is returned at once with a nil error.
//   - A reply with RCODE SERVFAIL or REFUSED fails the query on that server
//     entry (counted as reason servfail) and the next entry is tried. If no
//     server succeeds but at least one gave such a reply, the last of those
//     replies is returned with a nil error, so the caller can serve stale
//     data or pass the failure on. The caller must not cache it.
//   - Otherwise (no server replied at all) the error of the last attempt is
//     returned, wrapped with the query name; errors.Is finds ErrNoZone,
//     ErrClosed, context errors and syscall errors such as ECONNREFUSED.
//
// Every reply returned carries the caller's message ID. The request is packed
// once and otherwise left alone; miekg/dns's Pack rewrites the extended-RCODE
// bits of its OPT record, so one *dns.Msg must not be in concurrent calls.
//
// # Health
//
// Health tracks reachability. Each upstream address has an atomic counter of
// consecutive failures: timeouts, refused or unreachable (ICMP, TCP RST) and
// broken connections. Any matching reply, whatever its RCODE,
// resets it: a server that answers SERVFAIL or REFUSED is up, and what it
// cannot resolve is a property of the name (a broken delegation, an external
// name in a closed cluster), not of the server. Counting those replies would
// let one broken domain mark a healthy node cache down for every name, and
// flap it against the probes. At Config.MaxFails the server is marked down:
// it is skipped and a single probe goroutine queries Config.ProbeName (type
// SOA) every Config.ProbeInterval over the transport and timeout of the first
// Server entry naming that address; any reply to a probe or a query marks it
// up again. Servers that appear under several zones or transports with the
// same address share one health state, one TCP pool and one set of UDP
// sockets.
//
// # Metrics
//
// On Config.Registerer, prefixed with Config.Namespace:
// upstream_requests_total{server,transport} (attempts, probes included),
// upstream_errors_total{server,reason} with reason one of timeout, refused
// (connection refused, host or network unreachable: ICMP or TCP RST), closed
// (a query lost on a connection that closed or broke: counted once per query
// and loss, whether it was then sent again or failed), mismatch (reply dropped: wrong ID or
// question, or late), servfail (RCODE SERVFAIL or REFUSED), other (such as a
// malformed reply);
// upstream_request_duration_seconds{server} (attempts that got a reply),
// upstream_healthy{server} (1 up, 0 down) and
// upstream_tcp_connections{server} (open pooled connections).
package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Transport is the protocol used to reach an upstream server.
type Transport string

// Transports.
const (
	TCP Transport = "tcp"
	UDP Transport = "udp"
)

// Defaults applied by New to zero-valued fields. Exported so that flags can
// show the same values.
const (
	DefaultTimeout           = time.Second
	DefaultMaxFails          = 2
	DefaultProbeInterval     = 500 * time.Millisecond
	DefaultProbeName         = "."
	DefaultMaxConnsPerServer = 4
	DefaultIdleTimeout       = 10 * time.Second
	DefaultPipelineDepth     = 100
)

// Server is one upstream DNS server in a zone's list.
type Server struct {
	Addr      string        // "ip:port"
	Transport Transport     // default TCP
	Timeout   time.Duration // bound of one attempt on this server, default 1s
}

// Zone maps a domain suffix to the servers that answer for it.
type Zone struct {
	Name    string   // "cluster.local.", "in-addr.arpa.", "." (case-insensitive; made fully qualified)
	Servers []Server // tried in order, see the package documentation
}

// Config configures a Forwarder. Zero values mean the documented default.
type Config struct {
	// Zones route queries by the longest matching suffix. At least one.
	Zones []Zone
	// MaxFails is the number of consecutive failures that marks a server down, default 2.
	MaxFails int
	// ProbeInterval is how often a server marked down is probed (one probe in flight), default 500ms.
	ProbeInterval time.Duration
	// ProbeName is the name queried (type SOA) by probes, default ".".
	ProbeName string
	// ProbeAtStart probes every server at New, and again every ProbeInterval
	// until one answers, so that Answered (readiness) does not wait for client
	// traffic. Probe outcomes count towards health like queries.
	ProbeAtStart bool
	// MaxConnsPerServer bounds the TCP connections pooled per server, and the
	// idle UDP sockets kept for reuse, default 4.
	MaxConnsPerServer int
	// PipelineDepth is the number of queries outstanding on the least loaded
	// TCP connection at which the pool dials another one (up to
	// MaxConnsPerServer), default 100. A full pool keeps pipelining deeper.
	PipelineDepth int
	// IdleTimeout closes a TCP connection that has had no query in flight for this long, default 10s.
	IdleTimeout time.Duration
	// Registerer receives the metrics; nil = no metrics.
	Registerer prometheus.Registerer
	// Namespace prefixes every metric name, e.g. "localdns_nodecache".
	Namespace string
	// Logger receives one line per health transition (never per query); nil = discard.
	Logger *slog.Logger
}

// hop is one entry of a zone's server list, resolved to its shared upstream.
type hop struct {
	up        *upstream
	transport Transport
	timeout   time.Duration
}

type zone struct {
	name string
	hops []hop
}

// Forwarder sends queries to upstream servers. It is safe for concurrent use.
type Forwarder struct {
	cfg       Config
	log       *slog.Logger
	zones     map[string]*zone // by canonical name
	upstreams []*upstream      // one per distinct address, in order of first appearance

	answered atomic.Bool
	closed   atomic.Bool

	// mu orders starting probe goroutines against Close.
	mu     sync.Mutex
	ctx    context.Context // cancelled by Close; parent of every probe
	cancel context.CancelFunc
	probes sync.WaitGroup

	probeWire     []byte
	probeQuestion dns.Question
}

// New validates cfg, applies defaults, registers the metrics and returns a
// Forwarder. Call Close to stop its probes and close its connections.
func New(cfg Config) (*Forwarder, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("forward config: %w", err)
	}
	m, err := newMetrics(cfg.Registerer, cfg.Namespace)
	if err != nil {
		return nil, fmt.Errorf("forward metrics: %w", err)
	}
	probe := new(dns.Msg)
	probe.SetQuestion(cfg.ProbeName, dns.TypeSOA)
	probeWire, err := probe.Pack()
	if err != nil {
		return nil, fmt.Errorf("forward: pack probe for %q: %w", cfg.ProbeName, err)
	}

	f := &Forwarder{
		cfg:           cfg,
		log:           cfg.Logger,
		zones:         make(map[string]*zone, len(cfg.Zones)),
		probeWire:     probeWire,
		probeQuestion: probe.Question[0],
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	byAddr := make(map[string]*upstream)
	for _, zc := range cfg.Zones {
		z := &zone{name: zc.Name}
		for _, sc := range zc.Servers {
			u := byAddr[sc.Addr]
			if u == nil {
				u = newUpstream(sc, cfg, m.forServer(sc.Addr))
				byAddr[sc.Addr] = u
				f.upstreams = append(f.upstreams, u)
			}
			z.hops = append(z.hops, hop{up: u, transport: sc.Transport, timeout: sc.Timeout})
		}
		f.zones[z.name] = z
	}
	if cfg.ProbeAtStart {
		f.startProbing(f.probeUntilAnswered)
	}
	return f, nil
}

// withDefaults validates cfg and returns a copy with defaults applied and zone
// names in canonical form.
func (cfg Config) withDefaults() (Config, error) {
	var errs []error
	if len(cfg.Zones) == 0 {
		errs = append(errs, errors.New("no zones"))
	}
	zones := make([]Zone, 0, len(cfg.Zones))
	seen := make(map[string]bool, len(cfg.Zones))
	for _, zc := range cfg.Zones {
		name := dns.CanonicalName(zc.Name)
		if _, ok := dns.IsDomainName(name); !ok || zc.Name == "" {
			errs = append(errs, fmt.Errorf("zone %q: not a domain name", zc.Name))
			continue
		}
		if seen[name] {
			errs = append(errs, fmt.Errorf("zone %q: listed twice", name))
			continue
		}
		seen[name] = true
		if len(zc.Servers) == 0 {
			errs = append(errs, fmt.Errorf("zone %q: no servers", name))
		}
		servers := make([]Server, 0, len(zc.Servers))
		for _, sc := range zc.Servers {
			if _, err := netip.ParseAddrPort(sc.Addr); err != nil {
				errs = append(errs, fmt.Errorf("zone %q: server address %q: want ip:port: %w", name, sc.Addr, err))
			}
			switch sc.Transport {
			case "":
				sc.Transport = TCP
			case TCP, UDP:
			default:
				errs = append(errs, fmt.Errorf("zone %q: server %s: unknown transport %q", name, sc.Addr, sc.Transport))
			}
			switch {
			case sc.Timeout < 0:
				errs = append(errs, fmt.Errorf("zone %q: server %s: negative timeout", name, sc.Addr))
			case sc.Timeout == 0:
				sc.Timeout = DefaultTimeout
			}
			servers = append(servers, sc)
		}
		zones = append(zones, Zone{Name: name, Servers: servers})
	}
	cfg.Zones = zones

	nonNegative := func(name string, v int64) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", name))
		}
	}
	nonNegative("MaxFails", int64(cfg.MaxFails))
	nonNegative("ProbeInterval", int64(cfg.ProbeInterval))
	nonNegative("MaxConnsPerServer", int64(cfg.MaxConnsPerServer))
	nonNegative("PipelineDepth", int64(cfg.PipelineDepth))
	nonNegative("IdleTimeout", int64(cfg.IdleTimeout))
	if cfg.ProbeName == "" {
		cfg.ProbeName = DefaultProbeName
	}
	cfg.ProbeName = dns.Fqdn(cfg.ProbeName)
	if _, ok := dns.IsDomainName(cfg.ProbeName); !ok {
		errs = append(errs, fmt.Errorf("probe name %q: not a domain name", cfg.ProbeName))
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, err
	}

	if cfg.MaxFails == 0 {
		cfg.MaxFails = DefaultMaxFails
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.MaxConnsPerServer == 0 {
		cfg.MaxConnsPerServer = DefaultMaxConnsPerServer
	}
	if cfg.PipelineDepth == 0 {
		cfg.PipelineDepth = DefaultPipelineDepth
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// route returns the zone with the longest suffix of qname, or nil.
func (f *Forwarder) route(qname string) *zone {
	name := strings.ToLower(qname) // no allocation when already lower case
	for off := 0; ; {
		if z, ok := f.zones[name[off:]]; ok {
			return z
		}
		next, end := dns.NextLabel(name, off)
		if end {
			break
		}
		off = next
	}
	return f.zones["."]
}

// attempts collects what one Exchange learnt from the servers it tried.
type attempts struct {
	lastErr       error
	lastFailReply *dns.Msg // last SERVFAIL/REFUSED reply
}

// Exchange sends req upstream and returns the reply; see the package
// documentation for routing, retries and the result contract.
func (f *Forwarder) Exchange(ctx context.Context, req *dns.Msg) (*dns.Msg, error) {
	if f.closed.Load() {
		return nil, ErrClosed
	}
	if len(req.Question) == 0 {
		return nil, ErrNoQuestion
	}
	q := req.Question[0]
	z := f.route(q.Name)
	if z == nil {
		return nil, fmt.Errorf("forward %s: %w", q.Name, ErrNoZone)
	}
	wire, err := req.Pack()
	if err != nil {
		return nil, fmt.Errorf("forward %s: pack query: %w", q.Name, err)
	}

	var a attempts
	var downBuf [4]int
	down := downBuf[:0] // indexes of hops skipped because their server was down
	for i, h := range z.hops {
		if h.up.health.isDown() {
			down = append(down, i)
			continue
		}
		if resp, ok := f.attempt(ctx, h, wire, &q, &a); ok {
			resp.Id = req.Id
			return resp, nil
		}
	}
	if len(down) == len(z.hops) {
		return nil, fmt.Errorf("forward %s %s: %w", q.Name, dns.TypeToString[q.Qtype], ErrAllDown)
	}
	for _, i := range down {
		if resp, ok := f.attempt(ctx, z.hops[i], wire, &q, &a); ok {
			resp.Id = req.Id
			return resp, nil
		}
	}

	if a.lastFailReply != nil {
		a.lastFailReply.Id = req.Id
		return a.lastFailReply, nil
	}
	if a.lastErr == nil { // nothing was tried: ctx had ended or the forwarder closed
		a.lastErr = ctx.Err()
		if f.closed.Load() {
			a.lastErr = ErrClosed
		}
	}
	return nil, fmt.Errorf("forward %s %s: %w", q.Name, dns.TypeToString[q.Qtype], a.lastErr)
}

// attempt tries one hop unless ctx has ended or the forwarder is closed, and
// records the outcome in a. It reports true with a reply that is a success.
func (f *Forwarder) attempt(ctx context.Context, h hop, wire []byte, q *dns.Question, a *attempts) (*dns.Msg, bool) {
	if ctx.Err() != nil || f.closed.Load() {
		return nil, false
	}
	resp, err := f.try(ctx, h, wire, q)
	switch {
	case err == nil:
		return resp, true
	case errors.Is(err, errFailureRcode):
		a.lastFailReply = resp
	}
	a.lastErr = fmt.Errorf("%s over %s: %w", h.up.addr, h.transport, err)
	return nil, false
}

// try sends one query to one server within the server's timeout, updates its
// health and metrics, and returns the reply. Any reply counts as the server
// being reachable; a SERVFAIL/REFUSED reply comes back together with
// errFailureRcode, so the caller tries the next server.
func (f *Forwarder) try(ctx context.Context, h hop, wire []byte, q *dns.Question) (*dns.Msg, error) {
	actx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	start := time.Now()
	resp, err := h.up.exchange(actx, h.transport, wire, q)
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) || errors.Is(err, ErrClosed) {
			return nil, err // the caller gave up or we are closing; not the server's fault
		}
		f.failed(h.up, classify(err))
		return nil, err
	}
	h.up.metrics.duration.Observe(time.Since(start).Seconds())
	if !f.answered.Load() {
		f.answered.Store(true)
	}
	f.succeeded(h.up)
	if resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused {
		h.up.metrics.errors[reasonServfail].Inc()
		return resp, fmt.Errorf("%w %s", errFailureRcode, dns.RcodeToString[resp.Rcode])
	}
	return resp, nil
}

// Answered reports whether any upstream has ever replied (to a query or a
// probe, any RCODE), for readiness.
func (f *Forwarder) Answered() bool { return f.answered.Load() }

// Close stops the probes and closes every connection. Exchanges in flight on
// TCP fail with ErrClosed; later ones fail at once. Close is idempotent.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	if f.closed.Load() {
		f.mu.Unlock()
		return nil
	}
	f.closed.Store(true)
	f.cancel()
	f.mu.Unlock()

	f.probes.Wait()
	for _, u := range f.upstreams {
		u.close()
	}
	return nil
}

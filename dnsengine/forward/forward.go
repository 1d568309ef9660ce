// Package forward sends the DNS queries a cache cannot answer to upstream
// servers, chosen per zone, over TCP or UDP, with health tracking.
//
// # Routing
//
// Each Zone maps a domain suffix to an ordered list of servers. A query goes
// to the zone with the longest suffix of its name (case-insensitive, whole
// labels: "notcluster.local." does not match "cluster.local."); the zone "."
// catches everything. A name no zone matches fails with ErrNoZone. A zone may
// cap its queries in flight (Zone.MaxInflight): queries beyond the cap wait
// for a place, so that a flood of slow names in one zone (external names
// that kube-dns forwards to slow resolvers) cannot take every connection
// that another zone's queries (cluster names) need.
//
// # Transports
//
// TCP is the default. CoreDNS, like every miekg/dns server, answers the
// queries of one TCP connection one after another, so a query pipelined
// behind a slow one waits for it. Each TCP connection therefore carries one
// query at a time: a query takes an idle connection from its server's pool
// (the least recently used), or dials a new one while the pool holds fewer
// than Config.MaxConnsPerServer, or else waits for one to come back. A
// connection goes back to the pool after a clean exchange only; it is closed
// when idle for Config.IdleTimeout and once it is older than
// Config.MaxConnAge (less a random part of up to a half, so connections do not
// expire together). The age limit is what spreads a node's queries over every
// replica behind a Service ClusterIP: each new connection is DNATed anew, so
// a replica added by scaling gets its share of connections within MaxConnAge,
// and least-recently-used reuse gives every connection an even part of the
// queries, so a replica's share of the queries is its share of connections.
//
// UDP sends each query under a random ID from a connected socket, reused (up
// to MaxConnsPerServer idle per server) only after a clean exchange. Replies
// whose ID or question do not match are dropped and counted, and reading goes
// on until the attempt's deadline. An ICMP port-unreachable (ECONNREFUSED) ends
// the attempt at once. A truncated UDP reply is retried over TCP to the same
// server within the same attempt.
//
// # Slow or dead
//
// A server that is slow on some names is alive; one that does not take our
// packets is not. The forwarder tells them apart with what the kernel knows:
// a TCP connection's queries are acknowledged by the peer's kernel however
// slowly its DNS server works, so data left unacknowledged for
// Config.UnackedTimeout (TCP_USER_TIMEOUT) means the peer is gone, as does a
// dial that is refused or not answered within Config.DialTimeout. Those are
// dead signals. A query that is merely not answered in time is ambiguous:
// it starts a probe (Config.ProbeName, type SOA, which kube-dns answers from
// its own data at once) unless a probe is running, and only the probe's
// failure is a dead signal. So is a query of a server that has answered
// nothing since the query was sent, once it has waited Config.SuspectAfter.
// A dead signal counts towards marking the server down only if the server has
// answered nothing at all since the failed attempt began: with several
// replicas behind one address, a dial that reaches a replica just deleted
// does not condemn the others, which keep answering.
//
// Config.MaxFails counted signals in a row mark the server down; any reply,
// whatever its RCODE, marks it up and resets the count (a server that
// answers SERVFAIL or REFUSED is reachable; what it cannot resolve is a
// property of the name). A server marked down is probed every
// Config.ProbeInterval, one probe at a time, over the transport and timeout
// of the first Server entry naming its address.
//
// # Retries and failover
//
// Exchange makes one pass over the zone's servers: first, in order, every
// server not marked down; then, as a last resort when every one of those
// failed, in order, the servers that were skipped because they were down.
// When every server of the zone is marked down, Exchange fails at once with
// ErrAllDown and sends nothing: the probes find the way back within
// Config.ProbeInterval, and the cache can serve stale answers or clients get
// SERVFAIL at once instead of waiting out timeouts. Each attempt is bounded
// by its Server.Timeout and by the caller's ctx. Within an attempt, a TCP
// query whose connection was closed by the server before the reply, whose
// dial failed, or whose peer stopped acknowledging, is sent again on another
// connection to the same server (a new connection may reach another replica),
// up to 3 times.
//
// # Result contract of Exchange
//
//   - A reply with any RCODE other than SERVFAIL and REFUSED (NOERROR,
//     NXDOMAIN, ...) is a success: it is returned at once with a nil error.
//   - A reply with RCODE SERVFAIL or REFUSED fails the query on that server
//     entry (counted as reason servfail) and the next entry is tried. If no
//     server succeeds but at least one gave such a reply, the last of those
//     replies is returned with a nil error: the server was reached and that is
//     its answer.
//   - Otherwise (no server replied at all) the error of the last attempt is
//     returned, wrapped with the query name; errors.Is finds ErrNoZone,
//     ErrAllDown, ErrClosed, context errors and syscall errors such as
//     ECONNREFUSED.
//
// Every reply returned carries the caller's message ID. The request is packed
// once and otherwise left alone; miekg/dns's Pack rewrites the extended-RCODE
// bits of its OPT record, so one *dns.Msg must not be in concurrent calls.
//
// # Metrics
//
// On Config.Registerer, prefixed with Config.Namespace:
// upstream_requests_total{server,transport} (attempts, probes included),
// upstream_errors_total{server,reason} with reason one of timeout (a query
// not answered in time: ambiguous), refused (connection refused, host or
// network unreachable: ICMP or TCP RST), unreachable (a dial not answered in
// time, or sent data never acknowledged), closed (a connection closed by the
// server before the reply; the query is sent again), mismatch (reply
// dropped: wrong ID or question), servfail (RCODE SERVFAIL or REFUSED), other
// (such as a malformed reply);
// upstream_request_duration_seconds{server} (attempts that got a reply),
// upstream_healthy{server} (1 up, 0 down),
// upstream_tcp_connections{server} (open connections),
// upstream_tcp_waits_total{server} (queries that found every connection busy
// at MaxConnsPerServer and waited) and
// upstream_zone_waits_total{zone} (queries that found their zone at
// MaxInflight and waited).
package forward

import (
	"cmp"
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
	DefaultProbeTimeout      = 350 * time.Millisecond
	DefaultSuspectAfter      = 250 * time.Millisecond
	DefaultProbeName         = "."
	DefaultMaxConnsPerServer = 256
	DefaultIdleTimeout       = 5 * time.Second // below miekg/dns's 8 s and CoreDNS's 10 s server side
	// DefaultMaxConnAge renews a node's connections every 5-10 s: a TCP
	// handshake each, and many more draws of a replica per minute, so the
	// replicas' shares of one node's queries stay close to even.
	DefaultMaxConnAge = 10 * time.Second
	// DefaultDialTimeout and DefaultUnackedTimeout stay above TCP's 200 ms
	// minimum retransmission timeout, so one lost segment is no dead signal.
	DefaultDialTimeout    = 400 * time.Millisecond
	DefaultUnackedTimeout = 400 * time.Millisecond
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
	// MaxInflight caps this zone's queries in flight; more wait for a place
	// (within their ctx). 0 = no cap of its own.
	MaxInflight int
}

// Config configures a Forwarder. Zero values mean the documented default.
type Config struct {
	// Zones route queries by the longest matching suffix. At least one.
	Zones []Zone
	// MaxFails is the number of dead signals in a row that marks a server down, default 2.
	MaxFails int
	// ProbeInterval is how often a server marked down is probed, default 500ms.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one probe, default 350ms (and at most the probed entry's Timeout).
	ProbeTimeout time.Duration
	// SuspectAfter is how long a query may wait, with its server answering
	// nothing meanwhile, before the server is probed, default 250ms.
	SuspectAfter time.Duration
	// ProbeName is the name queried (type SOA) by probes, default ".".
	ProbeName string
	// ProbeAtStart probes every server at New, and again every ProbeInterval
	// until one answers, so that Answered (readiness) does not wait for client
	// traffic. Probe outcomes count towards health like queries.
	ProbeAtStart bool
	// MaxConnsPerServer bounds the TCP connections per server (each carries
	// one query at a time), and the idle UDP sockets kept for reuse, default 256.
	MaxConnsPerServer int
	// IdleTimeout closes a TCP connection idle for this long, default 5s.
	IdleTimeout time.Duration
	// MaxConnAge closes a TCP connection once this old (less up to half, at
	// random), so that a Service's new replicas get their share, default 10s.
	MaxConnAge time.Duration
	// DialTimeout bounds a TCP dial, default 400ms.
	DialTimeout time.Duration
	// UnackedTimeout closes a TCP connection whose sent data is not
	// acknowledged for this long (TCP_USER_TIMEOUT), default 400ms.
	UnackedTimeout time.Duration
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
	name  string
	hops  []hop
	slots chan struct{} // nil = no MaxInflight
	waits prometheus.Counter
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
		z := &zone{name: zc.Name, waits: m.zoneWaits.WithLabelValues(zc.Name)}
		if zc.MaxInflight > 0 {
			z.slots = make(chan struct{}, zc.MaxInflight)
		}
		for _, sc := range zc.Servers {
			u := byAddr[sc.Addr]
			if u == nil {
				u = newUpstream(f, sc, m.forServer(sc.Addr))
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
		if zc.MaxInflight < 0 {
			errs = append(errs, fmt.Errorf("zone %q: negative MaxInflight", name))
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
		zones = append(zones, Zone{Name: name, Servers: servers, MaxInflight: zc.MaxInflight})
	}
	cfg.Zones = zones

	for name, v := range map[string]int64{
		"MaxFails":          int64(cfg.MaxFails),
		"ProbeInterval":     int64(cfg.ProbeInterval),
		"ProbeTimeout":      int64(cfg.ProbeTimeout),
		"SuspectAfter":      int64(cfg.SuspectAfter),
		"MaxConnsPerServer": int64(cfg.MaxConnsPerServer),
		"IdleTimeout":       int64(cfg.IdleTimeout),
		"MaxConnAge":        int64(cfg.MaxConnAge),
		"DialTimeout":       int64(cfg.DialTimeout),
		"UnackedTimeout":    int64(cfg.UnackedTimeout),
	} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", name))
		}
	}
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

	cfg.MaxFails = cmp.Or(cfg.MaxFails, DefaultMaxFails)
	cfg.ProbeInterval = cmp.Or(cfg.ProbeInterval, DefaultProbeInterval)
	cfg.ProbeTimeout = cmp.Or(cfg.ProbeTimeout, DefaultProbeTimeout)
	cfg.SuspectAfter = cmp.Or(cfg.SuspectAfter, DefaultSuspectAfter)
	cfg.MaxConnsPerServer = cmp.Or(cfg.MaxConnsPerServer, DefaultMaxConnsPerServer)
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, DefaultIdleTimeout)
	cfg.MaxConnAge = cmp.Or(cfg.MaxConnAge, DefaultMaxConnAge)
	cfg.DialTimeout = cmp.Or(cfg.DialTimeout, DefaultDialTimeout)
	cfg.UnackedTimeout = cmp.Or(cfg.UnackedTimeout, DefaultUnackedTimeout)
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

// enter takes a place among the zone's queries in flight, waiting for one
// within ctx when the zone is at MaxInflight. The returned func gives it back.
func (z *zone) enter(ctx context.Context) (leave func(), err error) {
	if z.slots == nil {
		return func() {}, nil
	}
	select {
	case z.slots <- struct{}{}:
	default:
		z.waits.Inc()
		select {
		case z.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for a place among zone %s's queries in flight: %w", z.name, ctx.Err())
		}
	}
	return func() { <-z.slots }, nil
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
	leave, err := z.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("forward %s %s: %w", q.Name, dns.TypeToString[q.Qtype], err)
	}
	defer leave()

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
	resp, err := f.try(ctx, h, h.timeout, wire, q)
	switch {
	case err == nil:
		return resp, true
	case errors.Is(err, errFailureRcode):
		a.lastFailReply = resp
	}
	a.lastErr = fmt.Errorf("%s over %s: %w", h.up.addr, h.transport, err)
	return nil, false
}

// try sends one query to one server within timeout, updates its health and
// metrics, and returns the reply. Dead signals are counted where they happen
// (see upstream.ask); a query not answered in time, or one that waits
// SuspectAfter while its server answers nothing, makes the server probed. Any
// reply counts as the server being reachable; a SERVFAIL/REFUSED reply comes
// back together with errFailureRcode, so the caller tries the next server.
func (f *Forwarder) try(ctx context.Context, h hop, timeout time.Duration, wire []byte, q *dns.Question) (*dns.Msg, error) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := monotime()
	suspect := time.AfterFunc(f.cfg.SuspectAfter, func() { f.suspect(h.up, start) })
	resp, err := h.up.ask(actx, h.transport, wire, q, start)
	suspect.Stop()
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) || errors.Is(err, ErrClosed) {
			return nil, err // the caller gave up or we are closing; not the server's fault
		}
		if r := classify(err); r == reasonTimeout {
			h.up.metrics.errors[r].Inc()
			f.suspect(h.up, start)
		}
		return nil, err
	}
	h.up.metrics.duration.Observe(float64(monotime()-start) / float64(time.Second))
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
// TCP fail; later ones fail at once with ErrClosed. Close is idempotent.
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

package forward

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/testutil"
)

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	ok := []Zone{{Name: ".", Servers: []Server{{Addr: "127.0.0.1:53"}}}}
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; "" = valid
	}{
		{"valid", Config{Zones: ok}, ""},
		{"valid ipv6 udp", Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: "[::1]:53", Transport: UDP}}}}}, ""},
		{"no zones", Config{}, "no zones"},
		{"empty zone name", Config{Zones: []Zone{{Name: "", Servers: ok[0].Servers}}}, "not a domain name"},
		{"duplicate zone", Config{Zones: []Zone{ok[0], {Name: ".", Servers: ok[0].Servers}}}, "listed twice"},
		{"duplicate zone differing in case", Config{Zones: []Zone{
			{Name: "Cluster.Local", Servers: ok[0].Servers}, {Name: "cluster.local.", Servers: ok[0].Servers},
		}}, "listed twice"},
		{"zone without servers", Config{Zones: []Zone{{Name: "."}}}, "no servers"},
		{"host name instead of ip", Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: "kube-dns:53"}}}}}, "want ip:port"},
		{"missing port", Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: "10.0.0.10"}}}}}, "want ip:port"},
		{"unknown transport", Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: "127.0.0.1:53", Transport: "quic"}}}}}, "unknown transport"},
		{"negative timeout", Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: "127.0.0.1:53", Timeout: -1}}}}}, "negative timeout"},
		{"negative max fails", Config{Zones: ok, MaxFails: -1}, "MaxFails"},
		{"negative idle timeout", Config{Zones: ok, IdleTimeout: -time.Second}, "IdleTimeout"},
		{"negative max conn age", Config{Zones: ok, MaxConnAge: -time.Second}, "MaxConnAge"},
		{"negative zone limit", Config{Zones: []Zone{{Name: ".", Servers: ok[0].Servers, MaxInflight: -1}}}, "MaxInflight"},
		{"bad probe name", Config{Zones: ok, ProbeName: "a..b"}, "probe name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				f.Close()
				return
			}
			if err == nil {
				f.Close()
				t.Fatalf("New succeeded, want error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	f, _ := newTestForwarder(t, Config{Zones: []Zone{{Name: "Cluster.Local", Servers: []Server{{Addr: "127.0.0.1:53"}}}}})
	z := f.zones["cluster.local."]
	if z == nil {
		t.Fatalf("zone not stored under its canonical name; zones: %v", f.zones)
	}
	h := z.hops[0]
	if h.transport != TCP || h.timeout != DefaultTimeout {
		t.Errorf("server defaults: transport %q timeout %v, want %q %v", h.transport, h.timeout, TCP, DefaultTimeout)
	}
	c := f.cfg
	if c.MaxFails != DefaultMaxFails || c.ProbeInterval != DefaultProbeInterval || c.MaxConnsPerServer != DefaultMaxConnsPerServer ||
		c.IdleTimeout != DefaultIdleTimeout || c.MaxConnAge != DefaultMaxConnAge || c.ProbeTimeout != DefaultProbeTimeout ||
		c.SuspectAfter != DefaultSuspectAfter || c.DialTimeout != DefaultDialTimeout || c.UnackedTimeout != DefaultUnackedTimeout {
		t.Errorf("config defaults not applied: %+v", c)
	}
}

func TestMetricsRegisteredTwiceFails(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	cfg := Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: "127.0.0.1:53"}}}}, Registerer: reg, Namespace: "x"}
	f, err := New(cfg)
	if err != nil {
		t.Fatalf("first New: %v", err)
	}
	defer f.Close()
	if g, err := New(cfg); err == nil {
		g.Close()
		t.Fatal("second New on the same registry and namespace succeeded")
	}
}

func TestZoneRouting(t *testing.T) {
	t.Parallel()
	cluster, reverse, rest := startFake(t), startFake(t), startFake(t)
	f, _ := newTestForwarder(t, Config{Zones: []Zone{
		{Name: "cluster.local.", Servers: []Server{{Addr: cluster.addr}}},
		{Name: "in-addr.arpa.", Servers: []Server{{Addr: reverse.addr}}},
		{Name: ".", Servers: []Server{{Addr: rest.addr}}},
	}})
	tests := []struct {
		qname string
		want  *fake
	}{
		{"kube-dns.kube-system.svc.cluster.local.", cluster},
		{"Web.Default.SVC.Cluster.LOCAL.", cluster},
		{"cluster.local.", cluster},
		{"notcluster.local.", rest}, // suffix must be whole labels
		{"local.", rest},
		{"10.0.96.10.in-addr.arpa.", reverse},
		{"example.com.", rest},
		{".", rest},
	}
	fakes := map[*fake]string{cluster: "cluster", reverse: "reverse", rest: "rest"}
	for _, tt := range tests {
		t.Run(tt.qname, func(t *testing.T) {
			before := map[*fake]int{}
			for fk := range fakes {
				before[fk] = len(fk.seenQueries())
			}
			mustAnswer(t, f, tt.qname)
			for fk, name := range fakes {
				got := len(fk.seenQueries()) - before[fk]
				want := 0
				if fk == tt.want {
					want = 1
				}
				if got != want {
					t.Errorf("fake %s saw %d queries, want %d", name, got, want)
				}
			}
		})
	}
}

func TestNoMatchingZone(t *testing.T) {
	t.Parallel()
	f, _ := newTestForwarder(t, Config{Zones: []Zone{{Name: "cluster.local.", Servers: []Server{{Addr: "127.0.0.1:53"}}}}})
	_, err := f.Exchange(context.Background(), query("example.com."))
	if !errors.Is(err, ErrNoZone) {
		t.Fatalf("Exchange outside every zone: %v, want ErrNoZone", err)
	}
	if _, err := f.Exchange(context.Background(), new(dns.Msg)); !errors.Is(err, ErrNoQuestion) {
		t.Fatalf("Exchange without question: %v, want ErrNoQuestion", err)
	}
}

// TestTCPOneQueryPerConnection: concurrent queries each take a connection
// of their own (a CoreDNS server answers a connection's queries one after
// another), and come back with the caller's ID.
func TestTCPOneQueryPerConnection(t *testing.T) {
	t.Parallel()
	const n = 16
	up := startFake(t)
	gate := make(chan struct{})
	up.setBehaviour(func(w dns.ResponseWriter, r *dns.Msg) {
		<-gate // hold every query until all are in flight
		answer(w, r)
	})
	f, _ := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: time.Minute}}}}})

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			req := query(fmt.Sprintf("q%d.example.", i))
			req.Id = uint16(i) // every caller uses its own ID, all restored
			resp, err := f.Exchange(context.Background(), req)
			switch {
			case err != nil:
				errs <- err
			case resp.Id != req.Id || len(resp.Answer) != 1 || resp.Answer[0].Header().Name != req.Question[0].Name:
				errs <- fmt.Errorf("query %d: wrong reply %v", i, resp)
			}
		})
	}
	testutil.Eventually(t, "every query to reach the fake", func() bool { return len(up.seenQueries()) == n })
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := up.accepted.Load(); got != n {
		t.Errorf("fake accepted %d TCP connections for %d concurrent queries, want one each", got, n)
	}
	remotes := map[string]int{}
	for _, s := range up.seenQueries() {
		remotes[s.remote]++
	}
	for remote, queries := range remotes {
		if queries != 1 {
			t.Errorf("connection %s carried %d queries at once, want 1", remote, queries)
		}
	}
}

// TestTCPSlowQueryDoesNotHoldOthers: a query the server holds does not delay
// the next ones: they go out on other connections and come back first.
func TestTCPSlowQueryDoesNotHoldOthers(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	gate := make(chan struct{})
	up.setBehaviour(func(w dns.ResponseWriter, r *dns.Msg) {
		if strings.HasPrefix(r.Question[0].Name, "slow.") {
			<-gate
		}
		answer(w, r)
	})
	f, _ := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: time.Minute}}}}})
	slowDone := make(chan error, 1)
	go func() {
		_, err := f.Exchange(context.Background(), query("slow.example."))
		slowDone <- err
	}()
	testutil.Eventually(t, "the slow query to reach the fake", func() bool { return len(up.seenQueries()) == 1 })
	for i := range 5 {
		mustAnswer(t, f, fmt.Sprintf("fast%d.svc.cluster.local.", i)) // returns while the slow one is held
	}
	select {
	case err := <-slowDone:
		t.Fatalf("slow query finished before it was released: %v", err)
	default:
	}
	close(gate)
	if err := <-slowDone; err != nil {
		t.Fatalf("slow query: %v", err)
	}
}

func TestTCPConnectionReuse(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	f, reg := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr}}}}})
	for i := range 10 {
		mustAnswer(t, f, fmt.Sprintf("seq%d.example.", i))
	}
	if got := up.accepted.Load(); got != 1 {
		t.Errorf("fake accepted %d connections for 10 sequential queries, want 1", got)
	}
	if got := testutil.MetricValue(t, reg, "test_upstream_tcp_connections", map[string]string{"server": up.addr}); got != 1 {
		t.Errorf("tcp connections gauge %v, want 1", got)
	}
	if got := testutil.MetricValue(t, reg, "test_upstream_requests_total", map[string]string{"server": up.addr, "transport": "tcp"}); got != 10 {
		t.Errorf("requests counter %v, want 10", got)
	}
	if got := testutil.MetricValue(t, reg, "test_upstream_request_duration_seconds", map[string]string{"server": up.addr}); got != 10 {
		t.Errorf("duration histogram has %v samples, want 10", got)
	}
}

// TestTCPPoolBounded: at MaxConnsPerServer busy connections, further queries
// wait for one to come back (counted), and are all answered.
func TestTCPPoolBounded(t *testing.T) {
	t.Parallel()
	const n, maxConns = 12, 3
	up := startFake(t)
	gate := make(chan struct{})
	up.setBehaviour(func(w dns.ResponseWriter, r *dns.Msg) {
		<-gate
		answer(w, r)
	})
	f, reg := newTestForwarder(t, Config{
		Zones:             []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: time.Minute}}}},
		MaxConnsPerServer: maxConns,
	})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { mustAnswer(t, f, fmt.Sprintf("p%d.example.", i)) })
	}
	waits := func() float64 {
		return testutil.MetricValue(t, reg, "test_upstream_tcp_waits_total", map[string]string{"server": up.addr})
	}
	testutil.Eventually(t, "the queries beyond the limit to wait", func() bool { return waits() == n-maxConns && len(up.seenQueries()) == maxConns })
	if got := len(up.seenQueries()); got != maxConns {
		t.Errorf("fake got %d queries while %d connections were busy, want %d", got, maxConns, maxConns)
	}
	close(gate)
	wg.Wait()
	if got := up.accepted.Load(); got != maxConns {
		t.Errorf("fake accepted %d connections, want %d", got, maxConns)
	}
}

func TestTCPIdleExpiry(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	f, reg := newTestForwarder(t, Config{
		Zones:       []Zone{{Name: ".", Servers: []Server{{Addr: up.addr}}}},
		IdleTimeout: 20 * time.Millisecond,
	})
	pool := upstreamOf(t, f, up.addr).pool
	mustAnswer(t, f, "first.example.")
	testutil.Eventually(t, "the idle connection to close", func() bool {
		return pool.size() == 0 && testutil.MetricValue(t, reg, "test_upstream_tcp_connections", map[string]string{"server": up.addr}) == 0
	})
	mustAnswer(t, f, "second.example.")
	if got := up.accepted.Load(); got != 2 {
		t.Errorf("fake accepted %d connections, want 2 (one per idle period)", got)
	}
}

// TestTCPMaxConnAge: a connection past its age is not reused: the next query
// dials anew (and so may reach another replica behind a Service address).
func TestTCPMaxConnAge(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	f, _ := newTestForwarder(t, Config{
		Zones:      []Zone{{Name: ".", Servers: []Server{{Addr: up.addr}}}},
		MaxConnAge: time.Nanosecond, // every connection is too old once used
	})
	for i := range 4 {
		mustAnswer(t, f, fmt.Sprintf("age%d.example.", i))
	}
	if got := up.accepted.Load(); got != 4 {
		t.Errorf("fake accepted %d connections for 4 queries, want 4", got)
	}
	if got := upstreamOf(t, f, up.addr).pool.size(); got != 0 {
		t.Errorf("%d connections kept past their age, want 0", got)
	}
}

// openConns makes the forwarder open n connections to up (n queries held
// at once, then answered) and returns their remote addresses as up saw them.
func openConns(t *testing.T, f *Forwarder, up *fake, n int) []string {
	t.Helper()
	gate := make(chan struct{})
	up.setBehaviour(func(w dns.ResponseWriter, r *dns.Msg) {
		if r.Question[0].Name != probeName {
			<-gate
		}
		answer(w, r)
	})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { mustAnswer(t, f, fmt.Sprintf("open%d.example.", i)) })
	}
	testutil.Eventually(t, "every query to hold a connection", func() bool { return len(up.seenQueries()) == n })
	close(gate)
	wg.Wait()
	up.setBehaviour(answer)
	var remotes []string
	for _, s := range up.seenQueries() {
		remotes = append(remotes, s.remote)
	}
	return remotes
}

// TestTCPIdleConnectionsTakeTurns: idle connections are reused least
// recently used first, so every open one carries an even part of the
// queries (behind a Service address, each reached its replica at random).
func TestTCPIdleConnectionsTakeTurns(t *testing.T) {
	t.Parallel()
	const n = 4
	up := startFake(t)
	f, _ := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: time.Minute}}}}})
	opened := openConns(t, f, up, n)
	for i := range 2 * n {
		mustAnswer(t, f, fmt.Sprintf("turn%d.example.", i))
	}
	uses := map[string]int{}
	for _, s := range up.seenQueries()[n:] {
		uses[s.remote]++
	}
	for _, remote := range opened {
		if uses[remote] != 2 {
			t.Errorf("connection %s carried %d of %d sequential queries, want 2 (each of the %d in turn): %v", remote, uses[remote], 2*n, n, uses)
		}
	}
	if got := up.accepted.Load(); got != n {
		t.Errorf("fake accepted %d connections, want %d", got, n)
	}
}

// TestTCPStalePooledConnections: every pooled connection was closed by the
// server (its replica gone), more of them than an attempt's resends; the
// query still goes through on a new one, and the server is not charged.
func TestTCPStalePooledConnections(t *testing.T) {
	t.Parallel()
	const n = maxResends + 2
	up := startFake(t)
	f, reg := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: time.Minute}}}}})
	stale := openConns(t, f, up, n)
	up.setBehaviour(func(w dns.ResponseWriter, r *dns.Msg) {
		if slices.Contains(stale, w.RemoteAddr().String()) {
			w.Close()
			return
		}
		answer(w, r)
	})
	mustAnswer(t, f, "after.example.")
	if got := up.accepted.Load(); got != n+1 {
		t.Errorf("fake accepted %d connections, want %d (the stale ones and one new)", got, n+1)
	}
	if got := errorCount(t, reg, up.addr, reasonClosed); got != n {
		t.Errorf("closed errors %v, want %d", got, n)
	}
	if u := upstreamOf(t, f, up.addr); u.health.fails.Load() != 0 || u.health.isDown() {
		t.Errorf("server charged with stale connections: fails %d down %v", u.health.fails.Load(), u.health.isDown())
	}
}

// TestTCPClosedConnectionResent: the server closes a pooled connection
// without answering; the query goes again on a new connection, and the
// server is not charged.
func TestTCPClosedConnectionResent(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	var queries atomic.Int64
	up.setBehaviour(func(w dns.ResponseWriter, r *dns.Msg) {
		if queries.Add(1) == 2 { // the second query, on the pooled connection
			w.Close()
			return
		}
		answer(w, r)
	})
	f, reg := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: time.Minute}}}}})
	for i := range 3 {
		mustAnswer(t, f, fmt.Sprintf("b%d.example.", i))
	}
	if got := up.accepted.Load(); got != 2 {
		t.Errorf("fake accepted %d connections, want 2 (the closed one and its replacement)", got)
	}
	if got := errorCount(t, reg, up.addr, reasonClosed); got != 1 {
		t.Errorf("closed errors %v, want 1", got)
	}
	if u := upstreamOf(t, f, up.addr); u.health.fails.Load() != 0 || u.health.isDown() {
		t.Errorf("server charged with the closed connection: fails %d down %v", u.health.fails.Load(), u.health.isDown())
	}
}

// TestTCPTimedOutConnectionClosed: a connection whose query timed out is not
// reused (its late reply would answer the next query).
func TestTCPTimedOutConnectionClosed(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	up.setBehaviour(silentExceptProbes)
	f, reg := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: 50 * time.Millisecond}}}}})
	if _, err := f.Exchange(context.Background(), query("hole.example.")); err == nil {
		t.Fatal("Exchange with a silent server succeeded")
	}
	if got := errorCount(t, reg, up.addr, reasonTimeout); got != 1 {
		t.Errorf("timeout errors %v, want 1", got)
	}
	up.setBehaviour(answer)
	mustAnswer(t, f, "after.example.")
	seen := up.seenQueries()
	if len(seen) != 2 || seen[0].remote == seen[1].remote {
		t.Errorf("queries seen %+v: want the second on another connection than the timed-out one", seen)
	}
}

// TestZoneMaxInflight: a zone at its limit of queries in flight makes its
// next query wait, while another zone's queries to the same server go on.
func TestZoneMaxInflight(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	gate := make(chan struct{})
	up.setBehaviour(func(w dns.ResponseWriter, r *dns.Msg) {
		if strings.HasSuffix(r.Question[0].Name, ".example.") {
			<-gate // slow external names
		}
		answer(w, r)
	})
	f, reg := newTestForwarder(t, Config{Zones: []Zone{
		{Name: "cluster.local.", Servers: []Server{{Addr: up.addr, Timeout: time.Minute}}},
		{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: time.Minute}}, MaxInflight: 2},
	}})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() { mustAnswer(t, f, fmt.Sprintf("ext%d.example.", i)) })
	}
	waits := func() float64 {
		return testutil.MetricValue(t, reg, "test_upstream_zone_waits_total", map[string]string{"zone": "."})
	}
	testutil.Eventually(t, "the third external query to wait", func() bool { return waits() == 1 && len(up.seenQueries()) == 2 })
	for i := range 5 {
		mustAnswer(t, f, fmt.Sprintf("svc%d.ns.svc.cluster.local.", i))
	}
	close(gate)
	wg.Wait()
	if got := len(up.seenQueries()); got != 8 {
		t.Errorf("fake saw %d queries, want 8", got)
	}
}

// TestStubFailoverOrder is the stub's chain: the node cache over UDP, the node
// cache over TCP, then kube-dns over TCP only.
func TestStubFailoverOrder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		nodeCache  behaviour // nil = not running (port closed)
		udpTimeout time.Duration
		wantNode   []string // transports the node cache saw, in order
		wantKube   []string
		wantErrors map[reason]float64 // on the node cache: 0 exactly, else at least
	}{
		{
			name: "node cache answers over udp", nodeCache: answer, udpTimeout: time.Minute,
			wantNode: []string{"udp"},
		},
		{
			name: "truncated udp reply retried over tcp to the same server", nodeCache: overTCP(answer, truncated), udpTimeout: time.Minute,
			wantNode: []string{"udp", "tcp"},
		},
		{
			name: "node cache silent on udp: its tcp next", nodeCache: overTCP(answer, silent), udpTimeout: 50 * time.Millisecond,
			wantNode: []string{"udp", "tcp"}, wantErrors: map[reason]float64{reasonTimeout: 1},
		},
		{
			name: "node cache servfail: kube-dns over tcp", nodeCache: rcode(dns.RcodeServerFailure), udpTimeout: time.Minute,
			wantNode: []string{"udp", "tcp"}, wantKube: []string{"tcp"}, wantErrors: map[reason]float64{reasonServfail: 2},
		},
		{
			// The UDP timeout is a minute: only ECONNREFUSED (ICMP port
			// unreachable) can end that attempt before the test times out.
			name: "node cache gone: refused at once, kube-dns over tcp", nodeCache: nil, udpTimeout: time.Minute,
			wantKube: []string{"tcp"}, wantErrors: map[reason]float64{reasonRefused: 2, reasonTimeout: 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node, kube := startFake(t), startFake(t)
			if tt.nodeCache == nil {
				node.Stop()
			} else {
				node.setBehaviour(tt.nodeCache)
			}
			f, reg := newTestForwarder(t, Config{
				Zones: []Zone{{Name: ".", Servers: []Server{
					{Addr: node.addr, Transport: UDP, Timeout: tt.udpTimeout},
					{Addr: node.addr, Transport: TCP, Timeout: time.Minute},
					{Addr: kube.addr, Transport: TCP, Timeout: time.Minute},
				}}},
				MaxFails:      10, // keep everything up: this test is about order
				ProbeInterval: time.Hour,
			})
			mustAnswer(t, f, "svc.ns.svc.cluster.local.")
			if got := node.transports(); !slices.Equal(got, tt.wantNode) {
				t.Errorf("node cache saw %v, want %v", got, tt.wantNode)
			}
			if got := kube.transports(); !slices.Equal(got, tt.wantKube) {
				t.Errorf("kube-dns saw %v, want %v", got, tt.wantKube)
			}
			for r, want := range tt.wantErrors {
				if got := errorCount(t, reg, node.addr, r); (want == 0) != (got == 0) || got < want {
					t.Errorf("node cache %s errors %v, want %v", r, got, want)
				}
			}
		})
	}
}

// TestStubReturnsToNodeCache: when the node cache dies, its UDP and TCP
// entries (one address, one health state) are marked down together and
// queries go straight to kube-dns over TCP; when it comes back, a probe over
// UDP (its first entry) marks it up and queries return to it over UDP.
func TestStubReturnsToNodeCache(t *testing.T) {
	t.Parallel()
	node, kube := startFake(t), startFake(t)
	f, _ := newTestForwarder(t, Config{
		Zones: []Zone{{Name: ".", Servers: []Server{
			{Addr: node.addr, Transport: UDP, Timeout: time.Minute},
			{Addr: node.addr, Transport: TCP, Timeout: time.Minute},
			{Addr: kube.addr, Transport: TCP, Timeout: time.Minute},
		}}},
		MaxFails:      2,
		ProbeInterval: 5 * time.Millisecond,
	})
	nodeUp := upstreamOf(t, f, node.addr)

	mustAnswer(t, f, "one.example.")
	node.Stop()
	mustAnswer(t, f, "two.example.") // UDP refused, TCP refused: down after one query
	if !nodeUp.health.isDown() {
		t.Fatal("node cache not marked down after its UDP and TCP attempts failed")
	}
	mustAnswer(t, f, "three.example.")
	if got, want := kube.transports(), []string{"tcp", "tcp"}; !slices.Equal(got, want) {
		t.Errorf("kube-dns saw %v, want %v", got, want)
	}

	node.Restart()
	testutil.Eventually(t, "the node cache to be probed back up", func() bool { return !nodeUp.health.isDown() })
	mustAnswer(t, f, "four.example.")
	if got, want := node.transports(), []string{"udp", "udp"}; !slices.Equal(got, want) {
		t.Errorf("node cache saw %v over its two lives, want %v", got, want)
	}
	var probes []string
	node.mu.Lock()
	for _, s := range node.queries {
		if s.probe {
			probes = append(probes, s.transport)
		}
	}
	node.mu.Unlock()
	if len(probes) == 0 || probes[0] != "udp" {
		t.Errorf("probes reached the node cache over %v, want udp", probes)
	}
	if got := len(kube.seenQueries()); got != 2 {
		t.Errorf("kube-dns saw %d queries, want 2 (none after the node cache returned)", got)
	}
}

func TestMismatchedRepliesDropped(t *testing.T) {
	t.Parallel()
	for _, transport := range []Transport{UDP, TCP} {
		t.Run(string(transport), func(t *testing.T) {
			up := startFake(t)
			up.setBehaviour(mismatchedFirst)
			f, reg := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Transport: transport, Timeout: time.Minute}}}}})
			mustAnswer(t, f, "mm.example.")
			if got := errorCount(t, reg, up.addr, reasonMismatch); got != 2 {
				t.Errorf("mismatch errors %v, want 2 (wrong ID, wrong question)", got)
			}
			if got := len(up.seenQueries()); got != 1 {
				t.Errorf("fake saw %d queries, want 1: the right reply must be waited for, not re-asked", got)
			}
		})
	}
}

// TestMalformedReplies: over UDP an unparsable datagram is dropped (it may be
// forged) and the real reply awaited; over TCP, where the ID is ours, it fails
// the attempt at once and the next server answers.
func TestMalformedReplies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		transport      Transport
		wantSecondSeen int // queries the second server gets
	}{
		{UDP, 0},
		{TCP, 1},
	}
	for _, tt := range tests {
		t.Run(string(tt.transport), func(t *testing.T) {
			bad, good := startFake(t), startFake(t)
			bad.setBehaviour(malformedFirst)
			f, reg := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{
				{Addr: bad.addr, Transport: tt.transport, Timeout: time.Minute},
				{Addr: good.addr, Timeout: time.Minute},
			}}}})
			mustAnswer(t, f, "garbled.example.")
			if got := errorCount(t, reg, bad.addr, reasonOther); got != 1 {
				t.Errorf("other errors %v, want 1", got)
			}
			if got := len(good.seenQueries()); got != tt.wantSecondSeen {
				t.Errorf("second server saw %d queries, want %d", got, tt.wantSecondSeen)
			}
		})
	}
}

func TestFailureRcodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		first     behaviour
		second    behaviour
		wantRcode int
		wantErrs  float64 // servfail-reason errors on the first server
	}{
		{"servfail then answer", rcode(dns.RcodeServerFailure), answer, dns.RcodeSuccess, 1},
		{"refused then answer", rcode(dns.RcodeRefused), answer, dns.RcodeSuccess, 1},
		{"nxdomain is an answer", rcode(dns.RcodeNameError), answer, dns.RcodeNameError, 0},
		{"all servfail returns the reply", rcode(dns.RcodeServerFailure), rcode(dns.RcodeServerFailure), dns.RcodeServerFailure, 1},
		{"servfail then refused returns the last", rcode(dns.RcodeServerFailure), rcode(dns.RcodeRefused), dns.RcodeRefused, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := startFake(t), startFake(t)
			a.setBehaviour(tt.first)
			b.setBehaviour(tt.second)
			f, reg := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: a.addr}, {Addr: b.addr}}}}})
			req := query("rc.example.")
			resp, err := f.Exchange(context.Background(), req)
			if err != nil {
				t.Fatalf("Exchange: %v (a server reply must be returned, not an error)", err)
			}
			if resp.Rcode != tt.wantRcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			if resp.Id != req.Id {
				t.Errorf("reply ID %#x, want %#x", resp.Id, req.Id)
			}
			if got := errorCount(t, reg, a.addr, reasonServfail); got != tt.wantErrs {
				t.Errorf("servfail errors on the first server %v, want %v", got, tt.wantErrs)
			}
		})
	}
}

func TestAllServersUnreachable(t *testing.T) {
	t.Parallel()
	viaUDP, viaTCP := closedPort(t), closedPort(t)
	f, reg := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{
		{Addr: viaUDP, Transport: UDP, Timeout: time.Minute},
		{Addr: viaTCP, Timeout: time.Minute},
	}}}})
	_, err := f.Exchange(context.Background(), query("x.example."))
	if !isRefused(err) {
		t.Fatalf("Exchange to closed ports: %v, want ECONNREFUSED", err)
	}
	for _, addr := range []string{viaUDP, viaTCP} {
		if got := errorCount(t, reg, addr, reasonRefused); got < 1 {
			t.Errorf("%s: refused errors %v, want at least 1", addr, got)
		}
	}
	if f.Answered() {
		t.Error("Answered() true though no server ever replied")
	}
}

func TestContextEndsExchange(t *testing.T) {
	t.Parallel()
	for _, transport := range []Transport{TCP, UDP} {
		t.Run(string(transport), func(t *testing.T) {
			up := startFake(t)
			up.setBehaviour(silent)
			f, _ := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Transport: transport, Timeout: time.Hour}}}}})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := f.Exchange(ctx, query("wait.example."))
				done <- err
			}()
			testutil.Eventually(t, "the query to reach the fake", func() bool { return len(up.seenQueries()) > 0 })
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("Exchange after cancel: %v, want context.Canceled", err)
			}
			u := upstreamOf(t, f, up.addr)
			if fails := u.health.fails.Load(); fails != 0 {
				t.Errorf("server charged %d failures for the caller's cancellation", fails)
			}
			if transport == TCP && u.pool.size() != 0 {
				t.Errorf("%d connections after a cancelled query, want it closed (its reply may still come)", u.pool.size())
			}
		})
	}
}

// TestHealth: a server that stops answering everything is marked down
// without further queries (its probes fail), skipped, and used again once a
// probe succeeds; one that refuses is marked down by its first query.
func TestHealth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		breakIt func(*fake)
		heal    func(*fake)
	}{
		{"hung until healed", func(f *fake) { f.setBehaviour(silent) }, func(f *fake) { f.setBehaviour(answer) }},
		{"stopped and restarted on the same port", (*fake).Stop, (*fake).Restart},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := startFake(t), startFake(t)
			f, reg := newTestForwarder(t, Config{
				Zones:         []Zone{{Name: ".", Servers: []Server{{Addr: a.addr, Timeout: 50 * time.Millisecond}, {Addr: b.addr}}}},
				MaxFails:      2,
				ProbeInterval: 5 * time.Millisecond,
				ProbeTimeout:  20 * time.Millisecond,
			})
			ua := upstreamOf(t, f, a.addr)
			healthy := func() float64 {
				return testutil.MetricValue(t, reg, "test_upstream_healthy", map[string]string{"server": a.addr})
			}
			mustAnswer(t, f, "before.example.")
			tt.breakIt(a)

			mustAnswer(t, f, "fail.example.") // a fails, b answers
			testutil.Eventually(t, "the broken server to be marked down", func() bool { return ua.health.isDown() && healthy() == 0 })

			seenByA := len(a.seenQueries())
			seenByB := len(b.seenQueries())
			mustAnswer(t, f, "skipped.example.")
			if got := len(a.seenQueries()); got != seenByA {
				t.Errorf("down server got %d queries, want it skipped", got-seenByA)
			}
			if got := len(b.seenQueries()); got != seenByB+1 {
				t.Errorf("second server got %d queries, want 1", got-seenByB)
			}

			tt.heal(a)
			testutil.Eventually(t, "a probe to mark the server up", func() bool { return !ua.health.isDown() })
			if healthy() != 1 {
				t.Errorf("healthy gauge %v after recovery, want 1", healthy())
			}
			seenByA = len(a.seenQueries())
			mustAnswer(t, f, "back.example.")
			if got := len(a.seenQueries()); got != seenByA+1 {
				t.Errorf("recovered server got %d queries, want 1", got-seenByA)
			}
		})
	}
}

// TestSlowNamesNeverMarkDown: on a quiet node, queries for names the server
// does not answer in time (an external name behind a slow resolver) time out
// again and again, but the server answers its probes: it stays up, and the
// next query it can answer is answered. Over UDP (the stub to the node cache)
// as over TCP.
func TestSlowNamesNeverMarkDown(t *testing.T) {
	t.Parallel()
	for _, transport := range []Transport{TCP, UDP} {
		t.Run(string(transport), func(t *testing.T) {
			up := startFake(t)
			up.setBehaviour(silentExceptProbes)
			f, reg := newTestForwarder(t, Config{
				Zones:        []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Transport: transport, Timeout: 30 * time.Millisecond}}}},
				MaxFails:     1,
				SuspectAfter: 5 * time.Millisecond,
				ProbeTimeout: time.Minute,
			})
			u := upstreamOf(t, f, up.addr)
			for i := range 5 {
				if _, err := f.Exchange(context.Background(), query(fmt.Sprintf("slow%d.example.", i))); classify(err) != reasonTimeout {
					t.Fatalf("slow name: %v, want a timeout", err)
				}
			}
			probes := func() float64 {
				return testutil.MetricValue(t, reg, "test_upstream_requests_total", map[string]string{"server": up.addr, "transport": string(transport)}) - 5
			}
			testutil.Eventually(t, "the timeouts to have the server probed", func() bool { return probes() > 0 && !u.health.probing.Load() })
			if u.health.isDown() || u.health.fails.Load() != 0 {
				t.Errorf("server down %v with %d dead signals after slow names, want up with 0", u.health.isDown(), u.health.fails.Load())
			}
			up.setBehaviour(answer)
			mustAnswer(t, f, "fast.svc.cluster.local.")
		})
	}
}

// TestAllDownFailsFast: when every server is marked down a query fails at
// once with ErrAllDown and reaches no server; the probes bring them back.
func TestAllDownFailsFast(t *testing.T) {
	t.Parallel()
	a, b := startFake(t), startFake(t)
	a.setBehaviour(silent)
	b.setBehaviour(silent)
	f, _ := newTestForwarder(t, Config{
		Zones: []Zone{{Name: ".", Servers: []Server{
			{Addr: a.addr, Timeout: 50 * time.Millisecond},
			{Addr: b.addr, Timeout: 50 * time.Millisecond},
		}}},
		MaxFails:      1,
		ProbeInterval: 5 * time.Millisecond,
		ProbeTimeout:  20 * time.Millisecond,
	})
	if _, err := f.Exchange(context.Background(), query("down.example.")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("all silent: %v, want a timeout", err)
	}
	ua, ub := upstreamOf(t, f, a.addr), upstreamOf(t, f, b.addr)
	testutil.Eventually(t, "both servers to be marked down by their probes", func() bool { return ua.health.isDown() && ub.health.isDown() })

	seenA, seenB := len(a.seenQueries()), len(b.seenQueries()) // probes not counted
	_, err := f.Exchange(context.Background(), query("skipped.example."))
	if !errors.Is(err, ErrAllDown) {
		t.Fatalf("all down: %v, want ErrAllDown", err)
	}
	if na, nb := len(a.seenQueries())-seenA, len(b.seenQueries())-seenB; na+nb != 0 {
		t.Errorf("all down: the query reached the servers (a %d, b %d times), want none", na, nb)
	}

	a.setBehaviour(answer)
	testutil.Eventually(t, "a probe to mark the first server up", func() bool { return !ua.health.isDown() })
	seenA = len(a.seenQueries())
	mustAnswer(t, f, "back.example.")
	if got := len(a.seenQueries()) - seenA; got != 1 {
		t.Errorf("recovered server saw %d queries, want 1", got)
	}
}

// TestDownServerIsLastResort: a server marked down is tried after the healthy
// ones failed.
func TestDownServerIsLastResort(t *testing.T) {
	t.Parallel()
	a, b := startFake(t), startFake(t)
	a.Stop()
	f, _ := newTestForwarder(t, Config{
		Zones:         []Zone{{Name: ".", Servers: []Server{{Addr: a.addr}, {Addr: b.addr}}}},
		MaxFails:      1,
		ProbeInterval: time.Hour,
	})
	mustAnswer(t, f, "one.example.") // a refuses and is marked down, b answers
	if !upstreamOf(t, f, a.addr).health.isDown() {
		t.Fatal("refusing server not marked down")
	}
	a.Restart()
	b.setBehaviour(rcode(dns.RcodeServerFailure))
	mustAnswer(t, f, "two.example.") // b fails; a, though down, answers
	if got := len(a.seenQueries()); got != 1 {
		t.Errorf("down server saw %d queries, want 1", got)
	}
}

// TestFailureRcodesKeepServerUp: SERVFAIL and REFUSED replies make the query
// fail over but prove the server reachable, so it is never marked down.
func TestFailureRcodesKeepServerUp(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	f, reg := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr}}}}, MaxFails: 1})
	for _, code := range []int{dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeServerFailure} {
		up.setBehaviour(rcode(code))
		resp, err := f.Exchange(context.Background(), query("broken.example."))
		if err != nil || resp.Rcode != code {
			t.Fatalf("Exchange: %v, %v; want the %s reply", resp, err, dns.RcodeToString[code])
		}
	}
	if upstreamOf(t, f, up.addr).health.isDown() {
		t.Error("server marked down for SERVFAIL/REFUSED replies")
	}
	if got := errorCount(t, reg, up.addr, reasonServfail); got != 3 {
		t.Errorf("servfail errors %v, want 3", got)
	}
}

func TestAnswered(t *testing.T) {
	t.Parallel()
	t.Run("after a reply", func(t *testing.T) {
		up := startFake(t)
		up.setBehaviour(rcode(dns.RcodeServerFailure))
		f, _ := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr}}}}})
		if f.Answered() {
			t.Fatal("Answered() before any query")
		}
		if _, err := f.Exchange(context.Background(), query("a.example.")); err != nil {
			t.Fatalf("Exchange: %v", err)
		}
		if !f.Answered() {
			t.Error("Answered() false after a SERVFAIL reply: the server did answer")
		}
	})
	t.Run("probe at start", func(t *testing.T) {
		dead, up := closedPort(t), startFake(t)
		f, _ := newTestForwarder(t, Config{
			Zones:         []Zone{{Name: ".", Servers: []Server{{Addr: dead}, {Addr: up.addr}}}},
			ProbeAtStart:  true,
			ProbeInterval: 5 * time.Millisecond,
		})
		testutil.Eventually(t, "Answered() from the start-up probes", f.Answered)
		if len(up.seenQueries()) != 0 {
			t.Errorf("start-up probes sent non-probe queries: %v", up.seenQueries())
		}
	})
}

func TestClose(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	f, _ := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr}}}}})
	mustAnswer(t, f, "open.example.")
	if err := f.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := upstreamOf(t, f, up.addr).pool.size(); got != 0 {
		t.Errorf("%d connections after Close", got)
	}
	if _, err := f.Exchange(context.Background(), query("closed.example.")); !errors.Is(err, ErrClosed) {
		t.Errorf("Exchange after Close: %v, want ErrClosed", err)
	}
}

// TestCloseFailsQueriesInFlight: Close ends a query waiting on a TCP
// connection at once, however long its timeout.
func TestCloseFailsQueriesInFlight(t *testing.T) {
	t.Parallel()
	up := startFake(t)
	up.setBehaviour(silent)
	f, _ := newTestForwarder(t, Config{Zones: []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: time.Hour}}}}})
	done := make(chan error, 1)
	go func() {
		_, err := f.Exchange(context.Background(), query("inflight.example."))
		done <- err
	}()
	testutil.Eventually(t, "the query to reach the fake", func() bool { return len(up.seenQueries()) > 0 })
	if err := f.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("Exchange in flight during Close: %v, want ErrClosed", err)
	}
}

// TestConcurrentMixedLoad runs many goroutines over UDP and TCP zones while
// one server keeps closing connections; every query must still be answered.
// Run with -race.
func TestConcurrentMixedLoad(t *testing.T) {
	t.Parallel()
	flaky, good, viaUDP := startFake(t), startFake(t), startFake(t)
	var served sync.Mutex
	count := 0
	flaky.setBehaviour(func(w dns.ResponseWriter, r *dns.Msg) {
		served.Lock()
		count++
		drop := count%7 == 0
		served.Unlock()
		if drop {
			w.Close()
			return
		}
		answer(w, r)
	})
	f, reg := newTestForwarder(t, Config{
		Zones: []Zone{
			{Name: "cluster.local.", Servers: []Server{{Addr: flaky.addr, Timeout: time.Minute}, {Addr: good.addr, Timeout: time.Minute}}},
			{Name: ".", Servers: []Server{{Addr: viaUDP.addr, Transport: UDP, Timeout: time.Minute}}},
		},
		MaxConnsPerServer: 2,
		IdleTimeout:       5 * time.Millisecond,
		ProbeInterval:     time.Millisecond,
	})
	const workers, perWorker = 8, 100
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				name := fmt.Sprintf("n%d-%d.svc.cluster.local.", w, i)
				if i%3 == 0 {
					name = fmt.Sprintf("n%d-%d.example.", w, i)
				}
				req := query(name)
				resp, err := f.Exchange(context.Background(), req)
				if err != nil {
					t.Errorf("Exchange(%s): %v", name, err)
					return
				}
				checkAnswer(t, req, resp)
			}
		})
	}
	wg.Wait()
	for _, addr := range []string{flaky.addr, good.addr, viaUDP.addr} {
		if got := errorCount(t, reg, addr, reasonTimeout); got != 0 {
			t.Errorf("%s: %v timeouts; every failure here must be detected at once", addr, got)
		}
	}
}

// BenchmarkExchange measures the client side: the upstream is a raw echo
// responder (no parsing, no allocation) on loopback.
func BenchmarkExchange(b *testing.B) {
	addr := startEchoResponder(b)
	tests := []struct {
		name        string
		transport   Transport
		parallelism int // goroutines per GOMAXPROCS; 0 = sequential
	}{
		{"tcp/sequential", TCP, 0},
		{"tcp/parallel-32", TCP, 16},
		{"udp/sequential", UDP, 0},
		{"udp/parallel-32", UDP, 16},
	}
	// Baseline: miekg/dns's client, a new TCP connection per query.
	b.Run("baseline/dns.Client-tcp/sequential", func(b *testing.B) {
		c := &dns.Client{Net: "tcp"}
		req := query("bench.example.")
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := c.Exchange(req, addr); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			f, err := New(Config{
				Zones:      []Zone{{Name: ".", Servers: []Server{{Addr: addr, Transport: tt.transport}}}},
				Registerer: prometheus.NewRegistry(), Namespace: "bench",
			})
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			req := query("bench.example.")
			b.ReportAllocs()
			if tt.parallelism == 0 {
				for b.Loop() {
					if _, err := f.Exchange(context.Background(), req); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.SetParallelism(tt.parallelism)
			b.RunParallel(func(pb *testing.PB) {
				req := query("bench.example.") // one message per goroutine
				for pb.Next() {
					if _, err := f.Exchange(context.Background(), req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

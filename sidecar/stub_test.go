package sidecar

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/ops/opstest"
	"github.com/localdns/localdns/internal/systest"
)

// probeTestDomain is the cluster domain of test stubs: the forwarder probes
// an upstream marked down with its SOA, and fakes leave those out of their records.
const probeTestDomain = "cluster.test."

// testConfig is a stub on an ephemeral loopback port in front of the fakes:
// with an IPv6 node cache, on ::1 and 127.0.0.1 as the webhook configures
// IPv6 pods (::1 first, the address tests ask). Its timeouts are long, so
// that a loaded machine cannot make an attempt expire; tests about silent
// upstreams shorten them.
func testConfig(nodeCache, kubeDNS *fakeUpstream) Config {
	listen := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}
	if nodeCache.Addr().Addr().Is6() {
		listen = slices.Insert(listen, 0, netip.MustParseAddrPort("[::1]:0"))
	}
	cfg := Config{
		Command:             CommandServe,
		Listen:              listen,
		NodeCache:           nodeCache.Addr(),
		ClusterDomain:       probeTestDomain,
		CacheSize:           DefaultCacheSize,
		CacheMaxBytes:       DefaultCacheMaxBytes,
		NodeCacheUDPTimeout: 10 * time.Second,
		NodeCacheTCPTimeout: 10 * time.Second,
		FallbackTimeout:     10 * time.Second,
		UDPSockets:          1,
		ShutdownTimeout:     5 * time.Second,
	}
	if kubeDNS != nil {
		cfg.Fallback = kubeDNS.Addr()
	}
	return cfg
}

func startStub(t *testing.T, cfg Config) *Stub {
	t.Helper()
	s, err := Start(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

var nameSeq atomic.Int64

// freshName is a name no test asked before, so the stub's cache cannot answer it.
func freshName() string { return fmt.Sprintf("q%d.svc.example.", nameSeq.Add(1)) }

// ask sends an A query to the stub's first address over UDP (the way musl
// does) and returns the reply.
func ask(t *testing.T, s *Stub, name string) *dns.Msg {
	t.Helper()
	return askAt(t, s.UDPAddrs()[0], name)
}

func askAt(t *testing.T, addr net.Addr, name string) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: "udp", Timeout: 10 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	reply, _, err := c.Exchange(m, addr.String())
	if err != nil {
		t.Fatalf("query %s at %s: %v", name, addr, err)
	}
	return reply
}

// answeredBy returns the address in the reply's A record: which fake answered.
func answeredBy(reply *dns.Msg) string {
	for _, rr := range reply.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return "no answer (" + dns.RcodeToString[reply.Rcode] + ")"
}

// TestFailoverOrder: the node cache over UDP, then over TCP, then kube-dns
// over TCP only, whatever way the node cache fails, over either family: an
// IPv6 pod's stub reaches IPv6 upstreams the same way.
func TestFailoverOrder(t *testing.T) {
	const stopped behaviour = -1
	tests := []struct {
		name       string
		nodeCache  behaviour
		noFallback bool
		udpTimeout time.Duration // when set, for a node cache that stays silent
		tcpTimeout time.Duration
		wantNode   []string // transports the node cache saw, in order
		wantKube   []string
		wantAnswer string
	}{
		{name: "node cache answers over udp", nodeCache: answer,
			wantNode: []string{"udp"}, wantAnswer: nodeCacheAnswer},
		{name: "truncated over udp: node cache over tcp", nodeCache: truncateUDP,
			wantNode: []string{"udp", "tcp"}, wantAnswer: nodeCacheAnswer},
		{name: "udp lost: node cache over tcp", nodeCache: silentUDP, udpTimeout: 100 * time.Millisecond,
			wantNode: []string{"udp", "tcp"}, wantAnswer: nodeCacheAnswer},
		{name: "node cache servfail: kube-dns over tcp", nodeCache: servfail,
			wantNode: []string{"udp", "tcp"}, wantKube: []string{"tcp"}, wantAnswer: kubeDNSAnswer},
		{name: "node cache hung: kube-dns over tcp", nodeCache: blackHole,
			udpTimeout: 100 * time.Millisecond, tcpTimeout: 200 * time.Millisecond,
			wantNode: []string{"udp", "tcp"}, wantKube: []string{"tcp"}, wantAnswer: kubeDNSAnswer},
		{name: "node cache gone (port unreachable): kube-dns over tcp", nodeCache: stopped,
			wantKube: []string{"tcp"}, wantAnswer: kubeDNSAnswer},
		{name: "node cache gone and no fallback: SERVFAIL", nodeCache: stopped, noFallback: true,
			wantAnswer: "no answer (SERVFAIL)"},
	}
	for _, fam := range []family{ipv4, ipv6} {
		for _, tc := range tests {
			t.Run(string(fam)+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				node, kube := startFake(t, fam, "node cache", nodeCacheAnswer), startKubeDNS(t, fam)
				if tc.nodeCache == stopped {
					node.Stop()
				} else {
					node.setMode(tc.nodeCache)
				}
				cfg := testConfig(node, kube)
				if tc.noFallback {
					cfg.Fallback = netip.AddrPort{}
				}
				if tc.udpTimeout != 0 {
					cfg.NodeCacheUDPTimeout = tc.udpTimeout
				}
				if tc.tcpTimeout != 0 {
					cfg.NodeCacheTCPTimeout = tc.tcpTimeout
				}
				s := startStub(t, cfg)

				name := freshName()
				if got := answeredBy(ask(t, s, name)); got != tc.wantAnswer {
					t.Errorf("answer %s, want %s", got, tc.wantAnswer)
				}
				if got := node.transports(); !slices.Equal(got, tc.wantNode) {
					t.Errorf("node cache saw %v, want %v", got, tc.wantNode)
				}
				if got := kube.transports(); !slices.Equal(got, tc.wantKube) {
					t.Errorf("kube-dns saw %v, want %v", got, tc.wantKube)
				}
			})
		}
	}
}

// TestIPv6PodStub: configured as the webhook configures an IPv6 pod's stub,
// it serves on ::1 (what resolv.conf names) and on 127.0.0.1, and answers
// both through the IPv6 node cache.
func TestIPv6PodStub(t *testing.T) {
	node := startFake(t, ipv6, "node cache", nodeCacheAnswer)
	s := startStub(t, testConfig(node, startKubeDNS(t, ipv6)))
	addrs := s.UDPAddrs()
	if len(addrs) != 2 || !strings.HasPrefix(addrs[0].String(), "[::1]:") || !strings.HasPrefix(addrs[1].String(), "127.0.0.1:") {
		t.Fatalf("stub serves on %v, want ::1 then 127.0.0.1", addrs)
	}
	for _, addr := range addrs {
		if got := answeredBy(askAt(t, addr, freshName())); got != nodeCacheAnswer {
			t.Errorf("asked at %s: answer %s, want the node cache's", addr, got)
		}
	}
	if got := node.transports(); !slices.Equal(got, []string{"udp", "udp"}) {
		t.Errorf("node cache saw %v, want one UDP query per listen address", got)
	}
}

// TestSlowNameAtNodeCache: the node cache waiting for kube-dns on a slow name
// (an A and AAAA pair, as musl sends them) is neither given up on nor marked
// down: the stub's UDP attempts time out, its TCP attempts wait, other names
// are answered meanwhile, the slow answers come from the node cache when
// they come, and kube-dns is never asked.
func TestSlowNameAtNodeCache(t *testing.T) {
	node, kube := startFake(t, ipv4, "node cache", nodeCacheAnswer), startKubeDNS(t, ipv4)
	node.setMode(slowNames)
	cfg := testConfig(node, kube)
	cfg.NodeCacheUDPTimeout = 20 * time.Millisecond // shorter than the hold: UDP gives up on both
	s := startStub(t, cfg)

	name := "slow-" + freshName()
	answers := make(chan string, 2)
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		go func() {
			c := &dns.Client{Net: "udp", Timeout: 30 * time.Second}
			m := new(dns.Msg)
			m.SetQuestion(name, qtype)
			resp, _, err := c.Exchange(m, s.UDPAddrs()[0].String())
			switch {
			case err != nil:
				answers <- err.Error()
			case qtype == dns.TypeA:
				answers <- answeredBy(resp)
			default:
				answers <- dns.RcodeToString[resp.Rcode]
			}
		}()
	}
	systest.WaitFor(t, "both slow queries to reach the node cache over TCP", func() (bool, string) {
		got := node.transports()
		return slices.Equal(got, []string{"udp", "udp", "tcp", "tcp"}), fmt.Sprint(got)
	})
	if got := answeredBy(ask(t, s, freshName())); got != nodeCacheAnswer {
		t.Errorf("another name while the slow pair waits: answer %s, want the node cache's", got)
	}
	close(node.release)
	got := []string{receive(t, answers), receive(t, answers)}
	slices.Sort(got)
	if want := []string{nodeCacheAnswer, "NOERROR"}; !slices.Equal(got, want) {
		t.Errorf("slow pair answered %v, want %v", got, want)
	}
	if got := kube.transports(); len(got) != 0 {
		t.Errorf("kube-dns asked %v, want never: the node cache was only slow", got)
	}
}

// TestNodeCacheDiesAndReturns: with the node cache gone, answers come from
// kube-dns over TCP; once it listens again, a probe finds it and queries go
// back to it over UDP, and no longer to kube-dns. Over IPv6 "gone" is an
// ICMPv6 port unreachable and a RST from ::1.
func TestNodeCacheDiesAndReturns(t *testing.T) {
	for _, fam := range []family{ipv4, ipv6} {
		t.Run(string(fam), func(t *testing.T) {
			t.Parallel()
			testNodeCacheDiesAndReturns(t, fam)
		})
	}
}

func testNodeCacheDiesAndReturns(t *testing.T, fam family) {
	node, kube := startFake(t, fam, "node cache", nodeCacheAnswer), startKubeDNS(t, fam)
	s := startStub(t, testConfig(node, kube))

	first := freshName()
	if got := answeredBy(ask(t, s, first)); got != nodeCacheAnswer {
		t.Fatalf("with the node cache up: answer %s, want the node cache's %s", got, nodeCacheAnswer)
	}

	node.Stop()
	for i := range 3 {
		if got := answeredBy(ask(t, s, freshName())); got != kubeDNSAnswer {
			t.Fatalf("node cache gone, query %d: answer %s, want kube-dns's %s", i, got, kubeDNSAnswer)
		}
	}
	if got, want := kube.transports(), []string{"tcp", "tcp", "tcp"}; !slices.Equal(got, want) {
		t.Errorf("kube-dns saw %v, want %v", got, want)
	}
	if got := answeredBy(ask(t, s, first)); got != nodeCacheAnswer {
		t.Errorf("a name cached before the node cache died: answer %s, want it from the cache", got)
	}

	node.Restart()
	var back string
	systest.WaitFor(t, "queries to reach the restarted node cache", func() (bool, string) {
		back = freshName()
		got := answeredBy(ask(t, s, back))
		return got == nodeCacheAnswer, "last answer " + got
	})
	kubeBefore := len(kube.transports())
	name := freshName()
	if got := answeredBy(ask(t, s, name)); got != nodeCacheAnswer {
		t.Errorf("after the node cache returned: answer %s, want %s", got, nodeCacheAnswer)
	}
	if !node.asked(name) || !node.asked(back) {
		t.Errorf("the restarted node cache did not see the queries %s and %s", back, name)
	}
	if got := node.transports(); got[len(got)-1] != "udp" {
		t.Errorf("node cache transports %v: the last query should be over UDP again", got)
	}
	if got := len(kube.transports()); got != kubeBefore {
		t.Errorf("kube-dns got %d more queries after the node cache returned, want 0", got-kubeBefore)
	}
}

func TestMetricsAndReadiness(t *testing.T) {
	node := startFake(t, ipv4, "node cache", nodeCacheAnswer)
	cfg := testConfig(node, startKubeDNS(t, ipv4))
	cfg.MetricsAddr = "127.0.0.1:0"
	s := startStub(t, cfg)
	base := "http://" + s.MetricsAddr().String()

	if code, body := opstest.Get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no upstream has answered yet") {
		t.Errorf("/readyz before any query: %d %q, want 503 saying no upstream answered", code, body)
	}
	ask(t, s, freshName())
	if code, body := opstest.Get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after an answer: %d %q, want 200", code, body)
	}
	if code, _ := opstest.Get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	_, metrics := opstest.Get(t, base+"/metrics")
	for _, want := range []string{
		`localdns_stub_requests_total{proto="udp",qtype="A",rcode="NOERROR"} 1`,
		`localdns_stub_cache_misses_total 1`,
		fmt.Sprintf(`localdns_stub_upstream_requests_total{server="%s",transport="udp"} 1`, node.Addr()),
		fmt.Sprintf(`localdns_stub_upstream_healthy{server="%s"} 1`, node.Addr()),
		"process_resident_memory_bytes",
		"go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, "localdns_nodecache_") {
		t.Error("/metrics carries localdns_nodecache_ series; the stub's prefix is localdns_stub_")
	}
}

func TestNoMetricsListenerByDefault(t *testing.T) {
	s := startStub(t, testConfig(startFake(t, ipv4, "node cache", nodeCacheAnswer), nil))
	if addr := s.MetricsAddr(); addr != nil {
		t.Errorf("metrics listener on %s without MetricsAddr", addr)
	}
}

// TestStartFailureLeavesNothing: when a DNS address cannot be bound, Start
// fails and releases what it had opened: the metrics listener and the
// addresses bound before the failing one.
func TestStartFailureLeavesNothing(t *testing.T) {
	dnsAddr, metricsAddr := unusedAddr(t), unusedAddr(t)
	cfg := testConfig(startFake(t, ipv4, "node cache", nodeCacheAnswer), nil)
	// 192.0.2.1 (TEST-NET-1) is on no interface here: EADDRNOTAVAIL.
	cfg.Listen = []netip.AddrPort{dnsAddr, netip.MustParseAddrPort("192.0.2.1:53")}
	cfg.MetricsAddr = metricsAddr.String()
	if s, err := Start(cfg, nil); err == nil {
		_ = s.Shutdown(context.Background())
		t.Fatal("Start succeeded with an address it cannot bind")
	}
	for _, probe := range []struct{ network, addr string }{{"udp", dnsAddr.String()}, {"tcp", metricsAddr.String()}} {
		var c io.Closer
		var err error
		if probe.network == "udp" {
			c, err = net.ListenPacket("udp", probe.addr)
		} else {
			c, err = net.Listen("tcp", probe.addr)
		}
		if err != nil {
			t.Errorf("%s %s still taken after the failed Start: %v", probe.network, probe.addr, err)
			continue
		}
		c.Close()
	}
}

// unusedAddr returns a loopback address whose UDP and TCP ports are free.
func unusedAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	f := startFake(t, ipv4, "placeholder", nodeCacheAnswer)
	f.Stop()
	return f.Addr()
}

// receive waits for a value from ch; the bound only turns a hang into a failure.
func receive[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatal("nothing received within 30 s")
	}
	panic("unreachable")
}

package nodecache

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/corednstest"
	"github.com/localdns/localdns/internal/dnstest"
	"github.com/localdns/localdns/internal/kubednsfake"
	"github.com/localdns/localdns/internal/systest"
	"github.com/localdns/localdns/internal/testutil"
)

// realKubeDNS starts the real CoreDNS as kube-dns: cluster.local from a file
// (the fake's zone, 200 Services, TTL 5, as the kubernetes plugin answers),
// ext.test answered after 200 ms (an external name kube-dns forwards to a
// slow resolver), and whatever extra blocks the test adds.
func realKubeDNS(t *testing.T, extra func(addr netip.AddrPort) string) (*corednstest.Server, func(extra func(netip.AddrPort) string) corednstest.Corefile) {
	t.Helper()
	dir := t.TempDir()
	z, err := kubednsfake.NewClusterZone("cluster.local", 200, kubednsfake.ClusterTTL)
	if err != nil {
		t.Fatal(err)
	}
	zoneFile := filepath.Join(dir, "cluster.local.zone")
	f, err := os.Create(zoneFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := z.WriteMasterFile(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	corefile := func(extra func(netip.AddrPort) string) corednstest.Corefile {
		return func(addr netip.AddrPort) string {
			block := func(zone, body string) string {
				return fmt.Sprintf("%s:%d {\n    bind %s\n%s}\n", zone, addr.Port(), addr.Addr(), body)
			}
			c := block("cluster.local", "    reload 2s\n    file "+zoneFile+"\n") +
				block("ext.test", "    reload 2s\n    erratic {\n        delay 1 200ms\n    }\n")
			if extra != nil {
				c += extra(addr)
			}
			return c
		}
	}
	return corednstest.Start(t, corefile(extra)), corefile
}

// startNodeCache serves a resolver built as the node cache builds it, in front
// of kubeDNS, on a loopback address.
func startNodeCache(t *testing.T, kubeDNS netip.AddrPort) (*prometheus.Registry, netip.AddrPort) {
	t.Helper()
	pc, l := dnstest.ListenBoth(t)
	addr := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	l.Close()
	res, reg := testResolver(t, addr, kubeDNS, CommandServe)
	if err := res.engine.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = res.engine.Shutdown(t.Context()) })
	return reg, addr
}

func ask(t *testing.T, server netip.AddrPort, network, name string) (*dns.Msg, time.Duration) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, rtt, err := c.Exchange(q, server.String())
	if err != nil {
		t.Errorf("%s over %s: %v", name, network, err)
		return nil, rtt
	}
	return r, rtt
}

// TestStubDomainRemovedFromKubeDNS: a name kube-dns answered from a stub
// domain (acme.local) stops resolving through the node cache once the stub
// domain is removed from kube-dns's configuration: kube-dns's own answer (no
// server block holds the name: REFUSED) replaces the cached one as soon as
// that expires, and is never papered over with a stale answer. Only when
// kube-dns cannot be reached at all are expired answers served stale.
func TestStubDomainRemovedFromKubeDNS(t *testing.T) {
	acme := filepath.Join(t.TempDir(), "acme.local.zone")
	if err := os.WriteFile(acme, []byte("acme.local. 1 IN SOA ns.acme.local. hostmaster.acme.local. 1 7200 1800 86400 1\n"+
		"www.acme.local. 1 IN A 10.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	withAcme := func(addr netip.AddrPort) string {
		return fmt.Sprintf("acme.local:%d {\n    bind %s\n    reload 2s\n    file %s\n}\n", addr.Port(), addr.Addr(), acme)
	}
	kubeDNS, corefile := realKubeDNS(t, withAcme)
	res, nodeCache := startNodeCache(t, kubeDNS.Addr())

	if r, _ := ask(t, nodeCache, "udp", "www.acme.local."); r == nil || len(r.Answer) != 1 {
		t.Fatalf("before the change: %v", r)
	}
	kubeDNS.Reload(corefile(nil)) // the stub domain removed from the ConfigMap
	var last string
	systest.WaitFor(t, "the node cache to pass on kube-dns's REFUSED", func() (bool, string) {
		r, _ := ask(t, nodeCache, "udp", "www.acme.local.")
		if r == nil {
			return false, "no reply"
		}
		last = r.String()
		return r.Rcode == dns.RcodeRefused, last
	})
	if n := staleAnswers(t, res); n != 0 {
		t.Errorf("%v answers served stale while kube-dns answered", n)
	}

	// kube-dns gone: what the node cache holds is served stale.
	if r, _ := ask(t, nodeCache, "udp", "svc-7.default.svc.cluster.local."); r == nil || len(r.Answer) != 1 {
		t.Fatalf("cluster name: %v", r)
	}
	kubeDNS.Stop()
	systest.WaitFor(t, "the cached cluster name to be served stale", func() (bool, string) {
		r, _ := ask(t, nodeCache, "udp", "svc-7.default.svc.cluster.local.")
		return r != nil && len(r.Answer) == 1 && staleAnswers(t, res) > 0, fmt.Sprint(r)
	})
}

// staleAnswers reads the engine's count of stale answers.
func staleAnswers(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	return testutil.MetricValue(t, reg, "localdns_nodecache_cache_stale_total", nil)
}

// TestSlowExternalNamesBesideClusterNames is the measurement in small,
// against the real CoreDNS: while 40 unique external names are outstanding at
// once (each answered after 200 ms), 50 cluster-name misses a second are
// asked for 2 s. Every answer must come (no SERVFAIL, no timeout); latencies are
// reported, not asserted.
func TestSlowExternalNamesBesideClusterNames(t *testing.T) {
	kubeDNS, _ := realKubeDNS(t, nil)
	res, nodeCache := startNodeCache(t, kubeDNS.Addr())

	stop := make(chan struct{})
	var external sync.WaitGroup
	var mu sync.Mutex
	externalRcodes := map[string]int{}
	for w := range 40 {
		external.Go(func() {
			for i := 0; i < 50; i++ { // bounded: at most 50 names per worker
				select {
				case <-stop:
					return
				default:
				}
				r, _ := ask(t, nodeCache, "udp", fmt.Sprintf("n%d-%d.ext.test.", w, i))
				rcode := "no reply"
				if r != nil {
					rcode = dns.RcodeToString[r.Rcode]
				}
				mu.Lock()
				externalRcodes[rcode]++
				mu.Unlock()
			}
		})
	}
	var rtts []time.Duration
	pace := time.NewTicker(20 * time.Millisecond) // 50 misses a second, as in the measurement
	defer pace.Stop()
	for i := range 100 {
		<-pace.C
		r, rtt := ask(t, nodeCache, "udp", fmt.Sprintf("svc-%d.default.svc.cluster.local.", i))
		if r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Errorf("cluster name %d: %v", i, r)
		}
		rtts = append(rtts, rtt)
	}
	close(stop)
	external.Wait()
	slices.Sort(rtts)
	t.Logf("cluster-name misses beside 40 outstanding slow external names: p50 %v, p99 %v, max %v; external: %v",
		rtts[len(rtts)/2], rtts[len(rtts)*99/100], rtts[len(rtts)-1], externalRcodes)
	for rcode, n := range externalRcodes {
		if rcode != "NOERROR" {
			t.Errorf("%d external names answered %s, want every one NOERROR (kube-dns answered them)", n, rcode)
		}
	}
	if down := testutil.MetricValue(t, res, "localdns_nodecache_upstream_healthy", nil); down != 1 {
		t.Errorf("upstream_healthy %v, want 1: slow names never mark kube-dns down", down)
	}
}

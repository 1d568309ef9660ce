package corednstest

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/dnstest"
	"github.com/localdns/localdns/internal/kubednsfake"
	"github.com/localdns/localdns/internal/systest"
	"github.com/miekg/dns"
)

// zoneFiles writes the cluster zone (the fake's, 10 Services) and acme.local
// (www A 10.0.0.1) for CoreDNS's file plugin, and returns their paths.
func zoneFiles(t *testing.T) (cluster, acme string) {
	t.Helper()
	dir := t.TempDir()
	z, err := kubednsfake.NewClusterZone("cluster.local", 10, kubednsfake.ClusterTTL)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "cluster.local.zone"))
	if err != nil {
		t.Fatal(err)
	}
	if err := z.WriteMasterFile(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	acme = filepath.Join(dir, "acme.local.zone")
	const acmeZone = `acme.local. 5 IN SOA ns.acme.local. hostmaster.acme.local. 1 7200 1800 86400 5
www.acme.local. 5 IN A 10.0.0.1
`
	if err := os.WriteFile(acme, []byte(acmeZone), 0o644); err != nil {
		t.Fatal(err)
	}
	return f.Name(), acme
}

// block is one Corefile server block for zone on addr.
func block(addr netip.AddrPort, zone, body string) string {
	return fmt.Sprintf("%s:%d {\n    bind %s\n%s}\n", zone, addr.Port(), addr.Addr(), body)
}

// TestPipelinedQueriesAnsweredSerially reproduces what the node cache meets
// in front of kube-dns: CoreDNS reads a TCP connection's next query only once
// it has answered the one before. Five queries for a zone that answers after
// 200 ms, then one for the cluster zone (answered at once), all written at
// once on one connection, come back in the order sent: the cluster name
// waits for all five slow names.
func TestPipelinedQueriesAnsweredSerially(t *testing.T) {
	cluster, _ := zoneFiles(t)
	s := Start(t, func(addr netip.AddrPort) string {
		return block(addr, "slow.test", "    erratic {\n        delay 1 200ms\n    }\n") +
			block(addr, "cluster.local", "    file "+cluster+"\n")
	})
	sent := []string{"q1.slow.test.", "q2.slow.test.", "q3.slow.test.", "q4.slow.test.", "q5.slow.test.", "svc-1.default.svc.cluster.local."}

	var got []string
	for _, r := range dnstest.Pipeline(t, "tcp", s.Addr(), sent) {
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Errorf("%s: %s with %d answers, want NOERROR with 1", r.Question[0].Name, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
		got = append(got, r.Question[0].Name)
		t.Logf("%-34s answered after %v", r.Question[0].Name, r.After.Round(time.Millisecond))
	}
	if !slices.Equal(got, sent) {
		t.Errorf("replies in the order %v, want the order sent %v (one query at a time per connection)", got, sent)
	}
}

// TestZoneRemoved swaps a Corefile for one without acme.local, both ways a
// kube-dns's configuration changes: its names stop resolving (REFUSED, no
// server block holds them) while the cluster zone keeps answering.
func TestZoneRemoved(t *testing.T) {
	cluster, acme := zoneFiles(t)
	corefile := func(withAcme bool) Corefile {
		return func(addr netip.AddrPort) string {
			c := block(addr, "cluster.local", "    reload 2s\n    file "+cluster+"\n")
			if withAcme {
				c += block(addr, "acme.local", "    reload 2s\n    file "+acme+"\n")
			}
			return c
		}
	}
	tests := []struct {
		name string
		swap func(*Server, Corefile)
	}{
		{"reload", (*Server).Reload},
		{"restart", (*Server).Restart},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := Start(t, corefile(true))
			ask := func(name string) *dns.Msg {
				t.Helper()
				q := new(dns.Msg)
				q.SetQuestion(name, dns.TypeA)
				c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
				r, _, err := c.Exchange(q, s.Addr().String())
				if err != nil {
					t.Fatalf("%s: %v%s", name, err, s.Logs())
				}
				return r
			}
			if r := ask("www.acme.local."); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("before the swap: www.acme.local. %s with %d answers, want NOERROR", dns.RcodeToString[r.Rcode], len(r.Answer))
			}
			addr := s.Addr()
			tc.swap(s, corefile(false))
			if s.Addr() != addr {
				t.Errorf("serving on %s after the swap, want %s", s.Addr(), addr)
			}
			if r := ask("www.acme.local."); r.Rcode != dns.RcodeRefused {
				t.Errorf("after the swap: www.acme.local. %s, want REFUSED", dns.RcodeToString[r.Rcode])
			}
			if r := ask("svc-1.default.svc.cluster.local."); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Errorf("after the swap: the cluster name %s with %d answers, want NOERROR", dns.RcodeToString[r.Rcode], len(r.Answer))
			}
		})
	}
}

// TestStopWaitsOutLameduck: with `health { lameduck }` CoreDNS answers for
// that long after SIGTERM; Stop returns only once it has exited and the
// address refuses.
func TestStopWaitsOutLameduck(t *testing.T) {
	cluster, _ := zoneFiles(t)
	s := Start(t, func(addr netip.AddrPort) string {
		health := netip.AddrPortFrom(addr.Addr(), addr.Port()+1)
		return block(addr, "cluster.local", fmt.Sprintf("    health %s {\n        lameduck 1s\n    }\n    file %s\n", health, cluster))
	})
	addr := s.Addr().String()
	proc := s.proc
	stopped := make(chan struct{})
	go func() { s.Stop(); close(stopped) }()
	systest.WaitFor(t, "the lameduck to begin", func() (bool, string) {
		return strings.Contains(proc.Logs(), "Going into lameduck mode"), proc.Logs()
	})
	q := new(dns.Msg)
	q.SetQuestion("svc-1.default.svc.cluster.local.", dns.TypeA)
	if r, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(q, addr); err != nil || len(r.Answer) != 1 {
		t.Errorf("during the lameduck: reply %v, error %v; want an answer", r, err)
	}
	<-stopped
	if _, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(q, addr); err == nil {
		t.Error("CoreDNS still answers after Stop returned")
	}
}

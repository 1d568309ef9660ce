package main

import (
	"context"
	"errors"
	"flag"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/corednstest"
	"github.com/localdns/localdns/internal/dnstest"
	"github.com/localdns/localdns/internal/kubednsfake"
	"github.com/miekg/dns"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestKubeDNSCorefile runs the real CoreDNS with the bench's kube-dns
// configuration and checks each zone behaves as the section says.
func TestKubeDNSCorefile(t *testing.T) {
	dir := t.TempDir()
	if err := writeZoneFiles(dir); err != nil {
		t.Fatal(err)
	}
	s := corednstest.Start(t, func(addr netip.AddrPort) string { return kubeDNSCorefile(dir, addr, 20*time.Millisecond) })
	tests := []struct {
		network, name string
		qtype         uint16
		check         func(*dns.Msg) bool
		wantTimeout   bool
	}{
		{"udp", kubednsfake.ServiceName(services-1, clusterZone), dns.TypeA,
			func(r *dns.Msg) bool { return len(r.Answer) == 1 && r.Answer[0].Header().Ttl == kubednsfake.ClusterTTL }, false},
		{"udp", "f1.flood." + clusterZone, dns.TypeA,
			func(r *dns.Msg) bool { return r.Rcode == dns.RcodeNameError && len(r.Ns) == 1 }, false},
		{"udp", "e1.ext.test.", dns.TypeA,
			func(r *dns.Msg) bool { return r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1 }, false},
		{"tcp", "b1.big.test.", dns.TypeTXT,
			func(r *dns.Msg) bool {
				return len(r.Answer) == 1 && len(strings.Join(r.Answer[0].(*dns.TXT).Txt, "")) == bigSize
			}, false},
		{"udp", "s1.stuck.test.", dns.TypeA, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := dial(tc.network, netip.MustParseAddr("127.0.0.1"), s.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			r, _, err := ask(conn, tc.name, tc.qtype, time.Second)
			var netErr net.Error
			if tc.wantTimeout {
				if !errors.As(err, &netErr) || !netErr.Timeout() {
					t.Errorf("reply %v, error %v; want no reply", r, err)
				}
				return
			}
			if err != nil || !tc.check(r) {
				t.Errorf("reply %v, error %v%s", r, err, s.Logs())
			}
		})
	}
}

// fakeKubeDNSServer stands in for the cache under test: the fake kube-dns
// with the bench's zones (the external one fast, to keep the test short).
func fakeKubeDNSServer(t *testing.T) netip.AddrPort {
	t.Helper()
	cluster, err := kubednsfake.NewClusterZone(clusterZone, services, kubednsfake.ClusterTTL)
	if err != nil {
		t.Fatal(err)
	}
	h, err := kubednsfake.New(kubednsfake.Config{
		Cluster:  cluster,
		External: []kubednsfake.ExternalZone{{Name: externalZone, Latency: kubednsfake.Fixed(10 * time.Millisecond)}},
		Silent:   []string{stuckZone},
		Big:      []kubednsfake.BigZone{{Name: bigZone, Size: bigSize}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return dnstest.Start(t, dnstest.Config{Handler: h.ServeDNS}).Addr()
}

func TestRunLoad(t *testing.T) {
	cfg := defaultLoad
	cfg.server = fakeKubeDNSServer(t)
	cfg.duration = time.Second
	cfg.externalRate = 100
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	res := runLoad(context.Background(), cfg)
	for what, tally := range map[string]*Tally{"cluster": res.Cluster, "external": res.External} {
		if tally.Sent == 0 || tally.Rcodes["NOERROR"] != tally.Sent {
			t.Errorf("%s names: %v; want every one answered NOERROR", what, tally)
		}
	}
	// The load is paced: at most its rates, whatever the server's speed.
	if n := res.External.Sent; n > 2*cfg.externalRate {
		t.Errorf("%d external names in %v, want at most %d/s", n, cfg.duration, cfg.externalRate)
	}
}

func TestRunHostile(t *testing.T) {
	server := fakeKubeDNSServer(t)
	tests := []struct {
		load  string
		check func(*HostileResult) bool
	}{
		{"big", func(r *HostileResult) bool { return r.Hostile.Rcodes["NOERROR"] == 20 }},
		{"flood", func(r *HostileResult) bool { return r.Hostile.Rcodes["NXDOMAIN"] == 20 }},
		{"stuck", func(r *HostileResult) bool { return r.Hostile.Sent == 20 && r.Hostile.NoReply == 20 }},
		{"tcp", func(r *HostileResult) bool {
			return r.TCP.Opened == 20 && r.TCP.DialFailed == 0 && r.TCP.OtherClientTCP == "answered"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.load, func(t *testing.T) {
			load, err := hostileLoadNamed(tc.load)
			if err != nil {
				t.Fatal(err)
			}
			cfg := defaultHostile
			cfg.server, cfg.load, cfg.count, cfg.hold = server, load, 20, 100*time.Millisecond
			res, err := runHostile(context.Background(), cfg, os.Getpid())
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(res) || res.PeakRSSKiB <= 0 {
				t.Errorf("%s", res.summary())
			}
			if res.Other.Rcodes["NOERROR"] != res.Other.Sent {
				t.Errorf("the other client's names: %v; want every one answered", res.Other)
			}
		})
	}
	if _, err := hostileLoadNamed("nope"); err == nil {
		t.Error("an unknown load: no error")
	}
}

func TestTallyPercentiles(t *testing.T) {
	tally := newTally()
	for i := 1; i <= 200; i++ {
		tally.record(&dns.Msg{}, time.Duration(i)*time.Millisecond, nil)
	}
	tally.record(nil, 0, os.ErrDeadlineExceeded)
	tally.record(nil, 0, errors.New("connection reset"))
	tally.finish()
	if tally.P50Ms != 100 || tally.P99Ms != 198 || tally.MaxMs != 200 {
		t.Errorf("p50 %v p99 %v max %v, want 100, 198, 200", tally.P50Ms, tally.P99Ms, tally.MaxMs)
	}
	if tally.Sent != 202 || tally.Rcodes["NOERROR"] != 200 || tally.NoReply != 1 || tally.Failed != 1 {
		t.Errorf("tally %v", tally)
	}
}

// TestReport renders results read back from files against a golden file.
func TestReport(t *testing.T) {
	tally := func(sent int, rcodes map[string]int, noReply int, p50, p99, maxMs float64) *Tally {
		return &Tally{Sent: sent, Rcodes: rcodes, NoReply: noReply, P50Ms: p50, P99Ms: p99, MaxMs: maxMs}
	}
	results := []any{
		&LoadResult{Kind: "load", Name: "localdns", Seconds: 25,
			Cluster:  tally(1000, map[string]int{"NOERROR": 990, "SERVFAIL": 10}, 0, 0.4, 1004, 1100),
			External: tally(4000, map[string]int{"NOERROR": 100, "SERVFAIL": 3890, "REFUSED": 10}, 0, 0.3, 1000, 1200)},
		&LoadResult{Kind: "load", Name: "coredns", Seconds: 25,
			Cluster:  tally(1000, map[string]int{"NOERROR": 1000}, 0, 0.9, 48.3, 82.3),
			External: tally(4000, map[string]int{"NOERROR": 3999}, 1, 201, 260, 300)},
		&HostileResult{Kind: "hostile", Load: "big", What: "3000 big answers", PeakRSSKiB: 200 * 1024,
			Hostile: tally(3000, map[string]int{"NOERROR": 3000}, 0, 0, 0, 0),
			Other:   tally(500, map[string]int{"NOERROR": 500}, 0, 1, 10, 12)},
		&HostileResult{Kind: "hostile", Load: "tcp", What: "1100 connections", PeakRSSKiB: 70 * 1024,
			Hostile: newTally(), Other: tally(500, map[string]int{"NOERROR": 450, "SERVFAIL": 50}, 3, 1, 900, 1000),
			TCP: &TCPFlood{Opened: 1100, ClosedByServer: 100, OtherClientTCP: "EOF"}},
	}
	var files []string
	for i, r := range results {
		f := filepath.Join(t.TempDir(), string(rune('a'+i))+".json")
		if err := writeJSON(f, r); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	slow, hostile, err := readResults(files)
	if err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	if err := writeReport(&got, slow, hostile, 128<<20); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "report.golden.md")
	if *update {
		if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != string(want) {
		t.Errorf("report:\n%s\nwant (%s; go test -update to rewrite):\n%s", got.String(), golden, want)
	}
}

func TestRunRejects(t *testing.T) {
	tests := [][]string{
		{},
		{"nope"},
		{"kube-dns", "-dir", t.TempDir(), "-listen", "10.0.0.1:53"},
		{"load", "-server", "127.0.0.1:53", "-name", "x", "-out", "f", "-duration", "1h"},
		{"load", "-server", "127.0.0.1:53", "-name", "x", "-out", "f", "-cluster-rate", "1000"},
		{"hostile", "-server", "127.0.0.1:53", "-load", "big", "-pid", "1", "-out", "f", "-count", "1000000"},
		{"hostile", "-server", "192.0.2.1:53", "-load", "big", "-pid", "1", "-out", "f"},
		{"report", "-memory-limit", "lots"},
	}
	for _, args := range tests {
		if err := run(context.Background(), args, &strings.Builder{}); err == nil {
			t.Errorf("run(%q): no error", args)
		}
	}
}

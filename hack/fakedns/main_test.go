package main

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/dnstest"
	"github.com/localdns/localdns/internal/kubednsfake"
	"github.com/localdns/localdns/internal/systest"
	"github.com/miekg/dns"
)

func TestParseFlags(t *testing.T) {
	delay := kubednsfake.Latency{Min: 100 * time.Millisecond, Max: 300 * time.Millisecond}
	tests := []struct {
		name    string
		args    []string
		check   func(config) bool
		wantErr bool
	}{
		{"unlimited TCP queries by default, as CoreDNS", nil,
			func(c config) bool { return c.maxTCPQueries == -1 && c.lameduck == 0 }, false},
		{"max TCP queries", []string{"--max-tcp-queries", "128"}, func(c config) bool { return c.maxTCPQueries == 128 }, false},
		{"max TCP queries 0, which miekg/dns would read as 128", []string{"--max-tcp-queries", "0"}, nil, true},
		{"max TCP queries -2", []string{"--max-tcp-queries", "-2"}, nil, true},
		{"external zones share the delay", []string{"--external-zone", "example.com,example.org", "--external-delay", "100ms-300ms"},
			func(c config) bool {
				e := c.zones.External
				return len(e) == 2 && e[0] == kubednsfake.ExternalZone{Name: "example.com", Latency: delay} && e[1].Name == "example.org" && e[1].Latency == delay
			}, false},
		{"silent and big zones", []string{"--silent-zone", "dead.test", "--silent-zone", "stuck.test", "--big-zone", "big.test", "--big-size", "1000"},
			func(c config) bool {
				return len(c.zones.Silent) == 2 && c.zones.Big[0] == kubednsfake.BigZone{Name: "big.test", Size: 1000}
			}, false},
		{"lameduck", []string{"--lameduck", "5s"}, func(c config) bool { return c.lameduck == 5*time.Second }, false},
		{"negative lameduck", []string{"--lameduck", "-1s"}, nil, true},
		{"bad delay", []string{"--external-delay", "300ms-100ms"}, nil, true},
		{"bad zone", []string{"--zone", "."}, nil, true},
		{"bad listen", []string{"--listen", "localhost:53"}, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseFlags(tc.args)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseFlags(%q): error %v, want error %v", tc.args, err, tc.wantErr)
			}
			if err == nil && !tc.check(cfg) {
				t.Errorf("parseFlags(%q) = %+v", tc.args, cfg)
			}
		})
	}
}

// TestBinary runs fakedns with every kind of zone and a lameduck: each zone
// answers as configured, queries are still answered after SIGTERM, and the
// address refuses once the process has exited.
func TestBinary(t *testing.T) {
	bin := systest.BuildBinaries(t, "github.com/localdns/localdns/hack/fakedns")["fakedns"]
	pc, l := dnstest.ListenBoth(t)
	addr := pc.LocalAddr().String()
	pc.Close()
	l.Close()
	p := systest.Start(t, "fakedns", bin, "--listen", addr, "--services", "2", "--lameduck", "2s",
		"--external-zone", "example.com", "--external-delay", "1ms-5ms", "--silent-zone", "dead.test",
		"--big-zone", "big.test", "--big-size", "20000")
	ask := func(network, name string, qtype uint16) (*dns.Msg, error) {
		q := new(dns.Msg)
		q.SetQuestion(name, qtype)
		c := &dns.Client{Net: network, Timeout: 500 * time.Millisecond}
		r, _, err := c.Exchange(q, addr)
		return r, err
	}
	systest.WaitFor(t, "fakedns to answer", func() (bool, string) {
		_, err := ask("udp", "svc-0.default.svc.cluster.local.", dns.TypeA)
		return err == nil, p.Logs()
	})

	tests := []struct {
		network, name string
		qtype         uint16
		wantAnswers   int
		wantTimeout   bool
	}{
		{"udp", "svc-1.default.svc.cluster.local.", dns.TypeA, 1, false},
		{"tcp", "www.example.com.", dns.TypeAAAA, 1, false},
		{"tcp", "n1.big.test.", dns.TypeTXT, 1, false},
		{"udp", "n1.big.test.", dns.TypeTXT, 0, false}, // truncated
		{"udp", "x.dead.test.", dns.TypeA, 0, true},
	}
	for _, tc := range tests {
		r, err := ask(tc.network, tc.name, tc.qtype)
		var netErr interface{ Timeout() bool }
		timedOut := errors.As(err, &netErr) && netErr.Timeout()
		if timedOut != tc.wantTimeout || (err != nil && !timedOut) || (err == nil && len(r.Answer) != tc.wantAnswers) {
			t.Errorf("%s %s over %s: reply %v, error %v; want %d answers (timeout: %v)", tc.name, dns.TypeToString[tc.qtype], tc.network, r, err, tc.wantAnswers, tc.wantTimeout)
		}
	}

	if err := syscall.Kill(p.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	logged := func(s string) func() (bool, string) {
		return func() (bool, string) { return strings.Contains(p.Logs(), s), p.Logs() }
	}
	systest.WaitFor(t, "the lameduck to begin", logged("fakedns: lameduck"))
	if _, err := ask("tcp", "svc-0.default.svc.cluster.local.", dns.TypeA); err != nil {
		t.Errorf("during the lameduck: %v, want an answer", err)
	}
	systest.WaitFor(t, "fakedns to stop serving", logged("fakedns: handled"))
	if _, err := ask("tcp", "svc-0.default.svc.cluster.local.", dns.TypeA); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after exit: %v, want connection refused", err)
	}
}

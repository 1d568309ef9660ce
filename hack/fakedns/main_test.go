package main

import (
	"testing"

	"github.com/miekg/dns"
)

func TestAnswer(t *testing.T) {
	z := buildZone(config{zone: "cluster.local.", services: 3, ttl: 5})
	tests := []struct {
		name       string
		qname      string
		qtype      uint16
		wantRcode  int
		wantAnswer string // first answer, "" for none
		wantSOA    bool
	}{
		{"A", "svc-2.default.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, "svc-2.default.svc.cluster.local.\t5\tIN\tA\t10.97.0.2", false},
		{"AAAA", "svc-2.default.svc.cluster.local.", dns.TypeAAAA, dns.RcodeSuccess, "svc-2.default.svc.cluster.local.\t5\tIN\tAAAA\tfd00:97::2", false},
		{"SRV", "_http._tcp.svc-0.default.svc.cluster.local.", dns.TypeSRV, dns.RcodeSuccess, "_http._tcp.svc-0.default.svc.cluster.local.\t5\tIN\tSRV\t0 100 80 svc-0.default.svc.cluster.local.", false},
		{"case kept", "SVC-1.default.svc.Cluster.Local.", dns.TypeA, dns.RcodeSuccess, "SVC-1.default.svc.Cluster.Local.\t5\tIN\tA\t10.97.0.1", false},
		{"search expansion NXDOMAIN", "svc-1.default.svc.cluster.local.default.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, "", true},
		{"beyond the services", "svc-3.default.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, "", true},
		{"NODATA for a missing type", "svc-1.default.svc.cluster.local.", dns.TypeMX, dns.RcodeSuccess, "", true},
		{"NODATA for an empty non-terminal", "default.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, "", true},
		{"outside the zone", "example.com.", dns.TypeA, dns.RcodeRefused, "", false},
		{"the root", ".", dns.TypeNS, dns.RcodeRefused, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := new(dns.Msg)
			req.SetQuestion(tc.qname, tc.qtype)
			reply := new(dns.Msg)
			reply.SetReply(req)
			z.answer(req.Question[0], reply)
			if reply.Rcode != tc.wantRcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[reply.Rcode], dns.RcodeToString[tc.wantRcode])
			}
			got := ""
			if len(reply.Answer) > 0 {
				got = reply.Answer[0].String()
			}
			if got != tc.wantAnswer {
				t.Errorf("answer %q, want %q", got, tc.wantAnswer)
			}
			if hasSOA := len(reply.Ns) == 1 && reply.Ns[0].Header().Rrtype == dns.TypeSOA; hasSOA != tc.wantSOA {
				t.Errorf("SOA in authority: %v, want %v", hasSOA, tc.wantSOA)
			}
		})
	}
}

func TestParseFlagsMaxTCPQueries(t *testing.T) {
	tests := []struct {
		args    []string
		want    int
		wantErr bool
	}{
		{nil, -1, false}, // unlimited by default, as CoreDNS
		{[]string{"--max-tcp-queries", "128"}, 128, false},
		{[]string{"--max-tcp-queries", "0"}, 0, true}, // miekg/dns would read 0 as its default 128
		{[]string{"--max-tcp-queries", "-2"}, 0, true},
	}
	for _, tc := range tests {
		cfg, err := parseFlags(tc.args)
		if (err != nil) != tc.wantErr {
			t.Errorf("parseFlags(%q): error %v, want error %v", tc.args, err, tc.wantErr)
			continue
		}
		if err == nil && cfg.maxTCPQueries != tc.want {
			t.Errorf("parseFlags(%q): max TCP queries %d, want %d", tc.args, cfg.maxTCPQueries, tc.want)
		}
	}
}

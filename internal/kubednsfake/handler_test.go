package kubednsfake

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// recorder is a dns.ResponseWriter that keeps what the handler wrote, seen
// as a server socket of the given network.
type recorder struct {
	network string
	written []*dns.Msg
}

func (r *recorder) LocalAddr() net.Addr {
	if r.network == "udp" {
		return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (r *recorder) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 40000}
}
func (r *recorder) WriteMsg(m *dns.Msg) error { r.written = append(r.written, m); return nil }
func (r *recorder) Write([]byte) (int, error) { panic("the handler writes messages") }
func (r *recorder) Close() error              { return nil }
func (r *recorder) TsigStatus() error         { return nil }
func (r *recorder) TsigTimersOnly(bool)       {}
func (r *recorder) Hijack()                   {}

func testHandler(t *testing.T) *Handler {
	t.Helper()
	cluster, err := NewClusterZone("cluster.local", 3, ClusterTTL)
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{
		Cluster:  cluster,
		External: []ExternalZone{{Name: "example.com", Latency: Fixed(0)}},
		Silent:   []string{"dead.example.com", "stuck.cluster.local"},
		Big:      []BigZone{{Name: "big.test", Size: 60000}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestHandler(t *testing.T) {
	h := testHandler(t)
	tests := []struct {
		name       string
		network    string
		qname      string
		qtype      uint16
		edns       uint16 // EDNS buffer size; 0 for none
		noReply    bool
		wantRcode  int
		wantAnswer string // first answer, "" for none
		wantSOA    string // owner of the SOA in the authority section, "" for none
		wantTC     bool
		wantAA     bool
	}{
		{name: "cluster A", qname: "svc-2.default.svc.cluster.local.", qtype: dns.TypeA,
			wantAnswer: "svc-2.default.svc.cluster.local.\t5\tIN\tA\t10.97.0.2", wantAA: true},
		{name: "cluster AAAA", qname: "svc-2.default.svc.cluster.local.", qtype: dns.TypeAAAA,
			wantAnswer: "svc-2.default.svc.cluster.local.\t5\tIN\tAAAA\tfd00:97::2", wantAA: true},
		{name: "cluster SRV", qname: "_http._tcp.svc-0.default.svc.cluster.local.", qtype: dns.TypeSRV,
			wantAnswer: "_http._tcp.svc-0.default.svc.cluster.local.\t5\tIN\tSRV\t0 100 80 svc-0.default.svc.cluster.local.", wantAA: true},
		{name: "case kept", qname: "SVC-1.default.svc.Cluster.Local.", qtype: dns.TypeA,
			wantAnswer: "SVC-1.default.svc.Cluster.Local.\t5\tIN\tA\t10.97.0.1", wantAA: true},
		{name: "search expansion NXDOMAIN", qname: "svc-1.default.svc.cluster.local.default.svc.cluster.local.", qtype: dns.TypeA,
			wantRcode: dns.RcodeNameError, wantSOA: "cluster.local.", wantAA: true},
		{name: "beyond the services", qname: "svc-3.default.svc.cluster.local.", qtype: dns.TypeA,
			wantRcode: dns.RcodeNameError, wantSOA: "cluster.local.", wantAA: true},
		{name: "NODATA for a missing type", qname: "svc-1.default.svc.cluster.local.", qtype: dns.TypeMX,
			wantSOA: "cluster.local.", wantAA: true},
		{name: "NODATA for an empty non-terminal", qname: "default.svc.cluster.local.", qtype: dns.TypeA,
			wantSOA: "cluster.local.", wantAA: true},
		{name: "external A", qname: "www.Example.com.", qtype: dns.TypeA,
			wantAnswer: "www.Example.com.\t30\tIN\tA\t192.0.2.53"},
		{name: "external AAAA", qname: "www.example.com.", qtype: dns.TypeAAAA,
			wantAnswer: "www.example.com.\t30\tIN\tAAAA\t2001:db8::53"},
		{name: "external NODATA", qname: "www.example.com.", qtype: dns.TypeMX, wantSOA: "example.com."},
		{name: "silent zone inside an external zone", qname: "a.dead.example.com.", qtype: dns.TypeA, noReply: true},
		{name: "silent zone inside the cluster zone", qname: "x.stuck.cluster.local.", qtype: dns.TypeA, noReply: true},
		{name: "big TXT over TCP", network: "tcp", qname: "n1.big.test.", qtype: dns.TypeTXT, wantAA: true,
			wantAnswer: "n1.big.test.\t3600\tIN\tTXT"},
		{name: "big TXT over UDP is truncated", qname: "n1.big.test.", qtype: dns.TypeTXT, edns: 1232, wantAA: true, wantTC: true},
		{name: "big zone NODATA", qname: "n1.big.test.", qtype: dns.TypeA, wantSOA: "big.test.", wantAA: true},
		{name: "outside every zone", qname: "example.org.", qtype: dns.TypeA, wantRcode: dns.RcodeRefused},
		{name: "the root", qname: ".", qtype: dns.TypeNS, wantRcode: dns.RcodeRefused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := new(dns.Msg)
			req.SetQuestion(tc.qname, tc.qtype)
			if tc.edns != 0 {
				req.SetEdns0(tc.edns, false)
			}
			w := &recorder{network: tc.network}
			if w.network == "" {
				w.network = "udp"
			}
			h.ServeDNS(w, req)
			if tc.noReply {
				if len(w.written) != 0 {
					t.Fatalf("wrote %v, want no reply", w.written)
				}
				return
			}
			if len(w.written) != 1 {
				t.Fatalf("wrote %d replies, want 1", len(w.written))
			}
			reply := w.written[0]
			if reply.Id != req.Id || !reply.Response {
				t.Errorf("reply ID %d response %v, want ID %d and a response", reply.Id, reply.Response, req.Id)
			}
			if reply.Rcode != tc.wantRcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[reply.Rcode], dns.RcodeToString[tc.wantRcode])
			}
			got := ""
			if len(reply.Answer) > 0 {
				got = reply.Answer[0].String()
			}
			if !strings.HasPrefix(got, tc.wantAnswer) || (tc.wantAnswer == "") != (got == "") {
				t.Errorf("answer %.80q, want %q", got, tc.wantAnswer)
			}
			gotSOA := ""
			if len(reply.Ns) == 1 && reply.Ns[0].Header().Rrtype == dns.TypeSOA {
				gotSOA = reply.Ns[0].Header().Name
			}
			if gotSOA != tc.wantSOA {
				t.Errorf("SOA in authority: %q, want %q", gotSOA, tc.wantSOA)
			}
			if reply.Truncated != tc.wantTC || reply.Authoritative != tc.wantAA {
				t.Errorf("TC %v AA %v, want TC %v AA %v", reply.Truncated, reply.Authoritative, tc.wantTC, tc.wantAA)
			}
			if size := reply.Len(); tc.network == "udp" && size > max(int(tc.edns), dns.MinMsgSize) {
				t.Errorf("UDP reply of %d bytes exceeds the client's buffer", size)
			}
		})
	}
}

// TestBigAnswerSize checks that a big zone's answer carries the configured
// text and fits one DNS message over TCP.
func TestBigAnswerSize(t *testing.T) {
	h := testHandler(t)
	req := new(dns.Msg)
	req.SetQuestion("n2.big.test.", dns.TypeTXT)
	w := &recorder{network: "tcp"}
	h.ServeDNS(w, req)
	txt := w.written[0].Answer[0].(*dns.TXT)
	if n := len(strings.Join(txt.Txt, "")); n != 60000 {
		t.Errorf("TXT text of %d bytes, want 60000", n)
	}
	packed, err := w.written[0].Pack()
	if err != nil || len(packed) > dns.MaxMsgSize || len(packed) < 60000 {
		t.Errorf("packed reply: %d bytes, error %v; want 60000..65535", len(packed), err)
	}
}

func TestExternalLatency(t *testing.T) {
	h, err := New(Config{External: []ExternalZone{{Name: "slow.test", Latency: Fixed(30 * time.Millisecond)}}})
	if err != nil {
		t.Fatal(err)
	}
	req := new(dns.Msg)
	req.SetQuestion("a.slow.test.", dns.TypeA)
	start := time.Now()
	h.ServeDNS(&recorder{network: "udp"}, req)
	// A lower bound only: the handler sleeps at least the latency.
	if took := time.Since(start); took < 30*time.Millisecond {
		t.Errorf("answered after %v, want at least the zone's 30ms", took)
	}
}

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"twice", Config{Silent: []string{"a.test", "A.test."}}, `zone "A.test." given twice`},
		{"not a domain", Config{Silent: []string{"a..test"}}, `zone "a..test" is not a domain`},
		{"big too big", Config{Big: []BigZone{{Name: "big.test", Size: MaxBigSize + 1}}}, "size 64001 is not in 1..64000"},
		{"big empty", Config{Big: []BigZone{{Name: "big.test"}}}, "size 0 is not in 1..64000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseLatency(t *testing.T) {
	tests := []struct {
		in      string
		want    Latency
		wantErr bool
	}{
		{"200ms", Fixed(200 * time.Millisecond), false},
		{"100ms-300ms", Latency{100 * time.Millisecond, 300 * time.Millisecond}, false},
		{"0s", Fixed(0), false},
		{"300ms-100ms", Latency{}, true},
		{"-1s", Latency{}, true},
		{"fast", Latency{}, true},
		{"1s-", Latency{}, true},
	}
	for _, tc := range tests {
		got, err := ParseLatency(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseLatency(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err == nil {
			if again, _ := ParseLatency(got.String()); again != got {
				t.Errorf("%q: String %q parses back as %v", tc.in, got.String(), again)
			}
			for range 100 {
				if d := got.pick(); d < got.Min || d > max(got.Min, got.Max) {
					t.Fatalf("%q: picked %v outside the range", tc.in, d)
				}
			}
		}
	}
}

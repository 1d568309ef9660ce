package dnsengine

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestEDNS(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil)
	withEDNS := func(m *dns.Msg, do bool, opts ...dns.EDNS0) *dns.Msg {
		m.SetEdns0(1232, do)
		opt := m.IsEdns0()
		opt.Option = append(opt.Option, opts...)
		return m
	}
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef"}
	tests := []struct {
		name    string
		query   *dns.Msg
		wantOPT bool
		wantDO  bool
	}{
		{"no EDNS", question("www.example.", dns.TypeA), false, false},
		{"EDNS", withEDNS(question("www.example.", dns.TypeA), false), true, false},
		{"EDNS with DO", withEDNS(question("www.example.", dns.TypeA), true), true, true},
		{"EDNS with a cookie (slow path)", withEDNS(question("www.example.", dns.TypeA), false, cookie), true, false},
	}
	for _, tt := range tests {
		for _, network := range []string{"udp", "tcp"} {
			resp := te.query(t, network, tt.query)
			opt := resp.IsEdns0()
			if (opt != nil) != tt.wantOPT {
				t.Fatalf("%s over %s: OPT in reply = %v, want %v", tt.name, network, opt != nil, tt.wantOPT)
			}
			if opt != nil && (opt.Do() != tt.wantDO || opt.Version() != 0 || opt.UDPSize() != ednsPayload) {
				t.Fatalf("%s over %s: OPT %v, want version 0, DO %v, size %d", tt.name, network, opt, tt.wantDO, ednsPayload)
			}
			if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 2 {
				t.Fatalf("%s over %s: reply %v", tt.name, network, resp)
			}
		}
	}
	// The DO bit is part of the key: one upstream request with it, one without.
	if got := te.up.Calls("www.example.", dns.TypeA, false); got != 1 {
		t.Fatalf("upstream calls without DO %d, want 1", got)
	}
	if got := te.up.Calls("www.example.", dns.TypeA, true); got != 1 {
		t.Fatalf("upstream calls with DO %d, want 1", got)
	}

	t.Run("version 1 is BADVERS", func(t *testing.T) {
		m := withEDNS(question("www.example.", dns.TypeA), false)
		m.IsEdns0().SetVersion(1)
		if resp := te.query(t, "udp", m); resp.Rcode != dns.RcodeBadVers || resp.IsEdns0() == nil {
			t.Fatalf("reply %v, want BADVERS with an OPT", resp)
		}
	})
}

// rawUDP is a client socket that sends hand-made packets.
func rawUDP(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return c
}

func packQuery(t testing.TB, id uint16, name string, qtype uint16) []byte {
	t.Helper()
	m := question(name, qtype)
	m.Id = id
	pkt, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

func TestIDPreservedPerQuery(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil)
	te.query(t, "udp", question("www.example.", dns.TypeA)) // cache it
	c := rawUDP(t, te.udp)
	ids := []uint16{0, 1, 0xbeef, 0xffff, 42}
	for _, id := range ids { // written back to back: they arrive in one batch
		if _, err := c.Write(packQuery(t, id, "www.example.", dns.TypeA)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 512)
	for _, want := range ids {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		var m dns.Msg
		if err := m.Unpack(buf[:n]); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
		if m.Id != want {
			t.Fatalf("reply ID %#x, want %#x (replies in order of the queries)", m.Id, want)
		}
	}
}

// TestTruncation checks that a reply over the client's UDP limit keeps as many
// whole answer records as fit, with TC set (as miekg/dns Msg.Truncate and
// CoreDNS do): clients without TCP fallback still get usable addresses.
func TestTruncation(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil)
	full := zoneAnswer(question("big.example.", dns.TypeTXT)).Answer
	steps := []struct {
		name    string
		network string
		qname   string
		udpSize uint16        // EDNS payload size; 0: no EDNS
		advance time.Duration // clock advance before the query
		wantTC  bool
		wantTTL uint32
	}{
		{"udp miss, no EDNS", "udp", "big.example.", 0, 0, true, 20},
		{"udp hit, no EDNS, mixed case", "udp", "BiG.Example.", 0, 5 * time.Second, true, 15},
		{"udp hit, EDNS 700", "udp", "big.EXAMPLE.", 700, 0, true, 15},
		{"udp hit, EDNS 1232", "udp", "big.example.", 1232, 0, true, 15},
		{"tcp hit", "tcp", "Big.example.", 0, 0, false, 15},
		{"udp hit, EDNS 4096", "udp", "big.example.", 4096, 0, false, 15},
	}
	for _, s := range steps {
		te.clock.Advance(s.advance)
		q := question(s.qname, dns.TypeTXT)
		limit := minUDPReply
		if s.udpSize != 0 {
			q.SetEdns0(s.udpSize, false)
			limit = int(s.udpSize)
		}
		var resp *dns.Msg
		if s.network == "tcp" {
			resp = te.query(t, "tcp", q)
		} else {
			var size int
			resp, size = exchangeRawUDP(t, te.udp, q)
			if size > limit {
				t.Fatalf("%s: reply of %d bytes, limit %d", s.name, size, limit)
			}
		}
		if resp.Id != q.Id || resp.Truncated != s.wantTC || (resp.IsEdns0() != nil) != (s.udpSize != 0) {
			t.Fatalf("%s: ID %#x TC %v OPT %v, want ID %#x TC %v OPT %v", s.name, resp.Id, resp.Truncated,
				resp.IsEdns0() != nil, q.Id, s.wantTC, s.udpSize != 0)
		}
		if len(resp.Question) != 1 || resp.Question[0].Name != s.qname {
			t.Fatalf("%s: question %v, want %s", s.name, resp.Question, s.qname)
		}
		if n := len(resp.Answer); n == 0 || (!s.wantTC && n != len(full)) {
			t.Fatalf("%s: %d answers, want all %d, or at least 1 with TC", s.name, n, len(full))
		}
		for _, rr := range resp.Answer {
			if h := rr.Header(); h.Name != s.qname || h.Ttl != s.wantTTL || !isOneOf(rr, full) {
				t.Fatalf("%s: record %v, want one of the full answer's, named %s with TTL %d", s.name, rr, s.qname, s.wantTTL)
			}
		}
	}
	if got := te.up.Total(); got != 1 {
		t.Fatalf("upstream calls %d, want 1", got)
	}
}

// isOneOf reports whether rrs holds a record with rr's type, class, name (any
// case) and data.
func isOneOf(rr dns.RR, rrs []dns.RR) bool {
	for _, x := range rrs {
		if dns.IsDuplicate(rr, x) {
			return true
		}
	}
	return false
}

// exchangeRawUDP sends m over UDP and returns the reply and its size in bytes.
func exchangeRawUDP(t *testing.T, addr string, m *dns.Msg) (*dns.Msg, int) {
	t.Helper()
	pkt, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c := rawUDP(t, addr)
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, dns.MaxMsgSize)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(buf[:n]); err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	return resp, n
}

func TestTCPPipelining(t *testing.T) {
	t.Parallel()
	te := startEngine(t, nil)
	te.query(t, "tcp", question("www.example.", dns.TypeA)) // cached
	conn, err := net.Dial("tcp", te.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	gate, called := make(chan struct{}), make(chan string, 2)
	te.up.Hold(gate, called)
	var out []byte
	for _, q := range []struct {
		id    uint16
		name  string
		qtype uint16
	}{{1, "v6.example.", dns.TypeAAAA}, {2, "nx.example.", dns.TypeA}, {3, "www.example.", dns.TypeA}} {
		pkt := packQuery(t, q.id, q.name, q.qtype)
		out = binary.BigEndian.AppendUint16(out, uint16(len(pkt)))
		out = append(out, pkt...)
	}
	if _, err := conn.Write(out); err != nil { // three queries before reading anything
		t.Fatal(err)
	}
	co := &dns.Conn{Conn: conn}
	first, err := co.ReadMsg()
	if err != nil {
		t.Fatal(err)
	}
	if first.Id != 3 {
		t.Fatalf("first reply has ID %d, want 3: the cached answer overtakes the two misses", first.Id)
	}
	receive(t, called, "upstream call")
	receive(t, called, "upstream call")
	close(gate)
	got := map[uint16]int{}
	for range 2 {
		m, err := co.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		got[m.Id] = m.Rcode
	}
	if got[1] != dns.RcodeSuccess || got[2] != dns.RcodeNameError || len(got) != 2 {
		t.Fatalf("replies by ID %v, want 1: NOERROR, 2: NXDOMAIN", got)
	}
}

func TestMalformedAndUnusualQueries(t *testing.T) {
	t.Parallel()
	header := func(id, flags, qd, an, ns, ar uint16) []byte {
		var h []byte
		for _, v := range []uint16{id, flags, qd, an, ns, ar} {
			h = binary.BigEndian.AppendUint16(h, v)
		}
		return h
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	typeA := []byte{0, 1, 0, 1}
	notify := question("example.", dns.TypeSOA)
	notify.Opcode = dns.OpcodeNotify
	notify.Id = 0x1111
	notifyPkt, _ := notify.Pack()
	twoQ := question("www.example.", dns.TypeA)
	twoQ.Id = 0x2222
	twoQ.Question = append(twoQ.Question, dns.Question{Name: "x.example.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	twoQPkt, _ := twoQ.Pack()
	twoOPT := question("www.example.", dns.TypeA)
	twoOPT.Id = 0x3333
	twoOPT.SetEdns0(1232, false)
	twoOPT.Extra = append(twoOPT.Extra, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 512}})
	twoOPTPkt, _ := twoOPT.Pack()
	tests := []struct {
		name      string
		pkt       []byte
		wantRcode int // -1: no reply
		malformed bool
		wantRA    bool
	}{
		{"short packet", []byte{1, 2, 3, 4, 5}, -1, true, false},
		{"response bit set", cat(header(0x0101, 0x8000, 1, 0, 0, 0), []byte{3, 'w', 'w', 'w', 0}, typeA), -1, true, false},
		{"bad label length", cat(header(0x0202, 0x0100, 1, 0, 0, 0), []byte{0x41, 'x', 0}, typeA), dns.RcodeFormatError, true, false},
		{"compression loop", cat(header(0x0303, 0x0100, 1, 0, 0, 0), []byte{0xc0, 12}, typeA), dns.RcodeFormatError, true, false},
		{"label past the end", cat(header(0x0404, 0x0100, 1, 0, 0, 0), []byte{20, 'a', 'b'}), dns.RcodeFormatError, true, false},
		{"question cut short", cat(header(0x0505, 0x0100, 1, 0, 0, 0), []byte{1, 'a', 0, 0}), dns.RcodeFormatError, true, false},
		{"zero questions", header(0x0606, 0x0100, 0, 0, 0, 0), dns.RcodeFormatError, true, true},
		{"two questions", twoQPkt, dns.RcodeFormatError, true, true},
		{"two OPT records (RFC 6891 6.1.1)", twoOPTPkt, dns.RcodeFormatError, true, true},
		{"NOTIFY opcode: no recursion claimed", notifyPkt, dns.RcodeNotImplemented, false, false},
		{"AXFR", packQuery(t, 0x0707, "example.", dns.TypeAXFR), dns.RcodeRefused, false, true},
	}
	te := startEngine(t, nil)
	te.query(t, "udp", question("www.example.", dns.TypeA)) // cached: its reply comes inline, in order
	good := packQuery(t, 0x7777, "www.example.", dns.TypeA)
	wantMalformed := 0.0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := rawUDP(t, te.udp)
			for _, pkt := range [][]byte{tt.pkt, good} {
				if _, err := c.Write(pkt); err != nil {
					t.Fatal(err)
				}
			}
			var replies []*dns.Msg
			buf := make([]byte, 4096)
			for len(replies) == 0 || replies[len(replies)-1].Id != 0x7777 {
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("read: %v (replies so far %v)", err, replies)
				}
				m := new(dns.Msg)
				if err := m.Unpack(buf[:n]); err != nil {
					t.Fatalf("reply does not parse: %v", err)
				}
				replies = append(replies, m)
			}
			switch {
			case tt.wantRcode < 0 && len(replies) != 1:
				t.Fatalf("got a reply %v, want none", replies[0])
			case tt.wantRcode >= 0 && len(replies) != 2:
				t.Fatalf("got no reply, want %s", dns.RcodeToString[tt.wantRcode])
			case tt.wantRcode >= 0:
				r := replies[0]
				if r.Rcode != tt.wantRcode || r.Id != binary.BigEndian.Uint16(tt.pkt) || !r.Response {
					t.Fatalf("reply rcode %s ID %#x, want %s ID %#x", dns.RcodeToString[r.Rcode], r.Id,
						dns.RcodeToString[tt.wantRcode], binary.BigEndian.Uint16(tt.pkt))
				}
				if r.RecursionAvailable != tt.wantRA {
					t.Fatalf("reply RA %v, want %v", r.RecursionAvailable, tt.wantRA)
				}
			}
			if tt.malformed {
				wantMalformed++
			}
			if got := te.metricValue(t, "malformed_total", nil); got != wantMalformed {
				t.Fatalf("malformed_total = %v, want %v", got, wantMalformed)
			}
		})
	}
	if got := te.up.Total(); got != 1 {
		t.Fatalf("upstream calls %d, want only the first one", got)
	}
}

// FuzzServeRequest feeds arbitrary bytes to the request path (a hit or, through
// the fake upstream, a miss) and checks that it never panics, that any reply
// parses, carries the query's ID and fits the client's UDP limit.
func FuzzServeRequest(f *testing.F) {
	for _, seed := range [][]byte{
		packQuery(f, 1, "www.example.", dns.TypeA),
		packQuery(f, 2, "NX.example.", dns.TypeA),
		packQuery(f, 3, "big.example.", dns.TypeTXT),
		{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 41, 16, 0, 0, 0, 0x80, 0, 0, 0},
		{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1},
		{0, 1, 0x80},
	} {
		f.Add(seed)
	}
	e, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Upstream: newFakeUpstream(), StaleMax: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		r := new(request)
		reply, o := e.serve(pkt, nil, r, protoUDP, e.shared, e.nowNanos())
		switch o {
		case noReply:
			if len(pkt) >= headerLen && pkt[2]&flagQR == 0 {
				t.Fatalf("query %x dropped", pkt)
			}
			return
		case needsUpstream:
			if !e.admitMiss(r.client, e.shared) {
				t.Fatalf("miss of %x not admitted with nothing else in flight", pkt)
			}
			reply = e.answerMiss(r.detach(), protoUDP, e.shared)
		}
		var m dns.Msg
		if err := m.Unpack(reply); err != nil {
			t.Fatalf("reply %x to %x does not parse: %v", reply, pkt, err)
		}
		if m.Id != binary.BigEndian.Uint16(pkt) || !m.Response {
			t.Fatalf("reply ID %#x QR %v, want ID %#x and QR", m.Id, m.Response, binary.BigEndian.Uint16(pkt))
		}
		if limit := max(r.udpSize, minUDPReply); len(reply) > limit {
			t.Fatalf("UDP reply of %d bytes, limit %d", len(reply), limit)
		}
	})
}

// FuzzParseQueryAgreesWithMiekg is a differential fuzz of the hand-written
// parser: on every packet it takes the fast path for, miekg/dns must parse
// the same query (ID, name, type, class, EDNS, DO, payload size, CD) and the
// cache key must be the name lower-cased with type, class and flags.
func FuzzParseQueryAgreesWithMiekg(f *testing.F) {
	seed := func(m *dns.Msg) {
		pkt, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pkt)
	}
	seed(question("www.Example.", dns.TypeA))
	e := question("svc.ns.svc.cluster.local.", dns.TypeAAAA)
	e.SetEdns0(4096, true)
	e.CheckingDisabled = true
	seed(e)
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 41, 16, 0, 0, 0, 0x80, 0, 0, 0})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		var r request
		if parseQuery(pkt, &r) != parsedFast {
			return
		}
		var m dns.Msg
		if err := m.Unpack(pkt); err != nil {
			t.Fatalf("fast path took %x, miekg/dns refuses it: %v", pkt, err)
		}
		if len(m.Question) != 1 {
			t.Fatalf("fast path took %x with %d questions", pkt, len(m.Question))
		}
		q := m.Question[0]
		name, _, err := dns.UnpackDomainName(r.qname, 0)
		switch {
		case err != nil:
			t.Fatalf("fast path name %x does not unpack: %v", r.qname, err)
		case r.id != m.Id || name != q.Name || r.qtype != q.Qtype || r.qclass != q.Qclass:
			t.Fatalf("fast path %#x %s %d %d, miekg %#x %s %d %d", r.id, name, r.qtype, r.qclass, m.Id, q.Name, q.Qtype, q.Qclass)
		case r.checkingDisabled() != m.CheckingDisabled:
			t.Fatalf("CD %v, miekg %v", r.checkingDisabled(), m.CheckingDisabled)
		}
		opt := m.IsEdns0()
		if (opt != nil) != r.edns {
			t.Fatalf("EDNS %v, miekg finds OPT %v", r.edns, opt != nil)
		}
		if opt != nil && (opt.Do() != r.do || min(max(int(opt.UDPSize()), minUDPReply), maxUDPReply) != r.udpSize) {
			t.Fatalf("DO %v size %d, miekg DO %v size %d", r.do, r.udpSize, opt.Do(), opt.UDPSize())
		}
		// The key: miekg's name lower-cased (its escapes are ASCII), packed,
		// then type, class and the DO and CD flags.
		wantName := make([]byte, maxNameLen)
		n, err := dns.PackDomainName(strings.ToLower(q.Name), wantName, 0, nil, false)
		if err != nil {
			t.Fatalf("repack %s: %v", q.Name, err)
		}
		flags := byte(0)
		if r.do {
			flags |= keyFlagDO
		}
		if m.CheckingDisabled {
			flags |= keyFlagCD
		}
		wantKey := append(wantName[:n], byte(q.Qtype>>8), byte(q.Qtype), byte(q.Qclass>>8), byte(q.Qclass), flags)
		if !bytes.Equal(r.key, wantKey) {
			t.Fatalf("key %x for %s, want %x", r.key, q.Name, wantKey)
		}
	})
}

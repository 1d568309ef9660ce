package dnsengine

import (
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestMissesLimitedPerClient: a client at its share of misses in flight gets
// SERVFAIL for its next one (its resolver moves on), while another client's
// misses are still resolved.
func TestMissesLimitedPerClient(t *testing.T) {
	t.Parallel()
	te := startEngine(t, func(c *Config) { c.MaxInflightMissesPerClient = 1 })
	gate, called := make(chan struct{}), make(chan string, 4)
	te.up.Hold(gate, called)
	first := make(chan *dns.Msg, 1)
	go func() {
		c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
		resp, _, err := c.Exchange(question("held.example.", dns.TypeA), te.udp)
		if err != nil {
			t.Errorf("held query: %v", err)
		}
		first <- resp
	}()
	receive(t, called, "upstream call") // 127.0.0.1 holds its one place

	if resp := te.query(t, "udp", question("second.example.", dns.TypeA)); resp.Rcode != dns.RcodeServerFailure {
		t.Fatalf("second miss of the same client: rcode %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	if got := te.metricValue(t, "client_limited_total", map[string]string{"limit": "inflight_misses"}); got != 1 {
		t.Fatalf("client_limited_total{limit=inflight_misses} = %v, want 1", got)
	}

	other := make(chan *dns.Msg, 1)
	go func() { other <- queryFrom(t, "127.0.0.2", te.udp, question("other.example.", dns.TypeA)) }()
	receive(t, called, "upstream call of the other client")
	close(gate)
	if resp := receive(t, other, "other client's reply"); resp == nil || resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("another client's miss: %v, want an answer", resp)
	}
	if resp := receive(t, first, "held reply"); resp == nil || resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("held query: %v", resp)
	}
}

// queryFrom asks addr over UDP from the local address ip.
func queryFrom(t testing.TB, ip, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(ip)}}}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Errorf("query from %s: %v", ip, err)
		return nil
	}
	return resp
}

// TestTCPConnectionsLimitedPerClient: a client's connections beyond its share
// are closed at once; another client still connects and is answered.
func TestTCPConnectionsLimitedPerClient(t *testing.T) {
	t.Parallel()
	te := startEngine(t, func(c *Config) { c.MaxTCPConnsPerClient = 2 })
	te.query(t, "udp", question("www.example.", dns.TypeA))
	for range 2 {
		c, err := net.Dial("tcp", te.tcp)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// A query answered proves the engine tracks the connection.
		if m := exchangeOn(t, c, question("www.example.", dns.TypeA)); m == nil || m.Rcode != dns.RcodeSuccess {
			t.Fatalf("query on an admitted connection: %v", m)
		}
	}
	third, err := net.Dial("tcp", te.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	_ = third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := third.Read(make([]byte, 1)); err == nil {
		t.Fatal("third connection of one client was served, want it closed")
	}
	if got := te.metricValue(t, "client_limited_total", map[string]string{"limit": "tcp_connections"}); got != 1 {
		t.Fatalf("client_limited_total{limit=tcp_connections} = %v, want 1", got)
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}
	c, err := d.Dial("tcp", te.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if m := exchangeOn(t, c, question("www.example.", dns.TypeA)); m == nil || m.Rcode != dns.RcodeSuccess {
		t.Fatalf("another client's connection: %v", m)
	}
}

// exchangeOn sends m on a TCP connection and reads one reply.
func exchangeOn(t testing.TB, c net.Conn, m *dns.Msg) *dns.Msg {
	t.Helper()
	dc := &dns.Conn{Conn: c}
	if err := dc.WriteMsg(m); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := dc.ReadMsg()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return resp
}

// TestTCPBufferGrowsWithWhatArrives: a length prefix promising 64 KiB
// followed by a few bytes reserves room for those bytes, not for 64 KiB.
func TestTCPBufferGrowsWithWhatArrives(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		client.Write([]byte("just a few bytes"))
		client.Close()
	}()
	buf, err := readMessage(server, nil, 0xffff)
	if err == nil {
		t.Fatal("readMessage of a cut message succeeded")
	}
	if string(buf) != "just a few bytes" || cap(buf) > tcpFirstRead {
		t.Fatalf("read %q into a buffer of capacity %d, want the bytes sent in at most %d", buf, cap(buf), tcpFirstRead)
	}

	// A whole message arrives intact however it is split.
	msg := make([]byte, 3000)
	for i := range msg {
		msg[i] = byte(i)
	}
	client, server = net.Pipe()
	go func() {
		for off := 0; off < len(msg); off += 700 {
			client.Write(msg[off:min(off+700, len(msg))])
		}
	}()
	buf, err = readMessage(server, buf, len(msg))
	if err != nil || string(buf) != string(msg) {
		t.Fatalf("readMessage of a split 3000-byte message: %d bytes, %v", len(buf), err)
	}
}

// TestLargeAnswersServedNotCached: an answer over MaxCachedAnswer reaches the
// client but is not kept; one that packs to over 64 KiB is neither cached nor
// corrupted (TTL offsets are 16-bit), and over TCP comes truncated.
func TestLargeAnswersServedNotCached(t *testing.T) {
	t.Parallel()
	te := startEngine(t, func(c *Config) { c.MaxCachedAnswer = 1000 })
	for range 2 {
		resp := te.query(t, "tcp", question("big.example.", dns.TypeTXT))
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 20 {
			t.Fatalf("big answer: rcode %s, %d records, want 20", dns.RcodeToString[resp.Rcode], len(resp.Answer))
		}
	}
	if got := te.up.Calls("big.example.", dns.TypeTXT, false); got != 2 {
		t.Fatalf("upstream calls for the big answer %d, want 2 (not cached)", got)
	}
	if got := te.metricValue(t, "cache_too_large_total", nil); got != 2 {
		t.Fatalf("cache_too_large_total = %v, want 2", got)
	}
	if n, _ := te.cache.size(); n != 0 {
		t.Fatalf("cache holds %d entries, want 0", n)
	}

	full := startEngine(t, func(c *Config) { c.MaxCachedAnswer = dns.MaxMsgSize })
	resp := full.query(t, "tcp", question("huge.example.", dns.TypeTXT))
	if !resp.Truncated || len(resp.Answer) == 0 {
		t.Fatalf("over-64-KiB answer over TCP: TC %v with %d records, want truncated with the records that fit", resp.Truncated, len(resp.Answer))
	}
	for _, rr := range resp.Answer {
		txt, ok := rr.(*dns.TXT)
		if !ok || rr.Header().Ttl != 20 || len(txt.Txt) != 1 || len(txt.Txt[0]) != 250 {
			t.Fatalf("record corrupted: %v", rr)
		}
	}
	if n, _ := full.cache.size(); n != 0 {
		t.Fatalf("over-64-KiB answer cached (%d entries)", n)
	}
}

// TestTCPPartialMessageTimesOut: once a length prefix arrived, the rest of
// the message must follow within tcpMessageTimeout, or the connection is
// closed: a client cannot hold one with a partial query.
func TestTCPPartialMessageTimesOut(t *testing.T) {
	t.Parallel()
	te := startEngine(t, func(c *Config) { c.TCPIdleTimeout = time.Hour })
	c, err := net.Dial("tcp", te.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var prefix [2]byte
	binary.BigEndian.PutUint16(prefix[:], 0xffff)
	if _, err := c.Write(prefix[:]); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection with a partial message got data, want it closed")
	}
}

package dnstest

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Reply is one reply Pipeline read, and when it came.
type Reply struct {
	*dns.Msg
	After time.Duration // since the queries were written
}

// Pipeline sends an A query for each name (IDs 1, 2, ...) on one connection
// to addr, all at once — over TCP in a single write, so every query waits in
// the server's socket buffer before the first is answered — and returns the
// replies in the order they arrived. It fails the test unless every query is
// answered within 10 s.
func Pipeline(t testing.TB, network string, addr netip.AddrPort, names []string) []Reply {
	t.Helper()
	conn, err := dns.Dial(network, addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var tcpBatch []byte
	var udpBatch [][]byte
	for i, name := range names {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		q.Id = uint16(i + 1)
		wire, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		tcpBatch = append(append(tcpBatch, byte(len(wire)>>8), byte(len(wire))), wire...)
		udpBatch = append(udpBatch, wire)
	}
	start := time.Now()
	if network == "tcp" {
		_, err = conn.Conn.Write(tcpBatch)
	} else {
		for _, wire := range udpBatch {
			if _, err = conn.Write(wire); err != nil {
				break
			}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(start.Add(10 * time.Second))
	var replies []Reply
	for range names {
		r, err := conn.ReadMsg()
		if err != nil {
			t.Fatalf("after %d replies: %v", len(replies), err)
		}
		replies = append(replies, Reply{Msg: r, After: time.Since(start)})
	}
	return replies
}

// Names returns the question name of each reply, in order.
func Names(replies []Reply) []string {
	names := make([]string, len(replies))
	for i, r := range replies {
		names[i] = r.Question[0].Name
	}
	return names
}

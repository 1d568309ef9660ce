package forward

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzTCPReplyStream feeds arbitrary bytes to one query's exchange as the
// server's side of the connection, then closes it: the exchange must never
// panic or hang, and a reply it returns must carry the query's ID and answer
// its question.
func FuzzTCPReplyStream(f *testing.F) {
	q := query("fuzz.example.")
	wire, err := q.Pack()
	if err != nil {
		f.Fatal(err)
	}
	frame := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
	}
	good := new(dns.Msg)
	good.SetReply(q)
	other := new(dns.Msg)
	other.SetQuestion("other.example.", dns.TypeA)
	other.Response = true
	f.Add(frame(good))
	f.Add(append(frame(other), frame(good)...))
	f.Add([]byte{0, 2, 0})
	f.Add([]byte{0xff, 0xff, 1, 2, 3})
	m, err := newMetrics(nil, "")
	if err != nil {
		f.Fatal(err)
	}
	sm := m.forServer("127.0.0.1:53")
	f.Fuzz(func(t *testing.T, stream []byte) {
		client, server := net.Pipe()
		go func() {
			buf := make([]byte, 2+len(wire))
			_, _ = server.Read(buf) // the query: its ID is the connection's first
			id := binary.BigEndian.Uint16(buf[2:])
			s := append([]byte(nil), stream...)
			if len(s) >= 4 {
				binary.BigEndian.PutUint16(s[2:], id) // let some streams answer the query's ID
			}
			_, _ = server.Write(s)
			server.Close()
		}()
		c := &tcpConn{nc: client, nextID: 7}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := c.roundTrip(ctx, wire, &q.Question[0], sm)
		client.Close()
		if err != nil {
			return
		}
		if resp.Id != 7 || !matches(&q.Question[0], resp) {
			t.Fatalf("reply %v accepted for query ID 7 %s", resp, q.Question[0].Name)
		}
	})
}

package forward

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// closeAfter is how a limitedUpstream ends a connection once it has answered
// its quota of queries.
type closeAfter string

const (
	// miekgLimit is miekg/dns's own Server with MaxTCPQueries: it stops
	// reading and closes, so pipelined queries it never read make the
	// kernel reset the connection.
	miekgLimit closeAfter = "miekg MaxTCPQueries"
	// finLimit half-closes (FIN) after the quota, as RFC 7766 asks of a
	// server that closes, and discards what it has not read.
	finLimit closeAfter = "FIN"
	// rstLimit aborts the connection (RST) right after the quota.
	rstLimit closeAfter = "RST"
)

// limitedUpstream is a TCP upstream that answers perQuery queries on each
// connection and then closes it the given way, like servers with a
// per-connection query limit. It counts accepted connections.
type limitedUpstream struct {
	addr     string
	perConn  int
	accepted atomic.Int64
}

func startLimitedUpstream(t *testing.T, how closeAfter, perConn int) *limitedUpstream {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	u := &limitedUpstream{addr: l.Addr().String(), perConn: perConn}
	counted := countingListener{l, &u.accepted}
	if how == miekgLimit {
		mux := dns.NewServeMux()
		mux.HandleFunc(".", answer)
		srv := &dns.Server{Listener: counted, Handler: mux, MaxTCPQueries: perConn}
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		failed := make(chan error, 1)
		go func() { failed <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-failed:
			t.Fatalf("serve: %v", err)
		}
		t.Cleanup(func() { _ = srv.Shutdown() })
		return u
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := counted.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { u.serveRaw(t, c.(*net.TCPConn), how) })
		}
	})
	return u
}

// serveRaw answers u.perConn queries on c, one at a time, then closes c.
func (u *limitedUpstream) serveRaw(t *testing.T, c *net.TCPConn, how closeAfter) {
	defer c.Close()
	r := bufio.NewReader(c)
	frame := make([]byte, dns.MaxMsgSize)
	for range u.perConn {
		if _, err := io.ReadFull(r, frame[:2]); err != nil {
			return
		}
		n := binary.BigEndian.Uint16(frame)
		if _, err := io.ReadFull(r, frame[:n]); err != nil {
			return
		}
		req := new(dns.Msg)
		if err := req.Unpack(frame[:n]); err != nil {
			t.Errorf("fake upstream: unpack query: %v", err)
			return
		}
		reply := new(dns.Msg)
		reply.SetReply(req)
		reply.Answer = append(reply.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
			A:   fakeAnswerIP,
		})
		wire, err := reply.Pack()
		if err != nil {
			t.Errorf("fake upstream: pack reply: %v", err)
			return
		}
		out := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(wire)), uint16(len(wire)))
		if _, err := c.Write(append(out, wire...)); err != nil {
			return
		}
	}
	switch how {
	case finLimit:
		_ = c.CloseWrite()
		_, _ = io.Copy(io.Discard, r) // until the client closes its side
	case rstLimit:
		_ = c.SetLinger(0)
	}
}

// TestTCPServerClosesAfterQueryLimit pipelines many distinct queries to a
// server that closes every connection after a few of them: every query that
// was written but not answered on a closed connection must be sent again on
// another one, and none may fail, nor may the server be marked down.
func TestTCPServerClosesAfterQueryLimit(t *testing.T) {
	const queries = 500
	tests := []struct {
		how     closeAfter
		perConn int
	}{
		{miekgLimit, 8},
		{finLimit, 8},
		{rstLimit, 8},
		{miekgLimit, 128}, // miekg/dns's default
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.how, tt.perConn), func(t *testing.T) {
			up := startLimitedUpstream(t, tt.how, tt.perConn)
			f, reg := newTestForwarder(t, Config{
				Zones:             []Zone{{Name: ".", Servers: []Server{{Addr: up.addr, Timeout: time.Minute}}}}, // no timing in this test
				MaxConnsPerServer: 2,
				MaxFails:          1, // any failure charged to the server marks it down
			})
			var wg sync.WaitGroup
			for i := range queries {
				wg.Go(func() { mustAnswer(t, f, fmt.Sprintf("q%d.limit.test.", i)) })
			}
			wg.Wait()

			if minConns := int64(queries / tt.perConn); up.accepted.Load() < minConns {
				t.Errorf("server accepted %d connections, want at least %d: the limit was not exercised", up.accepted.Load(), minConns)
			}
			u := upstreamOf(t, f, up.addr)
			if u.health.isDown() {
				t.Errorf("server marked down for closing connections after %d queries", tt.perConn)
			}
			if limit := u.pool.queryLimit.Load(); limit < 1 || int(limit) > tt.perConn {
				t.Errorf("learnt %d queries per connection, want 1..%d", limit, tt.perConn)
			}
			for _, r := range []reason{reasonTimeout, reasonRefused, reasonMismatch, reasonServfail, reasonOther} {
				if n := errorCount(t, reg, up.addr, r); n != 0 {
					t.Errorf("upstream_errors_total{reason=%q} = %v, want 0", r, n)
				}
			}
		})
	}
}

// TestTCPResendsBounded checks that a server closing every connection without
// answering is not dialed in a loop: the query fails after maxResends resends.
func TestTCPResendsBounded(t *testing.T) {
	tests := []struct {
		how   closeAfter
		exact bool // false: the RST may already fail the dial, which ends the attempt
	}{
		{finLimit, true},
		{rstLimit, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.how), func(t *testing.T) {
			up := startLimitedUpstream(t, tt.how, 0)
			f, _ := newTestForwarder(t, Config{
				Zones:    []Zone{{Name: ".", Servers: []Server{{Addr: up.addr}}}},
				MaxFails: 2, // one failure must not start probes, which would dial too
			})
			_, err := f.Exchange(context.Background(), query("never.limit.test."))
			if err == nil || classify(err) != reasonClosed {
				t.Fatalf("Exchange: %v, want a closed connection", err)
			}
			got := up.accepted.Load()
			if got > 1+maxResends || (tt.exact && got != 1+maxResends) {
				t.Errorf("server accepted %d connections, want %d (one send and %d resends)", got, 1+maxResends, maxResends)
			}
		})
	}
}

// TestTCPLearntLimitForgotten checks that connections retired at a learnt
// per-connection limit are closed once answered, and that the limit is
// forgotten after relearnAfter connections reached it, so that a limit the
// server does not have (any more) does not keep the pool redialing.
func TestTCPLearntLimitForgotten(t *testing.T) {
	const limit = 2
	up := startFake(t) // no per-connection limit
	f, _ := newTestForwarder(t, Config{
		Zones:       []Zone{{Name: ".", Servers: []Server{{Addr: up.addr}}}},
		IdleTimeout: time.Hour, // only retirement closes connections here
	})
	pool := upstreamOf(t, f, up.addr).pool
	pool.learnQueryLimit(limit) // as if a restart had closed a connection after 2 queries
	next := 0
	queries := func(n int) {
		for range n {
			mustAnswer(t, f, fmt.Sprintf("q%d.limit.test.", next))
			next++
		}
	}

	queries(limit * (relearnAfter - 1))
	if got := up.accepted.Load(); got != relearnAfter-1 {
		t.Errorf("%d queries used %d connections, want %d at %d queries each", next, got, relearnAfter-1, limit)
	}
	eventually(t, "the retired connections to close", func() bool { return pool.size() == 0 })

	queries(limit) // one more connection reaches the limit
	if got := pool.queryLimit.Load(); got != 0 {
		t.Errorf("limit %d still applies after %d connections retired at it", got, relearnAfter)
	}
	queries(1)
	if got := up.accepted.Load(); got != relearnAfter {
		t.Errorf("a query after the limit was forgotten dialed again (%d connections, want %d)", got, relearnAfter)
	}
}

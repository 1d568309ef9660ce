package forward

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/dnstest"
	"github.com/localdns/localdns/internal/testutil"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// probeName is what test forwarders probe, so fakes can tell probes from queries.
const probeName = "probe.test."

// seen is one query as a fake received it.
type seen struct {
	transport string // "udp" or "tcp"
	remote    string
	id        uint16
	name      string
	probe     bool
}

// behaviour answers one query; it may write nothing, several replies, or close.
type behaviour func(w dns.ResponseWriter, r *dns.Msg)

// fake is an upstream DNS server (see dnstest.Fake) whose behaviour can be
// swapped while it runs; it records the queries it receives and counts the TCP
// connections it accepts.
type fake struct {
	*dnstest.Fake
	addr     string       // as a Server spells it
	accepted atomic.Int64 // TCP connections accepted
	behave   atomic.Pointer[behaviour]

	mu      sync.Mutex
	queries []seen
}

// startFake starts a fake that answers every query. Its TCP side keeps
// connections open however many queries they carry and however long they idle,
// so tests decide when connections end.
func startFake(t testing.TB) *fake {
	t.Helper()
	f := &fake{}
	f.setBehaviour(answer)
	idle := func() time.Duration { return time.Hour }
	f.Fake = dnstest.Start(t, dnstest.Config{
		Handler: f.handle,
		TuneTCP: func(s *dns.Server) {
			s.Listener = countingListener{s.Listener, &f.accepted}
			s.MaxTCPQueries = -1
			s.IdleTimeout = idle
		},
	})
	f.addr = f.Addr().String()
	return f
}

func (f *fake) setBehaviour(b behaviour) { f.behave.Store(&b) }

func (f *fake) handle(w dns.ResponseWriter, r *dns.Msg) {
	s := seen{transport: w.LocalAddr().Network(), remote: w.RemoteAddr().String(), id: r.Id}
	if len(r.Question) > 0 {
		s.name = r.Question[0].Name
		s.probe = s.name == probeName
	}
	f.mu.Lock()
	f.queries = append(f.queries, s)
	f.mu.Unlock()
	(*f.behave.Load())(w, r)
}

// seenQueries returns the non-probe queries received so far.
func (f *fake) seenQueries() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []seen
	for _, s := range f.queries {
		if !s.probe {
			out = append(out, s)
		}
	}
	return out
}

// transports returns the transport of each non-probe query, in order.
func (f *fake) transports() []string {
	var out []string
	for _, s := range f.seenQueries() {
		out = append(out, s.transport)
	}
	return out
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// fakeAnswerIP is the A record every answering fake returns.
var fakeAnswerIP = net.IPv4(192, 0, 2, 1)

// answer replies with one A record for the question's name.
func answer(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	if r.Question[0].Qtype == dns.TypeA {
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
			A:   fakeAnswerIP,
		})
	}
	_ = w.WriteMsg(m)
}

// rcode returns a behaviour that replies with an empty message with that RCODE.
func rcode(code int) behaviour {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, code)
		_ = w.WriteMsg(m)
	}
}

// silent never replies.
func silent(dns.ResponseWriter, *dns.Msg) {}

// silentExceptProbes answers the forwarder's probes only: a server alive but
// slow on every other name.
func silentExceptProbes(w dns.ResponseWriter, r *dns.Msg) {
	if r.Question[0].Name == probeName {
		answer(w, r)
	}
}

// overTCP uses tcp for TCP queries and udp for UDP ones.
func overTCP(tcp, udp behaviour) behaviour {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		if w.LocalAddr().Network() == "tcp" {
			tcp(w, r)
			return
		}
		udp(w, r)
	}
}

// truncated replies with TC set and no answer.
func truncated(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Truncated = true
	_ = w.WriteMsg(m)
}

// mismatchedFirst sends a reply with a wrong ID and one with a wrong
// question before the right reply.
func mismatchedFirst(w dns.ResponseWriter, r *dns.Msg) {
	wrongID := new(dns.Msg)
	wrongID.SetReply(r)
	wrongID.Id = r.Id + 1
	_ = w.WriteMsg(wrongID)

	wrongQuestion := new(dns.Msg)
	wrongQuestion.SetReply(r)
	wrongQuestion.Question[0].Name = "other." + r.Question[0].Name
	_ = w.WriteMsg(wrongQuestion)

	answer(w, r)
}

// malformedFirst sends a reply that cannot be parsed (the query's ID, then a
// header claiming records that are missing) before the right reply.
func malformedFirst(w dns.ResponseWriter, r *dns.Msg) {
	garbage := []byte{byte(r.Id >> 8), byte(r.Id), 0x81, 0x80, 0, 1, 0, 3, 0, 0, 0, 0, 0xff}
	_, _ = w.Write(garbage)
	answer(w, r)
}

// closedPort returns a loopback address where nothing listens on UDP or TCP.
func closedPort(t *testing.T) string {
	t.Helper()
	pc, l := dnstest.ListenBoth(t)
	pc.Close()
	l.Close()
	return pc.LocalAddr().String()
}

// newTestForwarder builds a Forwarder with metrics on a fresh registry and
// closes it at the end of the test.
func newTestForwarder(t testing.TB, cfg Config) (*Forwarder, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	cfg.Namespace = "test"
	if cfg.ProbeName == "" {
		cfg.ProbeName = probeName
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f, reg
}

// query builds an A query for name with a fixed ID, so tests can check that
// replies carry the caller's ID.
func query(name string) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = 0xbeef
	return m
}

// mustAnswer runs one query that must succeed with the fake's answer. It only
// reports errors (t.Errorf), so it may run in other goroutines.
func mustAnswer(t testing.TB, f *Forwarder, name string) {
	t.Helper()
	req := query(name)
	resp, err := f.Exchange(context.Background(), req)
	if err != nil {
		t.Errorf("Exchange(%s): %v", name, err)
		return
	}
	checkAnswer(t, req, resp)
}

// checkAnswer reports (t.Errorf) unless resp is the fake's answer to req.
func checkAnswer(t testing.TB, req, resp *dns.Msg) {
	t.Helper()
	if resp.Id != req.Id {
		t.Errorf("reply ID %#x, want the caller's %#x", resp.Id, req.Id)
	}
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("reply for %s: rcode %s, %d answers; want NOERROR with 1 answer", req.Question[0].Name, dns.RcodeToString[resp.Rcode], len(resp.Answer))
		return
	}
	if got := resp.Answer[0].Header().Name; got != req.Question[0].Name {
		t.Errorf("answer owner %q, want %q", got, req.Question[0].Name)
	}
}

func errorCount(t testing.TB, reg *prometheus.Registry, server string, r reason) float64 {
	t.Helper()
	return testutil.MetricValue(t, reg, "test_upstream_errors_total", map[string]string{"server": server, "reason": r.String()})
}

// upstreamOf returns the forwarder's state for addr.
func upstreamOf(t *testing.T, f *Forwarder, addr string) *upstream {
	t.Helper()
	for _, u := range f.upstreams {
		if u.addr == addr {
			return u
		}
	}
	t.Fatalf("no upstream %s", addr)
	return nil
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// startEchoResponder serves UDP and TCP on one 127.0.0.1 port and answers
// every query with itself marked as a response: a NOERROR reply with no
// records, built without parsing or allocating, so benchmarks measure the client.
func startEchoResponder(t testing.TB) string {
	t.Helper()
	pc, l := dnstest.ListenBoth(t)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		pc.Close()
		l.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, dns.MaxMsgSize)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n >= 12 {
				buf[2] |= 0x80 // QR
				_, _ = pc.WriteTo(buf[:n], from)
			}
		}
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { echoTCP(c) })
		}
	})
	return pc.LocalAddr().String()
}

// echoTCP answers length-prefixed queries on c until it closes.
func echoTCP(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	frame := make([]byte, 2+dns.MaxMsgSize)
	for {
		if _, err := io.ReadFull(r, frame[:2]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(frame))
		if _, err := io.ReadFull(r, frame[2:2+n]); err != nil || n < 12 {
			return
		}
		frame[4] |= 0x80 // QR
		if _, err := w.Write(frame[:2+n]); err != nil {
			return
		}
		if r.Buffered() == 0 { // flush once the pipelined batch is answered
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

package dnstest

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// replyEmpty answers every query with an empty NOERROR reply.
func replyEmpty(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	_ = w.WriteMsg(m)
}

// exchange sends one query for name to f over network.
func exchange(f *Fake, network, name string) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: 10 * time.Second}
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	r, _, err := c.Exchange(q, f.Addr().String())
	return r, err
}

// TestStopRestart checks, over each transport, that a fake answers, refuses
// once stopped (twice: Stop is idempotent), and answers again on the same
// address after Restart, with its TCP server tuned at every start.
func TestStopRestart(t *testing.T) {
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			tuned := 0
			f := Start(t, Config{Handler: replyEmpty, TuneTCP: func(*dns.Server) { tuned++ }})
			if !f.Addr().Addr().IsLoopback() || f.Addr().Port() >= 30000 {
				t.Fatalf("address %s: want 127/8 and a port below the ephemeral range", f.Addr())
			}
			addr := f.Addr()

			if r, err := exchange(f, network, "before.test."); err != nil || r.Rcode != dns.RcodeSuccess {
				t.Fatalf("before Stop: reply %v, error %v; want NOERROR", r, err)
			}
			f.Stop()
			f.Stop()
			if _, err := exchange(f, network, "stopped.test."); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("after Stop: error %v, want connection refused", err)
			}
			f.Restart()
			if f.Addr() != addr {
				t.Fatalf("restarted on %s, want %s", f.Addr(), addr)
			}
			if r, err := exchange(f, network, "after.test."); err != nil || r.Rcode != dns.RcodeSuccess {
				t.Fatalf("after Restart: reply %v, error %v; want NOERROR", r, err)
			}
			if tuned != 2 {
				t.Errorf("TuneTCP ran %d times, want 2 (start and restart)", tuned)
			}
		})
	}
}

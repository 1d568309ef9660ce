package dnstest

import (
	"errors"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/kubednsfake"
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
	for _, tc := range []struct {
		network string
		ipv6    bool
	}{{"udp", false}, {"tcp", false}, {"udp", true}, {"tcp", true}} {
		name := tc.network
		if tc.ipv6 {
			name += "6"
		}
		t.Run(name, func(t *testing.T) {
			network := tc.network
			tuned := 0
			f := Start(t, Config{Handler: replyEmpty, TuneTCP: func(*dns.Server) { tuned++ }, IPv6: tc.ipv6})
			if !f.Addr().Addr().IsLoopback() || f.Addr().Addr().Is6() != tc.ipv6 || f.Addr().Port() >= 30000 {
				t.Fatalf("address %s: want loopback of the family (IPv6 %v) and a port below the ephemeral range", f.Addr(), tc.ipv6)
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

// kubeDNS starts a fake kube-dns: the cluster zone answered at once, slow.test
// after latency, counted by an InFlight.
func kubeDNS(t *testing.T, latency time.Duration, cfg Config) (*Fake, *InFlight) {
	t.Helper()
	cluster, err := kubednsfake.NewClusterZone("cluster.local", 10, kubednsfake.ClusterTTL)
	if err != nil {
		t.Fatal(err)
	}
	h, err := kubednsfake.New(kubednsfake.Config{
		Cluster:  cluster,
		External: []kubednsfake.ExternalZone{{Name: "slow.test", Latency: kubednsfake.Fixed(latency)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	inFlight := &InFlight{}
	cfg.Handler = inFlight.Wrap(h.ServeDNS)
	return Start(t, cfg), inFlight
}

// TestTCPConnectionServedSerially pipelines slow and fast queries on one TCP
// connection: like CoreDNS, the fake answers them one at a time, in the order
// sent, so each fast cluster name waits for the slow names before it, and the
// handler never holds two queries of the connection at once.
func TestTCPConnectionServedSerially(t *testing.T) {
	f, inFlight := kubeDNS(t, 100*time.Millisecond, Config{})
	sent := []string{"a.slow.test.", "svc-1.default.svc.cluster.local.", "b.slow.test.", "svc-2.default.svc.cluster.local.", "c.slow.test."}
	got := Names(Pipeline(t, "tcp", f.Addr(), sent))
	if !slices.Equal(got, sent) {
		t.Errorf("replies in the order %v, want the order sent %v (one at a time)", got, sent)
	}
	if n := inFlight.PeakPerConn(); n != 1 {
		t.Errorf("the handler held %d queries of one connection at once, want 1", n)
	}
}

// TestInFlightSeesUDPConcurrency is the counterpart: over UDP the server
// handles each packet in its own goroutine, so queries from one socket are
// in the handler together, and InFlight counts them.
func TestInFlightSeesUDPConcurrency(t *testing.T) {
	release := make(chan struct{})
	inFlight := &InFlight{}
	f := Start(t, Config{Handler: inFlight.Wrap(func(w dns.ResponseWriter, r *dns.Msg) {
		<-release
		replyEmpty(w, r)
	})})
	done := make(chan []string)
	go func() { done <- Names(Pipeline(t, "udp", f.Addr(), []string{"a.test.", "b.test.", "c.test."})) }()
	deadline := time.Now().Add(10 * time.Second)
	for inFlight.PeakPerConn() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling for the state, not a guessed wait
	}
	close(release)
	<-done
	if n, all := inFlight.PeakPerConn(), inFlight.Peak(); n != 3 || all != 3 {
		t.Errorf("peak per connection %d, in all %d; want 3 and 3", n, all)
	}
}

// TestLameduck: after Stop the fake keeps answering, new and open
// connections alike, until its lameduck ends; then the address refuses and
// the open connection is closed. Restart serves again.
func TestLameduck(t *testing.T) {
	f, _ := kubeDNS(t, 0, Config{Lameduck: time.Second})
	open, err := dns.Dial("tcp", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	ask := func(c *dns.Conn) error {
		q := new(dns.Msg)
		q.SetQuestion("svc-1.default.svc.cluster.local.", dns.TypeA)
		if err := c.WriteMsg(q); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		r, err := c.ReadMsg()
		if err == nil && len(r.Answer) != 1 {
			err = errors.New("no answer")
		}
		return err
	}
	if err := ask(open); err != nil {
		t.Fatalf("before Stop: %v", err)
	}

	f.Stop()
	select {
	case <-f.Stopped():
		t.Fatal("stopped at once, want a lameduck")
	default:
	}
	for _, network := range []string{"udp", "tcp"} {
		if r, err := exchange(f, network, "svc-2.default.svc.cluster.local."); err != nil || len(r.Answer) != 1 {
			t.Errorf("during the lameduck over %s: reply %v, error %v; want an answer", network, r, err)
		}
	}
	if err := ask(open); err != nil {
		t.Errorf("during the lameduck on the open connection: %v", err)
	}

	<-f.Stopped()
	if _, err := exchange(f, "tcp", "after.test."); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after the lameduck: error %v, want connection refused", err)
	}
	if err := ask(open); err == nil {
		t.Error("the open connection still answers after the lameduck")
	}
	f.Restart()
	if r, err := exchange(f, "udp", "svc-3.default.svc.cluster.local."); err != nil || len(r.Answer) != 1 {
		t.Errorf("after Restart: reply %v, error %v", r, err)
	}
}

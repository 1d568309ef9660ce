package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/localdns/localdns/internal/kubednsfake"
	"github.com/miekg/dns"
)

// The clients' source addresses: the servers see them as different pods.
var (
	externalClients = []netip.Addr{ // the pods resolving external names
		netip.MustParseAddr("127.0.1.1"), netip.MustParseAddr("127.0.1.2"),
		netip.MustParseAddr("127.0.1.3"), netip.MustParseAddr("127.0.1.4"),
		netip.MustParseAddr("127.0.1.5"), netip.MustParseAddr("127.0.1.6"),
		netip.MustParseAddr("127.0.1.7"), netip.MustParseAddr("127.0.1.8"),
	}
	clusterClient = netip.MustParseAddr("127.0.2.1") // the pod whose cluster-name misses are timed
	hostileClient = netip.MustParseAddr("127.0.3.1") // the pod that misbehaves
)

// runID makes this run's names new to a server that saw an earlier run.
var runID = func() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}()

// Tally counts the replies to one kind of query.
type Tally struct {
	Sent    int            `json:"sent"`
	Rcodes  map[string]int `json:"rcodes"`   // replies by RCODE
	NoReply int            `json:"no_reply"` // no reply within the client's timeout
	Failed  int            `json:"failed"`   // the query could not be sent or its connection broke
	// Percentiles of the replies' latency, in milliseconds.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`

	mu        sync.Mutex
	latencies []time.Duration
}

func newTally() *Tally { return &Tally{Rcodes: map[string]int{}} }

// record counts one query: its reply (nil with err when none came) and the
// time it took.
func (t *Tally) record(reply *dns.Msg, rtt time.Duration, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.Sent++
	var netErr net.Error
	switch {
	case err == nil:
		t.Rcodes[dns.RcodeToString[reply.Rcode]]++
		t.latencies = append(t.latencies, rtt)
	case errors.As(err, &netErr) && netErr.Timeout():
		t.NoReply++
	default:
		t.Failed++
	}
}

// finish computes the percentiles.
func (t *Tally) finish() {
	t.mu.Lock()
	defer t.mu.Unlock()
	slices.Sort(t.latencies)
	ms := func(q float64) float64 {
		if len(t.latencies) == 0 {
			return 0
		}
		i := max(int(q*float64(len(t.latencies))+0.999999)-1, 0)
		return float64(t.latencies[i].Microseconds()) / 1000
	}
	t.P50Ms, t.P99Ms, t.MaxMs = ms(0.50), ms(0.99), ms(1)
}

func (t *Tally) String() string {
	return fmt.Sprintf("%d sent, rcodes %v, %d no reply, %d failed, p50 %.1f ms, p99 %.1f ms, max %.1f ms",
		t.Sent, t.Rcodes, t.NoReply, t.Failed, t.P50Ms, t.P99Ms, t.MaxMs)
}

// dial connects a client socket from src to server over network.
func dial(network string, src netip.Addr, server netip.AddrPort) (*dns.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if network == "udp" {
		d.LocalAddr = &net.UDPAddr{IP: src.AsSlice()}
	} else {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	c, err := d.Dial(network, server.String())
	if err != nil {
		return nil, err
	}
	return &dns.Conn{Conn: c, UDPSize: dns.MaxMsgSize}, nil
}

// ask sends one query for name on conn and waits up to timeout for its
// reply, skipping replies to other queries.
func ask(conn *dns.Conn, name string, qtype uint16, timeout time.Duration) (*dns.Msg, time.Duration, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	start := time.Now()
	_ = conn.SetDeadline(start.Add(timeout))
	if err := conn.WriteMsg(q); err != nil {
		return nil, 0, err
	}
	for {
		r, err := conn.ReadMsg()
		if err != nil {
			return nil, time.Since(start), err
		}
		if r.Id == q.Id && len(r.Question) == 1 && r.Question[0].Name == name {
			return r, time.Since(start), nil
		}
	}
}

// timeClusterNames asks a new cluster name (a miss) rate times a second
// from clusterClient, each from its own UDP socket as a pod's resolver does,
// until ctx ends; it returns once every query has its reply or timed out.
func timeClusterNames(ctx context.Context, server netip.AddrPort, rate int, timeout time.Duration, t *Tally) {
	var wg sync.WaitGroup
	defer wg.Wait()
	start, gap := time.Now(), time.Second/time.Duration(rate)
	wait := time.NewTimer(0)
	defer wait.Stop()
	for i := 0; ; i++ {
		// On a schedule rather than a ticker, which drops ticks when the
		// machine is busy: late queries go out at once.
		wait.Reset(time.Until(start.Add(time.Duration(i) * gap)))
		select {
		case <-ctx.Done():
			return
		case <-wait.C:
		}
		name := kubednsfake.ServiceName(i%services, clusterZone)
		wg.Go(func() {
			conn, err := dial("udp", clusterClient, server)
			if err != nil {
				t.record(nil, 0, err)
				return
			}
			defer conn.Close()
			t.record(ask(conn, name, dns.TypeA, timeout))
		})
	}
}

// peakRSS is the process's peak resident set (VmHWM), in KiB.
func peakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmHWM:" && f[2] == "kB" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// hostileConfig is one hostile client's load on the server.
type hostileConfig struct {
	server  netip.AddrPort
	load    hostileLoad
	count   int           // queries or connections
	limit   time.Duration // the longest the load may run
	hold    time.Duration // tcp, stuck: how long the load is held once sent
	timeout time.Duration // how long a client waits for a reply
}

var defaultHostile = hostileConfig{limit: 2 * time.Minute, hold: 10 * time.Second, timeout: 5 * time.Second}

// maxHostileCount bounds every hostile load's queries or connections.
const maxHostileCount = 200_000

// hostileLoad is one kind of misbehaving client.
type hostileLoad struct {
	name  string
	what  string // for the report; %d is the count
	count int    // default
	run   func(ctx context.Context, cfg hostileConfig, res *HostileResult)
}

var hostileLoads = []hostileLoad{
	{"big", "%d distinct big.test names, each a 60,000-byte TXT answer, 16 TCP connections", 3000, bigAnswers},
	{"flood", "%d unique cluster.local names (NXDOMAIN at once), 64 outstanding over UDP", 50000, uniqueNames},
	{"tcp", "%d TCP connections that send only a 2-byte length prefix (ff ff), held open", 1100, tcpFlood},
	{"stuck", "%d stuck.test names (never answered) sent within 1 s over UDP, then held", 10000, stuckMisses},
}

func hostileLoadNamed(name string) (hostileLoad, error) {
	for _, l := range hostileLoads {
		if l.name == name {
			return l, nil
		}
	}
	return hostileLoad{}, fmt.Errorf("no load %q (big, flood, tcp, stuck)", name)
}

// HostileResult is the server's peak RSS under one hostile load, with what
// the hostile client and another client got meanwhile.
type HostileResult struct {
	Kind       string    `json:"kind"` // "hostile"
	Load       string    `json:"load"`
	What       string    `json:"what"`
	Seconds    float64   `json:"seconds"`
	PeakRSSKiB int64     `json:"peak_rss_kib"`
	Hostile    *Tally    `json:"hostile"` // the hostile client's queries
	Other      *Tally    `json:"other"`   // another client's cluster-name misses meanwhile
	TCP        *TCPFlood `json:"tcp,omitempty"`
}

// TCPFlood is what became of the tcp load's connections.
type TCPFlood struct {
	Opened         int    `json:"opened"`
	DialFailed     int    `json:"dial_failed"`
	ClosedByServer int    `json:"closed_by_server"` // by the end of the hold
	OtherClientTCP string `json:"other_client_tcp"` // another client's TCP query during the hold: "answered" or the error
}

func (r *HostileResult) summary() string {
	s := fmt.Sprintf("%s: peak RSS %.1f MiB; hostile client: %v; other client's cluster names: %v",
		r.Load, float64(r.PeakRSSKiB)/1024, r.Hostile, r.Other)
	if r.TCP != nil {
		s += fmt.Sprintf("; tcp: %+v", *r.TCP)
	}
	return s
}

// runHostile runs cfg.load while another client's cluster-name misses are
// timed at 50/s, then reads pid's peak RSS.
func runHostile(ctx context.Context, cfg hostileConfig, pid int) (*HostileResult, error) {
	if cfg.count <= 0 || cfg.count > maxHostileCount {
		return nil, fmt.Errorf("-count %d is not in 1..%d", cfg.count, maxHostileCount)
	}
	if cfg.limit <= 0 || cfg.limit > maxDuration || cfg.hold < 0 || cfg.hold > cfg.limit || cfg.timeout <= 0 {
		return nil, fmt.Errorf("want 0 < -limit <= %v, 0 <= -hold <= -limit and a positive -timeout", maxDuration)
	}
	if _, err := peakRSS(pid); err != nil {
		return nil, err
	}
	res := &HostileResult{Kind: "hostile", Load: cfg.load.name, What: fmt.Sprintf(cfg.load.what, cfg.count),
		Hostile: newTally(), Other: newTally()}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cfg.limit)
	defer cancel()
	otherCtx, stopOther := context.WithCancel(ctx)
	var other sync.WaitGroup
	other.Go(func() { timeClusterNames(otherCtx, cfg.server, defaultLoad.clusterRate, cfg.timeout, res.Other) })
	cfg.load.run(ctx, cfg, res)
	stopOther()
	other.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Hostile.finish()
	res.Other.finish()
	var err error
	res.PeakRSSKiB, err = peakRSS(pid)
	return res, err
}

// forEach runs ask(n) for n in 1..count on workers goroutines, each with
// its own connection from the hostile client, until ctx ends.
func forEach(ctx context.Context, cfg hostileConfig, network string, workers int, ask func(conn *dns.Conn, n int64) (*dns.Msg, time.Duration, error), t *Tally) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var conn *dns.Conn
			defer func() {
				if conn != nil {
					conn.Close()
				}
			}()
			for n := next.Add(1); n <= int64(cfg.count) && ctx.Err() == nil; n = next.Add(1) {
				if conn == nil {
					var err error
					if conn, err = dial(network, hostileClient, cfg.server); err != nil {
						t.record(nil, 0, err)
						continue
					}
				}
				r, rtt, err := ask(conn, n)
				t.record(r, rtt, err)
				if err != nil && network == "tcp" { // the connection is out of step
					conn.Close()
					conn = nil
				}
			}
		})
	}
	wg.Wait()
}

func bigAnswers(ctx context.Context, cfg hostileConfig, res *HostileResult) {
	forEach(ctx, cfg, "tcp", 16, func(conn *dns.Conn, n int64) (*dns.Msg, time.Duration, error) {
		return ask(conn, fmt.Sprintf("b%d-%s.%s", n, runID, bigZone), dns.TypeTXT, cfg.timeout)
	}, res.Hostile)
}

func uniqueNames(ctx context.Context, cfg hostileConfig, res *HostileResult) {
	forEach(ctx, cfg, "udp", 64, func(conn *dns.Conn, n int64) (*dns.Msg, time.Duration, error) {
		return ask(conn, fmt.Sprintf("f%d-%s.flood.%s", n, runID, clusterZone), dns.TypeA, cfg.timeout)
	}, res.Hostile)
}

// stuckMisses sends every query within about a second from 8 sockets, then
// counts the replies (the server's SERVFAILs once it gives up) until the
// hold ends.
func stuckMisses(ctx context.Context, cfg hostileConfig, res *HostileResult) {
	const sockets = 8
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var sent atomic.Int64
	gap := time.Second * sockets / time.Duration(cfg.count)
	for s := range sockets {
		conn, err := dial("udp", hostileClient, cfg.server)
		if err != nil {
			res.Hostile.record(nil, 0, err)
			continue
		}
		defer conn.Close()
		wg.Go(func() { // replies
			for {
				_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				r, err := conn.ReadMsg()
				var netErr net.Error
				switch {
				case err == nil:
					res.Hostile.mu.Lock()
					res.Hostile.Rcodes[dns.RcodeToString[r.Rcode]]++
					res.Hostile.mu.Unlock()
				case errors.As(err, &netErr) && netErr.Timeout() && ctx.Err() == nil:
				default:
					return
				}
			}
		})
		wg.Go(func() { // queries
			tick := time.NewTicker(gap)
			defer tick.Stop()
			for n := s; n < cfg.count && ctx.Err() == nil; n += sockets {
				<-tick.C
				q := new(dns.Msg)
				q.SetQuestion(fmt.Sprintf("s%d-%s.%s", n, runID, stuckZone), dns.TypeA)
				if conn.WriteMsg(q) == nil {
					sent.Add(1)
				}
			}
		})
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Second + cfg.hold):
	}
	cancel()
	wg.Wait()
	t := res.Hostile
	t.Sent = int(sent.Load())
	answered := 0
	for _, n := range t.Rcodes {
		answered += n
	}
	t.NoReply = t.Sent - answered
}

// tcpFlood opens cfg.count connections that each send only a length prefix
// announcing a 65,535-byte query, holds them, asks one cluster name over a
// TCP connection of another client during the hold, and counts the
// connections the server closed by its end.
func tcpFlood(ctx context.Context, cfg hostileConfig, res *HostileResult) {
	flood := &TCPFlood{}
	res.TCP = flood
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: hostileClient.AsSlice()}}
	for range cfg.count {
		if ctx.Err() != nil {
			break
		}
		c, err := d.DialContext(ctx, "tcp", cfg.server.String())
		if err == nil {
			_, err = c.Write([]byte{0xff, 0xff})
		}
		if err != nil {
			flood.DialFailed++
			if c != nil {
				c.Close()
			}
			continue
		}
		conns = append(conns, c)
	}
	flood.Opened = len(conns)

	select {
	case <-ctx.Done():
	case <-time.After(cfg.hold / 2):
	}
	flood.OtherClientTCP = "answered"
	conn, err := dial("tcp", clusterClient, cfg.server)
	if err == nil {
		var r *dns.Msg
		r, _, err = ask(conn, kubeDNSProbeName, dns.TypeA, cfg.timeout)
		conn.Close()
		if err == nil && r.Rcode != dns.RcodeSuccess {
			err = fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
		}
	}
	if err != nil {
		flood.OtherClientTCP = err.Error()
	}
	select {
	case <-ctx.Done():
	case <-time.After(cfg.hold - cfg.hold/2):
	}

	// A connection the server still holds has nothing to read; one it
	// closed reads EOF or a reset.
	var closed atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			var netErr net.Error
			if _, err := c.Read(make([]byte, 1)); err != nil && !(errors.As(err, &netErr) && netErr.Timeout()) {
				closed.Add(1)
			}
		})
	}
	wg.Wait()
	flood.ClosedByServer = int(closed.Load())
}

// kubeDNSProbeName is a cluster name that always exists.
const kubeDNSProbeName = "kubernetes.default.svc." + clusterZone

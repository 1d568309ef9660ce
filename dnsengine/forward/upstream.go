package forward

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/dnsengine/match"
)

// upstream is one upstream address: its health, its TCP pool, its UDP
// sockets and its metrics, shared by every zone and transport naming it.
type upstream struct {
	f        *Forwarder
	addr     string
	health   health
	pool     *tcpPool
	udp      *udpSockets
	metrics  *serverMetrics
	probeHop hop // transport and timeout of the first Server entry naming addr
}

func newUpstream(f *Forwarder, first Server, m *serverMetrics) *upstream {
	u := &upstream{
		f:       f,
		addr:    first.Addr,
		health:  health{maxFails: int32(f.cfg.MaxFails)},
		metrics: m,
	}
	u.pool = newTCPPool(first.Addr, f.cfg, m)
	u.udp = &udpSockets{
		addr: net.UDPAddrFromAddrPort(netip.MustParseAddrPort(first.Addr)), // validated by New
		max:  f.cfg.MaxConnsPerServer,
	}
	u.probeHop = hop{up: u, transport: first.Transport, timeout: min(first.Timeout, f.cfg.ProbeTimeout)}
	return u
}

// close closes every pooled socket.
func (u *upstream) close() {
	u.pool.close()
	u.udp.close()
}

// ask sends the packed query wire (question q) to u over transport t
// within ctx and returns the matching reply, whatever its RCODE. A truncated
// UDP reply is retried over TCP within the same ctx. Dead signals met on the
// way are counted against u's health; start is when the attempt began.
func (u *upstream) ask(ctx context.Context, t Transport, wire []byte, q *dns.Question, start int64) (*dns.Msg, error) {
	if t == UDP {
		u.metrics.requestsUDP.Inc()
		resp, err := u.askUDP(ctx, wire, q)
		if err != nil {
			if u.countError(err) {
				u.f.strike(u, classify(err).String(), start)
			}
			return nil, err
		}
		if !resp.Truncated {
			return resp, nil
		}
	}
	u.metrics.requestsTCP.Inc()
	return u.askTCP(ctx, wire, q, start)
}

// maxResends bounds how often one attempt sends its query again on another
// TCP connection: after the server closed the one it was on, a dial failed,
// or the peer stopped acknowledging. Behind a Service address each new
// connection may reach another replica; the bound stops a server that closes
// every connection at once from being dialed in a loop.
const maxResends = 3

// maxRefusedDials bounds the dials one attempt makes that are refused at
// once: they cost nothing but a round trip, and behind a Service address with
// a replica just gone, each new dial may reach the one that answers.
const maxRefusedDials = 8

// askTCP sends the query on a pooled connection, and again on another
// one (DNS queries are idempotent) when that one fails in a way another
// connection may not: up to maxResends times, or maxRefusedDials refused
// dials, not counting pooled connections found closed by the server (each
// is closed and leaves the pool, so there are at most as many), within
// ctx, and not once the server is marked down (the caller moves on to the
// next server). An attempt strikes the server once at most: for a
// refused dial only if the attempt fails (behind a Service address, a dial
// refused by a replica just gone and resent to one that answers is no sign
// against the server), for a silent one at once.
func (u *upstream) askTCP(ctx context.Context, wire []byte, q *dns.Question, start int64) (*dns.Msg, error) {
	var dead error // the last dead signal of this attempt
	struck := false
	for resends, refused := 0, 0; ; {
		c, err := u.pool.get(ctx)
		reused := false
		if err == nil {
			var resp *dns.Msg
			resp, err = c.roundTrip(ctx, wire, q, u.metrics)
			u.pool.put(c, err == nil)
			if err == nil {
				return resp, nil
			}
			reused = c.reused
		}
		if u.countError(err) {
			dead = err
		}
		reason := classify(err)
		switch {
		case reused && reason == reasonClosed:
			// A pooled connection the server had closed (a replica gone,
			// or one that closed it while idle) is not this attempt's
			// failure; it has left the pool, so these resends end with it.
		case reason == reasonRefused:
			refused++
		default:
			resends++
		}
		if reason == reasonUnreachable && !struck {
			// A dial or a query left unanswered by the kernel has already
			// cost its 400 ms: strike now, so that a server gone silent is
			// marked down within a second, not after every resend.
			u.f.strike(u, reasonUnreachable.String(), start)
			struck = true
		}
		if resends > maxResends || refused > maxRefusedDials || ctx.Err() != nil || !resendable(err) || u.health.isDown() {
			if dead != nil && !struck {
				u.f.strike(u, classify(dead).String(), start)
			}
			return nil, err
		}
	}
}

// countError counts err in the metrics unless try does (timeouts, which are
// ambiguous), and reports whether it is a dead signal: the server (or the
// replica a connection reached) is gone.
func (u *upstream) countError(err error) (dead bool) {
	switch r := classify(err); r {
	case reasonRefused, reasonUnreachable:
		u.metrics.errors[r].Inc()
		return true
	case reasonClosed, reasonOther:
		if !errors.Is(err, ErrClosed) {
			u.metrics.errors[r].Inc()
		}
	}
	return false
}

// resendable reports whether a query that failed with err may succeed on
// another connection to the same address.
func resendable(err error) bool {
	switch classify(err) {
	case reasonRefused, reasonUnreachable, reasonClosed:
		return !errors.Is(err, ErrClosed)
	}
	return false
}

// matches reports whether m is a reply to a query with question q (the ID
// is the transport's to check).
func matches(q *dns.Question, m *dns.Msg) bool { return match.Question(q, m) == nil }

// epoch anchors monotime.
var epoch = time.Now()

// monotime is a monotonic clock reading in nanoseconds, cheap to store atomically.
func monotime() int64 { return int64(time.Since(epoch)) }

package forward

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// upstream is one upstream address: its health, its TCP pool and its metrics,
// shared by every zone and transport that names the address.
type upstream struct {
	addr     string
	health   health
	pool     *tcpPool
	udp      *udpSockets
	metrics  *serverMetrics
	probeHop hop // transport and timeout of the first Server entry naming addr
}

func newUpstream(first Server, cfg Config, m *serverMetrics) *upstream {
	u := &upstream{
		addr:    first.Addr,
		health:  health{maxFails: int32(cfg.MaxFails)},
		metrics: m,
	}
	u.pool = newTCPPool(first.Addr, cfg, m)
	u.udp = &udpSockets{
		addr: net.UDPAddrFromAddrPort(netip.MustParseAddrPort(first.Addr)), // validated by New
		max:  cfg.MaxConnsPerServer,
	}
	u.probeHop = hop{up: u, transport: first.Transport, timeout: first.Timeout}
	return u
}

// close closes every pooled socket.
func (u *upstream) close() {
	u.pool.close()
	u.udp.close()
}

// exchange sends the packed query wire (question q) to u over transport t
// within ctx and returns the matching reply, whatever its RCODE. A truncated
// UDP reply is retried over TCP within the same ctx.
func (u *upstream) exchange(ctx context.Context, t Transport, wire []byte, q *dns.Question) (*dns.Msg, error) {
	if t == UDP {
		u.metrics.requestsUDP.Inc()
		resp, err := u.exchangeUDP(ctx, wire, q)
		if err != nil || !resp.Truncated {
			return resp, err
		}
	}
	u.metrics.requestsTCP.Inc()
	return u.exchangeTCP(ctx, wire, q)
}

// maxResends bounds how often one attempt sends its query again after a
// connection closed or broke under it. Once the pool has learnt a server's
// per-connection query limit, a query is lost at most once on a connection
// dialed before that; the rest of the budget covers closes for other reasons
// (idle timeouts, restarts) that coincide, and it stops a server that closes
// every connection at once from being dialed in a loop.
const maxResends = 3

// exchangeTCP sends the query on a pooled connection. A query that was
// written but not answered on a connection that closed or broke is sent again
// on another one (the pool drops closed ones; DNS queries are idempotent), up
// to maxResends times within ctx, since servers close idle, long-lived or
// much-used connections at will (RFC 7766). Each query so lost counts as an
// error of reason closed; one that found its connection closed before it was
// written is not lost, and only uses up a resend.
func (u *upstream) exchangeTCP(ctx context.Context, wire []byte, q *dns.Question) (*dns.Msg, error) {
	for resends := 0; ; resends++ {
		c, err := u.pool.acquire(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := c.exchange(ctx, wire, q)
		if err == nil || resends == maxResends || !errors.Is(err, errConnClosed) || ctx.Err() != nil {
			return resp, err
		}
		if !errors.Is(err, errConnGone) {
			u.metrics.errors[reasonClosed].Inc()
		}
	}
}

// matches reports whether m is a reply to a query with question q. Names
// compare case-insensitively, since some servers do not echo the case.
func matches(q *dns.Question, m *dns.Msg) bool {
	if !m.Response || len(m.Question) != 1 {
		return false
	}
	r := &m.Question[0]
	return r.Qtype == q.Qtype && r.Qclass == q.Qclass && strings.EqualFold(r.Name, q.Name)
}

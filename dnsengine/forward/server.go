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

// exchangeTCP sends the query on a pooled connection. A query that was
// waiting on a connection that closed or broke is retried once on another
// connection (the pool drops broken ones), since servers close idle or
// long-lived connections at will. A connection found closed before the query
// went out does not use up that retry.
func (u *upstream) exchangeTCP(ctx context.Context, wire []byte, q *dns.Question) (*dns.Msg, error) {
	retried := false
	for {
		c, err := u.pool.acquire(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := c.exchange(ctx, wire, q)
		switch {
		case errors.Is(err, errConnGone) && ctx.Err() == nil:
			continue
		case err == nil || retried || !errors.Is(err, errConnClosed) || ctx.Err() != nil:
			return resp, err
		}
		u.metrics.errors[reasonClosed].Inc()
		retried = true
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

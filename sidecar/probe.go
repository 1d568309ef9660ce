package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/dnsengine/match"
)

// Probe sends one SOA query for cfg.Name over UDP to cfg.Addr and waits up
// to cfg.Timeout for the reply. It returns a one-line description of the
// reply when a well-formed response to this very query came back (right ID,
// the question echoed), whatever its RCODE: that proves the stub serves,
// even while its upstreams fail. Otherwise the error says why.
func Probe(ctx context.Context, cfg ProbeConfig) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	addr := cfg.Addr.String()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return "", fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(deadline); err != nil {
			return "", fmt.Errorf("set deadline: %w", err)
		}
	}

	query := new(dns.Msg)
	query.SetQuestion(cfg.Name, dns.TypeSOA) // a random ID
	packed, err := query.Pack()
	if err != nil {
		return "", fmt.Errorf("pack query: %w", err)
	}
	start := time.Now()
	if _, err := conn.Write(packed); err != nil {
		return "", fmt.Errorf("send query to %s: %w", addr, err)
	}
	buf := make([]byte, dns.MaxMsgSize)
	n, err := conn.Read(buf)
	if err != nil {
		var timeout net.Error
		if errors.As(err, &timeout) && timeout.Timeout() {
			return "", fmt.Errorf("no reply from %s within %v", addr, cfg.Timeout)
		}
		// ECONNREFUSED here is the ICMP port unreachable: nothing listens.
		return "", fmt.Errorf("read reply from %s: %w", addr, err)
	}
	took := time.Since(start)
	reply := new(dns.Msg)
	if err := reply.Unpack(buf[:n]); err != nil {
		return "", fmt.Errorf("malformed reply from %s (%d bytes): %w", addr, n, err)
	}
	if err := match.Reply(query, reply); err != nil {
		return "", fmt.Errorf("reply from %s: %w", addr, err)
	}
	return fmt.Sprintf("%s answered %s SOA: %s in %v", addr, cfg.Name, dns.RcodeToString[reply.Rcode], took.Round(time.Microsecond)), nil
}

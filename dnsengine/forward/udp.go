package forward

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// udpBufPool holds datagram buffers big enough for any DNS message.
var udpBufPool = sync.Pool{New: func() any { b := make([]byte, dns.MaxMsgSize); return &b }}

// exchangeUDP sends the query from a fresh connected UDP socket (a random
// source port) under a random ID and reads until a datagram matches ID and
// question or ctx ends. Mismatched or unparsable datagrams are dropped and
// counted. ECONNREFUSED (ICMP port unreachable) returns at once.
func (u *upstream) exchangeUDP(ctx context.Context, wire []byte, q *dns.Question) (*dns.Msg, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "udp", u.addr)
	if err != nil {
		return nil, fmt.Errorf("dial udp: %w", err)
	}
	defer nc.Close()
	deadline, _ := ctx.Deadline()
	if err := nc.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("udp deadline: %w", err)
	}
	// A cancelled ctx unblocks the read by moving the deadline to the past.
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	bp := udpBufPool.Get().(*[]byte)
	defer udpBufPool.Put(bp)
	buf := *bp

	id := uint16(rand.Uint32())
	out := buf[:copy(buf, wire)]
	binary.BigEndian.PutUint16(out, id)
	if _, err := nc.Write(out); err != nil {
		return nil, fmt.Errorf("write udp: %w", err)
	}
	for {
		n, err := nc.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("read udp: %w", ctx.Err())
			}
			return nil, fmt.Errorf("read udp: %w", err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil {
			u.metrics.errors[reasonOther].Inc()
			continue
		}
		if m.Id != id || !matches(q, m) {
			u.metrics.errors[reasonMismatch].Inc()
			continue
		}
		return m, nil
	}
}

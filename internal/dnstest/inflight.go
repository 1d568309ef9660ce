package dnstest

import (
	"sync"

	"github.com/miekg/dns"
)

// InFlight counts the queries inside a handler at once: in all (how many
// queries a kube-dns works on together) and per client connection (a TCP
// connection, or a client's UDP socket). The zero value is ready to use.
type InFlight struct {
	mu       sync.Mutex
	all      int
	byConn   map[string]int
	peakAll  int
	peakConn int
}

// Wrap returns h counted by c.
func (c *InFlight) Wrap(h dns.HandlerFunc) dns.HandlerFunc {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		conn := w.LocalAddr().Network() + " " + w.RemoteAddr().String() + " " + w.LocalAddr().String()
		c.mu.Lock()
		if c.byConn == nil {
			c.byConn = map[string]int{}
		}
		c.all++
		c.byConn[conn]++
		c.peakAll = max(c.peakAll, c.all)
		c.peakConn = max(c.peakConn, c.byConn[conn])
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			c.all--
			if c.byConn[conn]--; c.byConn[conn] == 0 {
				delete(c.byConn, conn)
			}
			c.mu.Unlock()
		}()
		h(w, r)
	}
}

// Peak is the most queries the handler held at once.
func (c *InFlight) Peak() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peakAll
}

// PeakPerConn is the most queries the handler held at once from one
// connection.
func (c *InFlight) PeakPerConn() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peakConn
}

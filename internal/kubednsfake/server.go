package kubednsfake

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/miekg/dns"
)

// CoreDNS 1.15's TCP server settings (core/dnsserver/server.go).
const (
	coreDNSMaxTCPQueries = -1 // unlimited queries per connection
	coreDNSIdleTimeout   = 10 * time.Second
)

// Server serves one handler on UDP and TCP at one address.
type Server struct {
	udp, tcp *dns.Server
}

// Serve runs h on pc (UDP) and l (TCP), sharing one ServeMux, and returns once
// both serve. The TCP server has CoreDNS's settings; tuneTCP, when not nil,
// adjusts it before it starts (wrap its Listener, change its limits). On
// error, pc and l are closed.
func Serve(pc net.PacketConn, l net.Listener, h dns.Handler, tuneTCP func(*dns.Server)) (*Server, error) {
	mux := dns.NewServeMux()
	mux.Handle(".", h)
	s := &Server{
		udp: &dns.Server{PacketConn: pc, Handler: mux},
		tcp: &dns.Server{Listener: l, Handler: mux, MaxTCPQueries: coreDNSMaxTCPQueries,
			IdleTimeout: func() time.Duration { return coreDNSIdleTimeout }},
	}
	if tuneTCP != nil {
		tuneTCP(s.tcp)
	}
	var started []*dns.Server
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		up := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(up) }
		failed := make(chan error, 1)
		go func() { failed <- srv.ActivateAndServe() }()
		select {
		case <-up:
			started = append(started, srv)
		case err := <-failed:
			for _, st := range started {
				_ = st.Shutdown()
			}
			pc.Close()
			l.Close()
			return nil, fmt.Errorf("serve %s: %w", pc.LocalAddr(), err)
		}
	}
	return s, nil
}

// Shutdown stops both servers: the address refuses new queries and
// connections, and open connections close once their query is answered.
func (s *Server) Shutdown() error {
	return errors.Join(s.udp.Shutdown(), s.tcp.Shutdown())
}

package kubectlplugin

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
)

// egressProxy is the test API server's way into "the cluster network". A
// kube-apiserver started with --egress-selector-config-file sends what it
// dials in the cluster (pods/proxy requests, calls to webhooks behind a
// Service) as HTTP CONNECT requests to a proxy over a Unix socket, the way
// it talks to konnectivity. This one maps the cluster addresses the test
// gives out (a node's 192.0.2.x pod IP, the webhook Service's ClusterIP) to
// servers on 127.0.0.1 in this process, and refuses everything else. So the
// plugin's requests go through the real API server's pod proxy and the API
// server calls the real webhook through its real Service, without any
// address outside loopback.
type egressProxy struct {
	socket   string
	listener net.Listener

	mu     sync.Mutex
	routes map[string]string // host:port asked for -> 127.0.0.1:port
	// conns are the open connections, with the cluster address of their
	// tunnel ("" before CONNECT was read).
	conns  map[net.Conn]string
	closed bool
	served sync.WaitGroup
}

func startEgressProxy(dir string) (*egressProxy, error) {
	p := &egressProxy{socket: filepath.Join(dir, "egress.sock"), routes: map[string]string{}, conns: map[net.Conn]string{}}
	l, err := net.Listen("unix", p.socket)
	if err != nil {
		return nil, fmt.Errorf("egress proxy: %w", err)
	}
	p.listener = l
	p.served.Go(p.accept)
	return p, nil
}

// config is the EgressSelectorConfiguration pointing the "cluster" network
// at the proxy; the control plane and etcd stay direct.
func (p *egressProxy) config() string {
	return fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: %s
`, p.socket)
}

// route makes CONNECT clusterAddr reach local; an empty local removes the
// route and cuts its open tunnels, so that the API server's pooled
// connections fail too (the address then refuses, like a Service without
// endpoints).
func (p *egressProxy) route(clusterAddr, local string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if local != "" {
		p.routes[clusterAddr] = local
		return
	}
	delete(p.routes, clusterAddr)
	for c, addr := range p.conns {
		if addr == clusterAddr {
			c.Close()
		}
	}
}

func (p *egressProxy) target(clusterAddr string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.routes[clusterAddr]
}

// track registers a connection of the tunnel to clusterAddr, to close on
// shutdown or when the route goes; false once the proxy is closed.
func (p *egressProxy) track(c net.Conn, clusterAddr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = clusterAddr
	return true
}

func (p *egressProxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

func (p *egressProxy) accept() {
	for {
		c, err := p.listener.Accept()
		if err != nil {
			return
		}
		if !p.track(c, "") {
			c.Close()
			return
		}
		p.served.Go(func() {
			defer p.untrack(c)
			defer c.Close()
			p.tunnel(c)
		})
	}
}

// tunnel answers one CONNECT and copies bytes both ways until either side
// closes. The API server sends nothing after CONNECT before the 200, so the
// buffered reader holds no bytes of the tunnel.
func (p *egressProxy) tunnel(c net.Conn) {
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		return
	}
	local := p.target(req.Host)
	if req.Method != http.MethodConnect || local == "" {
		fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	upstream, err := net.Dial("tcp", local)
	if err != nil {
		fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	if !p.track(upstream, req.Host) || !p.track(c, req.Host) {
		upstream.Close()
		return
	}
	defer p.untrack(upstream)
	defer upstream.Close()
	if _, err := fmt.Fprintf(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(upstream, c) //nolint:errcheck // ends when either side closes
		upstream.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(c, upstream) //nolint:errcheck
	c.Close()
	<-done
}

// close stops accepting, closes every open tunnel and waits for them.
func (p *egressProxy) close() error {
	err := p.listener.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.served.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

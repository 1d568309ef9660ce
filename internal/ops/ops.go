// Package ops serves a process's operational HTTP endpoints on one listener:
// /metrics (Prometheus text from a Gatherer), /healthz (liveness: the process
// answers) and /readyz (readiness: a caller-given check). Every localdns
// binary that serves DNS uses it, so probes and scrapes look the same.
package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/localdns/localdns/internal/sockopt"
)

// NewRegistry returns a registry holding the Go runtime and process
// collectors: the series every localdns binary exposes next to its own.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Config describes the listener.
type Config struct {
	// Addr is the "host:port" to listen on; port 0 picks a free port.
	Addr string
	// Gatherer is served on /metrics. Required.
	Gatherer prometheus.Gatherer
	// Ready reports nil when the process should receive traffic, else why
	// not; the reason is the body of a 503 on /readyz. Nil means always ready.
	Ready func() error
	// Logger receives serve errors; nil discards them.
	Logger *slog.Logger
	// ReusePort binds with SO_REUSEPORT. A hostNetwork DaemonSet rolled with
	// maxSurge runs two instances on one node address at once; without it the
	// replacement cannot bind the port and crash-loops until the old one
	// exits, which defeats the surge.
	ReusePort bool
}

// Server is a running ops listener.
type Server struct {
	listener net.Listener
	http     *http.Server
	served   chan struct{} // closed when Serve returned
}

// readHeaderTimeout bounds how long a slow client may hold a connection
// before sending its request headers; scrapes and probes are local and fast.
const readHeaderTimeout = 5 * time.Second

// Start binds cfg.Addr and serves in the background. It returns the bind
// error, so a busy port fails the process at start rather than later.
func Start(cfg Config) (*Server, error) {
	if cfg.Gatherer == nil {
		return nil, errors.New("ops: a Gatherer is required")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var lc net.ListenConfig
	if cfg.ReusePort {
		lc.Control = sockopt.ReusePort
	}
	ln, err := lc.Listen(context.Background(), "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("ops: listen on %s: %w", cfg.Addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if cfg.Ready != nil {
			if err := cfg.Ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	s := &Server{
		listener: ln,
		http: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: readHeaderTimeout,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		},
		served: make(chan struct{}),
	}
	go func() {
		defer close(s.served)
		if err := s.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			logger.Error("ops listener stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return s, nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.listener.Addr() }

// Shutdown stops accepting, lets in-flight requests finish until ctx ends,
// then closes whatever is left.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if err != nil {
		// ctx ended first: force-close the remaining connections.
		err = errors.Join(fmt.Errorf("ops: graceful shutdown: %w", err), s.http.Close())
	}
	<-s.served
	return err
}

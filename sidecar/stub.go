package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/dnsengine"
	"github.com/localdns/localdns/dnsengine/forward"
	"github.com/localdns/localdns/internal/ops"
)

// MetricsNamespace prefixes every metric of the stub.
const MetricsNamespace = "localdns_stub"

// Stub is a running stub: the engine on its listen addresses, the forwarder
// behind it and, when configured, the ops listener.
type Stub struct {
	engine *dnsengine.Engine
	fwd    *forward.Forwarder
	ops    *ops.Server // nil without --metrics-addr
}

// Start builds the forwarder and the engine from cfg, starts the ops
// listener when cfg.MetricsAddr is set, and binds every listen address. It
// returns once the stub is serving, or with the first error and nothing left running.
func Start(cfg Config, logger *slog.Logger) (_ *Stub, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// Metrics cost memory per series; without a listener nobody reads them.
	var registry *prometheus.Registry
	var registerer prometheus.Registerer
	if cfg.MetricsAddr != "" {
		registry = ops.NewRegistry()
		registerer = registry
	}

	fwd, err := forward.New(forwardConfig(cfg, registerer, logger))
	if err != nil {
		return nil, fmt.Errorf("upstream forwarder: %w", err)
	}
	s := &Stub{fwd: fwd}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Shutdown(context.Background()))
		}
	}()

	s.engine, err = dnsengine.New(dnsengine.Config{
		Listen:        cfg.Listen,
		Upstream:      fwd,
		CacheSize:     cfg.CacheSize,
		CacheMaxBytes: cfg.CacheMaxBytes,
		StaleMax:      cfg.StaleMax,
		// Every query comes from the pod's own loopback: one client, whose
		// share is the whole.
		MaxInflightMissesPerClient: dnsengine.DefaultMaxInflightMisses,
		MaxTCPConnsPerClient:       dnsengine.DefaultMaxTCPConns,
		// One resolution has room for the whole chain: node cache over UDP,
		// over TCP, then the fallback.
		UpstreamTimeout: cfg.NodeCacheUDPTimeout + cfg.NodeCacheTCPTimeout + cfg.FallbackTimeout,
		UDPSockets:      cfg.UDPSockets,
		Registerer:      registerer,
		Namespace:       MetricsNamespace,
		Logger:          logger,
	})
	if err != nil {
		return nil, fmt.Errorf("dns engine: %w", err)
	}

	if registry != nil {
		s.ops, err = ops.Start(ops.Config{
			Addr:     cfg.MetricsAddr,
			Gatherer: registry,
			Ready:    s.engine.Ready,
			Logger:   logger,
		})
		if err != nil {
			return nil, err
		}
	}
	if err := s.engine.Start(); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if !cfg.Fallback.IsValid() {
		logger.Warn("no --fallback: when the node cache fails, queries fail")
	}
	logger.Info("serving DNS", "listen", fmt.Sprint(cfg.Listen), "node_cache", cfg.NodeCache.String(),
		"fallback", fallbackString(cfg), "cache_size", cfg.CacheSize, "metrics", cfg.MetricsAddr)
	return s, nil
}

func fallbackString(cfg Config) string {
	if !cfg.Fallback.IsValid() {
		return "none"
	}
	return cfg.Fallback.String() + "/tcp"
}

// Run serves until ctx ends (SIGTERM), then drains in-flight queries for at
// most cfg.ShutdownTimeout and returns.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s, err := Start(cfg, logger)
	if err != nil {
		return err
	}
	<-ctx.Done()
	logger.Info("stopping: draining in-flight queries", "timeout", cfg.ShutdownTimeout)
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	err = s.Shutdown(drainCtx)
	logger.Info("stopped")
	return err
}

// forwardConfig is the stub's one chain for every name: the node cache over
// UDP (short timeout against a lost datagram; a port-unreachable ends it at
// once), the node cache over TCP (as long as the node cache itself waits for
// kube-dns), then the fallback over TCP only — UDP to the ClusterIP is the
// racy DNAT path the stub exists to avoid. A timeout is no sign of a dead
// node cache (it may be waiting for a slow name); refused or unacknowledged
// connections are. The node cache's two entries share one health state: once
// it is marked down both are skipped, and the probe (over UDP, its first
// entry) brings both back.
func forwardConfig(cfg Config, reg prometheus.Registerer, logger *slog.Logger) forward.Config {
	servers := []forward.Server{
		{Addr: cfg.NodeCache.String(), Transport: forward.UDP, Timeout: cfg.NodeCacheUDPTimeout},
		{Addr: cfg.NodeCache.String(), Transport: forward.TCP, Timeout: cfg.NodeCacheTCPTimeout},
	}
	if cfg.Fallback.IsValid() {
		servers = append(servers, forward.Server{Addr: cfg.Fallback.String(), Transport: forward.TCP, Timeout: cfg.FallbackTimeout})
	}
	// No ProbeAtStart: it would open a TCP connection to kube-dns from every
	// stub pod as it starts, for nothing; the fallback is contacted only when
	// the node cache fails. The exec startup probe's query makes /readyz true.
	return forward.Config{
		Zones:      []forward.Zone{{Name: ".", Servers: servers}},
		ProbeName:  cfg.ClusterDomain,
		Registerer: reg,
		Namespace:  MetricsNamespace,
		Logger:     logger,
	}
}

// UDPAddrs returns the bound UDP addresses, one per listen address.
func (s *Stub) UDPAddrs() []net.Addr { return s.engine.UDPAddrs() }

// MetricsAddr returns the ops listener's address, or nil when metrics are off.
func (s *Stub) MetricsAddr() net.Addr {
	if s.ops == nil {
		return nil
	}
	return s.ops.Addr()
}

// Shutdown stops accepting, drains in-flight queries until ctx ends, then
// closes every socket and upstream connection.
func (s *Stub) Shutdown(ctx context.Context) error {
	var errs []error
	if s.engine != nil {
		errs = append(errs, s.engine.Shutdown(ctx))
	}
	if s.ops != nil {
		errs = append(errs, s.ops.Shutdown(ctx))
	}
	errs = append(errs, s.fwd.Close())
	return errors.Join(errs...)
}

package nodecache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/dnsengine"
	"github.com/localdns/localdns/dnsengine/forward"
	"github.com/localdns/localdns/internal/ops"
)

// MetricsNamespace prefixes every metric of the node cache.
const MetricsNamespace = "localdns_nodecache"

// Reverse zones forwarded to kube-dns with the cluster domain (PTR records
// of Services and Pods).
var reverseZones = []string{"in-addr.arpa.", "ip6.arpa."}

// Execute runs what cfg.Command selects until ctx ends (serve) or the work
// is done (cleanup, ready).
func Execute(ctx context.Context, cfg Config, logger *slog.Logger) error {
	switch cfg.Command {
	case CommandCleanup:
		return cleanup(ctx, cfg, logger)
	case CommandReady:
		return checkReady(cfg.ReadyFile)
	case CommandStandby:
		return standby(ctx, cfg, logger)
	}
	return serve(ctx, cfg, logger)
}

// serve prepares the node, serves DNS and, when ctx ends (SIGTERM), drains
// and returns, leaving the interface and rules for the next instance.
func serve(ctx context.Context, cfg Config, logger *slog.Logger) error {
	reg := ops.NewRegistry()
	// A container restarted in the same pod finds its predecessor's file.
	if err := removeReadyFile(cfg.ReadyFile); err != nil {
		return err
	}

	// The order closes every gap at the listen IPs: kube-dns is found first
	// (that may take a while), then the rules go in, the sockets are bound
	// (IP_FREEBIND: before the node has the address) and only then is the
	// address added. A listen IP that exists with no socket bound answers
	// port unreachable, which the kernel sends each client only a few times
	// before it rate-limits them and drops the rest in silence: every lookup
	// then waits out the pod's resolver timeout.
	res, err := newResolver(ctx, cfg, reg, logger)
	if err != nil || res == nil {
		return err
	}
	defer res.fwd.Close()
	engine := res.engine
	setup, err := NewSetup(cfg.Setup, cfg.Listen, reg, MetricsNamespace, logger)
	if err != nil {
		return err
	}

	var taint *startupTaint
	if cfg.StartupTaint != "" {
		if taint, err = newStartupTaint(cfg, reg, logger); err != nil {
			return err
		}
	}
	ready := engine.Ready
	opsServer, err := ops.Start(ops.Config{
		Addr:      cfg.MetricsAddr,
		Gatherer:  reg,
		Ready:     ready,
		Logger:    logger,
		ReusePort: true, // the surge pod of a rolling update shares the node's port
	})
	if err != nil {
		return err
	}
	if err := setup.Prepare(ctx); err != nil {
		return errors.Join(err, opsServer.Shutdown(context.Background()))
	}
	if err := engine.Start(); err != nil {
		return errors.Join(fmt.Errorf("listen: %w", err), opsServer.Shutdown(context.Background()))
	}
	if err := setup.Publish(ctx); err != nil {
		drainCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		return errors.Join(err, engine.Shutdown(drainCtx), opsServer.Shutdown(drainCtx))
	}
	logger.Info("serving DNS", "listen", fmt.Sprint(cfg.Listen), "upstream", fmt.Sprint(res.upstream),
		"upstream_external", fmt.Sprint(cfg.UpstreamExternal), "metrics", opsServer.Addr().String())
	var standbyLink *standbyLink
	if cfg.HandoverSocket != "" {
		// Not bound to ctx: on SIGTERM the link must last until the standby serves.
		standbyLink = linkToStandby(context.Background(), cfg.HandoverSocket, logger)
	}

	var background sync.WaitGroup
	backgroundCtx, stopBackground := context.WithCancel(ctx)
	background.Go(func() { setup.Run(backgroundCtx, cfg.ReconcileInterval) })
	if cfg.ReadyFile != "" {
		background.Go(func() { writeReadyFileWhenReady(backgroundCtx, cfg.ReadyFile, ready, logger) })
	}
	if taint != nil {
		background.Go(func() { taint.removeWhenReady(backgroundCtx, ready) })
	}

	<-ctx.Done()
	logger.Info("stopping: draining in-flight queries", "timeout", cfg.ShutdownTimeout)
	stopBackground()
	background.Wait()
	if err := removeReadyFile(cfg.ReadyFile); err != nil {
		logger.Warn("ready file left behind", "err", err)
	}
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if standbyLink != nil {
		handCtx, cancelHand := context.WithTimeout(drainCtx, handoverTimeout)
		if err := standbyLink.handOver(handCtx); err != nil {
			logger.Warn("leaving without a standby serving", "err", err)
		} else {
			logger.Info("the standby serves; leaving")
		}
		cancelHand()
	}
	err = errors.Join(engine.Shutdown(drainCtx), opsServer.Shutdown(drainCtx))
	if cfg.Setup.Interface || cfg.Setup.Rules {
		logger.Info("stopped; node setup left in place for the next instance (`localdns-nodecache cleanup` removes it)")
	} else {
		logger.Info("stopped")
	}
	return err
}

// handoverTimeout bounds a stopping node cache's wait for the standby to serve.
const handoverTimeout = 2 * time.Second

// resolver is what the node cache and its standby both run: the forwarder to
// kube-dns and the engine in front of it.
type resolver struct {
	fwd      *forward.Forwarder
	engine   *dnsengine.Engine
	upstream []netip.AddrPort
}

// newResolver finds kube-dns (unless cfg names it) and builds the forwarder
// and the engine, not yet listening, with their metrics on reg. It returns
// nil and no error when ctx ended while kube-dns was being looked for.
func newResolver(ctx context.Context, cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*resolver, error) {
	res := &resolver{upstream: cfg.Upstream}
	if len(res.upstream) == 0 {
		var err error
		if res.upstream, err = DiscoverUpstream(ctx, cfg.UpstreamTransport, logger); err != nil {
			if ctx.Err() != nil {
				logger.Info("stopped before kube-dns was found")
				return nil, nil
			}
			return nil, err
		}
	}
	var err error
	if res.fwd, err = forward.New(forwardConfig(cfg, res.upstream, reg, logger)); err != nil {
		return nil, fmt.Errorf("upstream forwarder: %w", err)
	}
	res.engine, err = dnsengine.New(dnsengine.Config{
		Listen: cfg.Listen,
		// The node cache binds before it adds its address; the standby binds
		// an address the node cache added (or is about to).
		FreeBind:                   cfg.Setup.Interface || cfg.Command == CommandStandby,
		Upstream:                   res.fwd,
		CacheSize:                  cfg.CacheSize,
		CacheMaxBytes:              cfg.CacheMaxBytes,
		MaxCachedAnswer:            cfg.MaxCachedAnswer,
		StaleMax:                   cfg.StaleMax,
		MaxInflightMisses:          cfg.Limits.MaxInflightMisses,
		MaxInflightMissesPerClient: cfg.Limits.MaxInflightMissesPerClient,
		MaxTCPConns:                cfg.Limits.MaxTCPConns,
		MaxTCPConnsPerClient:       cfg.Limits.MaxTCPConnsPerClient,
		Registerer:                 reg,
		Namespace:                  MetricsNamespace,
		Logger:                     logger,
	})
	if err != nil {
		res.fwd.Close()
		return nil, fmt.Errorf("dns engine: %w", err)
	}
	return res, nil
}

// forwardConfig routes the cluster domain and the reverse zones to kube-dns,
// and "." to the external servers when given, else to kube-dns too, with at
// most Limits.ExternalMaxInflight of its queries in flight. Each attempt may
// take the engine's whole upstream timeout: a slow answer is still an answer.
func forwardConfig(cfg Config, upstream []netip.AddrPort, reg prometheus.Registerer, logger *slog.Logger) forward.Config {
	servers := func(aps []netip.AddrPort) []forward.Server {
		out := make([]forward.Server, len(aps))
		for i, ap := range aps {
			out[i] = forward.Server{Addr: ap.String(), Transport: cfg.UpstreamTransport,
				Timeout: dnsengine.DefaultUpstreamTimeout}
		}
		return out
	}
	cluster := servers(upstream)
	root := cluster
	if len(cfg.UpstreamExternal) > 0 {
		root = servers(cfg.UpstreamExternal)
	}
	zones := []forward.Zone{{Name: cfg.ClusterDomain, Servers: cluster}}
	for _, z := range reverseZones {
		zones = append(zones, forward.Zone{Name: z, Servers: cluster})
	}
	zones = append(zones, forward.Zone{Name: ".", Servers: root, MaxInflight: cfg.Limits.ExternalMaxInflight})
	return forward.Config{
		Zones:             zones,
		MaxConnsPerServer: cfg.Limits.UpstreamMaxConns,
		ProbeName:         cfg.ClusterDomain,
		ProbeAtStart:      true, // readiness without waiting for client traffic
		Registerer:        reg,
		Namespace:         MetricsNamespace,
		Logger:            logger,
	}
}

// cleanup removes the interface and rules (uninstall).
func cleanup(ctx context.Context, cfg Config, logger *slog.Logger) error {
	setup, err := NewSetup(cfg.Setup, cfg.Listen, nil, MetricsNamespace, logger)
	if err != nil {
		return err
	}
	if err := setup.Remove(ctx); err != nil {
		return err
	}
	logger.Info("node setup removed")
	return nil
}

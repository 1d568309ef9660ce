package nodecache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/ops"
)

// standbyStartGrace is how long a standby that just started waits for the
// node caches already serving to link to it (they retry every
// handoverRetry) before it takes their absence for real: a standby restarted
// beside a healthy node cache must not split the node's traffic.
const standbyStartGrace = 2 * handoverRetry

// standby serves the listen IPs whenever no node cache is linked to it, until
// ctx ends. It shares the node cache's engine and forwarder, with a cache of
// its own, and does no node setup.
func standby(ctx context.Context, cfg Config, logger *slog.Logger) error {
	reg := ops.NewRegistry()
	metrics := newStandbyMetrics()
	if err := reg.Register(metrics); err != nil {
		return fmt.Errorf("register standby metrics: %w", err)
	}
	res, err := newResolver(ctx, cfg, prometheus.WrapRegistererWith(prometheus.Labels{"role": "standby"}, reg), logger)
	if err != nil || res == nil {
		return err
	}
	defer res.fwd.Close()
	primaries, err := listenForPrimaries(cfg.HandoverSocket, logger)
	if err != nil {
		return err
	}
	opsServer, err := ops.Start(ops.Config{
		Addr:     cfg.MetricsAddr,
		Gatherer: reg,
		// Ready to take over: kube-dns has answered (serving is not needed).
		Ready: func() error {
			if !res.fwd.Answered() {
				return errors.New("no upstream has answered yet")
			}
			return nil
		},
		Logger:    logger,
		ReusePort: true,
	})
	if err != nil {
		return errors.Join(err, primaries.close())
	}
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		primaries.accept(ctx)
	}()
	logger.Info("standing by", "listen", fmt.Sprint(cfg.Listen), "upstream", fmt.Sprint(res.upstream), "socket", cfg.HandoverSocket)

	err = followPrimaries(ctx, primaries, res, metrics, standbyStartGrace, cfg.ShutdownTimeout, logger)
	primaries.close()
	<-accepting
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	return errors.Join(err, opsServer.Shutdown(drainCtx))
}

// followPrimaries binds the engine when no node cache is linked and unbinds
// it (draining, so no query is lost) when one is, until ctx ends. After it
// starts it waits for grace, or until a node cache links, before it takes
// the absence of node caches for real.
func followPrimaries(ctx context.Context, p *primaries, res *resolver, m *standbyMetrics, grace, drain time.Duration, logger *slog.Logger) error {
	graceTimer := time.NewTimer(grace)
	defer graceTimer.Stop()
	started := time.Now()
	inGrace := true
	serving := false
	stop := func() error {
		drainCtx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		err := res.engine.Shutdown(drainCtx)
		serving = false
		m.serving.Set(0)
		p.setServing(false)
		return err
	}
	for {
		linked, changed := p.state()
		if linked > 0 {
			inGrace = false // the node caches' state is known
		}
		switch {
		case linked == 0 && !serving && !inGrace:
			if err := res.engine.Start(); err != nil {
				return fmt.Errorf("take over the listen IPs: %w", err)
			}
			serving = true
			m.serving.Set(1)
			m.takeovers.Inc()
			p.setServing(true)
			logger.Warn("no node cache serves: the standby serves the listen IPs")
		case linked > 0 && serving:
			if err := stop(); err != nil {
				logger.Warn("standing down: drain cut short", "err", err)
			}
			logger.Info("a node cache serves again: standing by")
		}
		select {
		case <-ctx.Done():
			if serving {
				return stop()
			}
			return nil
		case <-changed:
		case <-graceTimer.C:
			if inGrace {
				inGrace = false
				logger.Info("start-up grace over", "linked_node_caches", linked, "after", time.Since(started).Round(time.Millisecond))
			}
		}
	}
}

// standbyMetrics say whether the standby serves and how often it took over.
type standbyMetrics struct {
	serving   prometheus.Gauge
	takeovers prometheus.Counter
}

func newStandbyMetrics() *standbyMetrics {
	return &standbyMetrics{
		serving: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: MetricsNamespace, Name: "standby_serving",
			Help: "1 while the standby serves the listen IPs (no node cache is linked to it).",
		}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: MetricsNamespace, Name: "standby_takeovers_total",
			Help: "Times the standby began serving the listen IPs because no node cache was linked.",
		}),
	}
}

// Describe implements prometheus.Collector.
func (m *standbyMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.serving.Describe(ch)
	m.takeovers.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *standbyMetrics) Collect(ch chan<- prometheus.Metric) {
	m.serving.Collect(ch)
	m.takeovers.Collect(ch)
}

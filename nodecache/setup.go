package nodecache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Setup prepares the node for the cache (interface and rules) and keeps it
// prepared. It never undoes its work on exit: Remove is for uninstalling.
type Setup struct {
	parts   []setupPart
	logger  *slog.Logger
	repairs *prometheus.CounterVec
	errors  *prometheus.CounterVec
}

// setupPart is one independently repaired piece of the node setup.
type setupPart struct {
	name   string // metric label: "interface" or "rules"
	ensure func(context.Context) ([]string, error)
	remove func(context.Context) ([]string, error)
}

// NewSetup builds the setup for the listen endpoints; parts disabled in cfg
// are neither installed nor removed. Metrics are registered on reg (nil: not
// registered) as <namespace>_setup_repairs_total and
// <namespace>_setup_errors_total, labelled by part.
func NewSetup(cfg SetupConfig, listen []netip.AddrPort, reg prometheus.Registerer, namespace string, logger *slog.Logger) (*Setup, error) {
	return newSetup(cfg, listen, execRunner, reg, namespace, logger)
}

func newSetup(cfg SetupConfig, listen []netip.AddrPort, run runner, reg prometheus.Registerer, namespace string, logger *slog.Logger) (*Setup, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Setup{
		logger: logger,
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "setup_repairs_total",
			Help:      "Node setup pieces found missing and restored after start (interface, addresses, rules).",
		}, []string{"part"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "setup_errors_total",
			Help:      "Node setup passes that failed, by part.",
		}, []string{"part"}),
	}
	if cfg.Interface {
		iface := newNodeLink(cfg.InterfaceName, listenIPs(listen), logger)
		s.parts = append(s.parts, setupPart{
			name:   partInterface,
			ensure: func(context.Context) ([]string, error) { return iface.ensure() },
			remove: func(context.Context) ([]string, error) { return iface.remove() },
		})
	}
	if cfg.Rules {
		rules := newNodeRules(cfg.IptablesMode, listen, run, logger)
		s.parts = append(s.parts, setupPart{name: partRules, ensure: rules.ensure, remove: rules.remove})
	}
	for _, p := range s.parts {
		// Zero-valued series exist from the start, so rate() and alerts see them.
		s.repairs.WithLabelValues(p.name)
		s.errors.WithLabelValues(p.name)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.repairs, s.errors} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register node setup metrics: %w", err)
			}
		}
	}
	return s, nil
}

// listenIPs returns the distinct IPs of the endpoints.
func listenIPs(listen []netip.AddrPort) []netip.Addr {
	var ips []netip.Addr
	for _, ap := range listen {
		if !slices.Contains(ips, ap.Addr()) {
			ips = append(ips, ap.Addr())
		}
	}
	return ips
}

// The setup parts, by name (the metric label).
const (
	partInterface = "interface"
	partRules     = "rules"
)

// Prepare installs or adopts the rules: run it before binding, so that the
// first packet to a listen IP already skips conntrack.
func (s *Setup) Prepare(ctx context.Context) error { return s.apply(ctx, partRules) }

// Publish installs or adopts the interface and its listen IPs: run it once
// the sockets are bound (IP_FREEBIND). A listen IP then never exists on the
// node without a socket: a query to it would get a port unreachable, which
// the kernel rate-limits per client (then drops in silence: a 1 s stall).
func (s *Setup) Publish(ctx context.Context) error { return s.apply(ctx, partInterface) }

// apply installs or adopts the named part, if enabled. What it changes is
// logged, not counted as a repair.
func (s *Setup) apply(ctx context.Context, name string) error {
	for _, p := range s.parts {
		if p.name != name {
			continue
		}
		changes, err := p.ensure(ctx)
		for _, c := range changes {
			s.logger.Debug("node setup", "part", p.name, "change", c)
		}
		if err != nil {
			s.errors.WithLabelValues(p.name).Inc()
			return fmt.Errorf("node setup (%s): %w", p.name, err)
		}
		// One line per part; a fresh node shows the changes, a restart "adopted".
		s.logger.Info("node setup in place", "part", p.name, "changes", len(changes), "adopted", len(changes) == 0)
	}
	return nil
}

// Reconcile restores whatever went missing since the last pass, counting
// each restored piece as a repair and each failed pass as an error.
func (s *Setup) Reconcile(ctx context.Context) {
	for _, p := range s.parts {
		changes, err := p.ensure(ctx)
		s.repairs.WithLabelValues(p.name).Add(float64(len(changes)))
		for _, c := range changes {
			s.logger.Warn("node setup repaired", "part", p.name, "change", c)
		}
		if err != nil {
			s.errors.WithLabelValues(p.name).Inc()
			s.logger.Error("node setup check failed", "part", p.name, "err", err)
		}
	}
}

// Run reconciles every interval until ctx ends.
func (s *Setup) Run(ctx context.Context, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			s.Reconcile(ctx)
		}
	}
}

// Remove deletes the interface and rules (the uninstall path); pieces that
// are already gone are fine.
func (s *Setup) Remove(ctx context.Context) error {
	var errs []error
	for _, p := range s.parts {
		changes, err := p.remove(ctx)
		for _, c := range changes {
			s.logger.Info("node setup removed", "part", p.name, "change", c)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove node setup (%s): %w", p.name, err))
		}
	}
	return errors.Join(errs...)
}

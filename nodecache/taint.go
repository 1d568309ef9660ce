package nodecache

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
)

// The opt-in startup taint keeps workload pods off a node until its node
// cache serves: the node joins with the taint (kubelet's
// --register-with-taints, Karpenter's startupTaints), DaemonSets that
// tolerate it start, and the node cache removes it from its own Node once it
// is ready (the condition of its ready file). Pods scheduled before then
// would find nothing at the listen IPs, and a cloud node sends packets for an
// address it does not have to its gateway, which drops them: every lookup
// would wait out the pod's resolver timeout.

// DefaultStartupTaint is the taint key the chart and the documentation use.
const DefaultStartupTaint = "node.localdns.io/nodecache-not-ready"

// taintFieldManager names the node cache's updates in the Node's managed fields.
const taintFieldManager = "localdns-nodecache"

// taintBackoff paces the attempts while the API server refuses or cannot be
// reached; conflicts are retried at once (retry.RetryOnConflict).
var taintBackoff = backoff{initial: time.Second, max: 30 * time.Second}

// Results of a removal attempt, the values of the metric's result label.
const (
	taintRemoved = "removed" // the taint was there and is gone
	taintAbsent  = "absent"  // nothing to remove
	taintError   = "error"   // the attempt failed; retried
)

// startupTaint removes the startup taint from the node cache's own Node.
type startupTaint struct {
	key, node string
	nodes     corev1client.NodeInterface
	attempts  *prometheus.CounterVec
	backoff   backoff
	logger    *slog.Logger
}

// newStartupTaint builds the remover for cfg.StartupTaint on cfg.NodeName,
// talking to the API server through the in-cluster config, with its metric
// on reg.
func newStartupTaint(cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*startupTaint, error) {
	restCfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("--startup-taint: in-cluster API config: %w", err)
	}
	client, err := corev1client.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("--startup-taint: API client: %w", err)
	}
	return newStartupTaintWith(client.Nodes(), cfg.StartupTaint, cfg.NodeName, reg, logger)
}

func newStartupTaintWith(nodes corev1client.NodeInterface, key, node string, reg prometheus.Registerer, logger *slog.Logger) (*startupTaint, error) {
	attempts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: MetricsNamespace, Name: "startup_taint_removals_total",
		Help: "Attempts to remove the startup taint from the node cache's own Node, by result: " +
			"removed, absent (nothing to remove) or error (retried).",
	}, []string{"result"})
	for _, r := range []string{taintRemoved, taintAbsent, taintError} {
		attempts.WithLabelValues(r)
	}
	if err := reg.Register(attempts); err != nil {
		return nil, fmt.Errorf("register startup taint metric: %w", err)
	}
	return &startupTaint{key: key, node: node, nodes: nodes, attempts: attempts, backoff: taintBackoff, logger: logger}, nil
}

// removeWhenReady waits until ready reports nil, then removes the taint,
// retrying with backoff until it is gone or ctx ends.
func (s *startupTaint) removeWhenReady(ctx context.Context, ready func() error) {
	if !untilReady(ctx, ready) {
		return
	}
	delay := s.backoff.initial
	for {
		removed, err := RemoveStartupTaint(ctx, s.nodes, s.node, s.key)
		switch {
		case err == nil && removed:
			s.attempts.WithLabelValues(taintRemoved).Inc()
			s.logger.Info("startup taint removed: the node takes workload pods", "node", s.node, "taint", s.key)
			return
		case err == nil:
			s.attempts.WithLabelValues(taintAbsent).Inc()
			s.logger.Info("no startup taint to remove", "node", s.node, "taint", s.key)
			return
		case ctx.Err() != nil:
			return
		}
		s.attempts.WithLabelValues(taintError).Inc()
		s.logger.Warn("cannot remove the startup taint; retrying", "node", s.node, "taint", s.key, "retry_in", delay, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, s.backoff.max)
	}
}

// RemoveStartupTaint removes every taint with key from Node name: read,
// drop those taints, update with the resourceVersion read, again from the
// read on a conflict. Nothing else of the Node changes. removed reports
// whether there was a taint to remove; with none, nothing is written.
func RemoveStartupTaint(ctx context.Context, nodes corev1client.NodeInterface, name, key string) (removed bool, err error) {
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := nodes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		kept := slices.DeleteFunc(slices.Clone(node.Spec.Taints), func(t corev1.Taint) bool { return t.Key == key })
		if removed = len(kept) < len(node.Spec.Taints); !removed {
			return nil
		}
		node.Spec.Taints = kept
		_, err = nodes.Update(ctx, node, metav1.UpdateOptions{FieldManager: taintFieldManager})
		return err
	})
	if err != nil {
		return false, fmt.Errorf("remove taint %s from node %s: %w", key, name, err)
	}
	return removed, nil
}

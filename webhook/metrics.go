package webhook

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Values of the result label.
const (
	resultInjected = "injected"
	resultSkipped  = "skipped"
	resultError    = "error"
)

// Metrics counts admissions. controller-runtime adds its own webhook latency
// and in-flight metrics on the same registry.
type Metrics struct {
	admissions *prometheus.CounterVec
}

// NewMetrics registers the webhook's metrics on reg. Registering twice on the
// same registry (several handlers in one process, as in tests) shares the
// collectors.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	admissions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "localdns",
		Subsystem: "webhook",
		Name:      "admissions_total",
		Help: "Pod admissions by result (injected, skipped, error), applied mode, and " +
			"skip reason or internal error kind.",
	}, []string{"result", "mode", "reason"})
	if err := reg.Register(admissions); err != nil {
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			return nil, fmt.Errorf("register localdns_webhook_admissions_total: %w", err)
		}
		admissions = already.ExistingCollector.(*prometheus.CounterVec)
	}
	return &Metrics{admissions: admissions}, nil
}

func (m *Metrics) injected(mode Mode) {
	m.admissions.WithLabelValues(resultInjected, string(mode), "").Inc()
}

func (m *Metrics) skipped(reason SkipReason) {
	m.admissions.WithLabelValues(resultSkipped, "", string(reason)).Inc()
}

func (m *Metrics) failed(kind string) {
	m.admissions.WithLabelValues(resultError, "", kind).Inc()
}

package forward

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics holds the forwarder's collectors, registered once per Forwarder.
type metrics struct {
	requests  *prometheus.CounterVec
	errors    *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	healthy   *prometheus.GaugeVec
	tcpConns  *prometheus.GaugeVec
	tcpWaits  *prometheus.CounterVec
	zoneWaits *prometheus.CounterVec
}

// serverMetrics are one server's children, resolved once so the query path
// does no label lookups.
type serverMetrics struct {
	requestsTCP prometheus.Counter
	requestsUDP prometheus.Counter
	errors      [numReasons]prometheus.Counter
	duration    prometheus.Observer
	healthy     prometheus.Gauge
	tcpConns    prometheus.Gauge
	tcpWaits    prometheus.Counter
}

// newMetrics creates the collectors and registers them on reg (nil = keep
// them unregistered). On a registration error nothing stays registered.
func newMetrics(reg prometheus.Registerer, namespace string) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "upstream_requests_total",
			Help: "Queries sent to upstream servers (each attempt and probe), by server and transport.",
		}, []string{"server", "transport"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "upstream_errors_total",
			Help: "Upstream failures and dropped replies, by server and reason (timeout, refused, unreachable, closed, mismatch, servfail, other).",
		}, []string{"server", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "upstream_request_duration_seconds",
			Help:    "Time from sending a query upstream to its reply, for attempts that got one.",
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 14), // 250us .. 2s
		}, []string{"server"}),
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "upstream_healthy",
			Help: "1 when the upstream server is considered up, 0 when marked down.",
		}, []string{"server"}),
		tcpConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "upstream_tcp_connections",
			Help: "Open TCP connections to the upstream server, busy or idle.",
		}, []string{"server"}),
		tcpWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "upstream_tcp_waits_total",
			Help: "Queries that found every TCP connection to the server busy, at the per-server limit, and waited for one.",
		}, []string{"server"}),
		zoneWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "upstream_zone_waits_total",
			Help: "Queries that found their zone at its limit of queries in flight and waited for a place.",
		}, []string{"zone"}),
	}
	if reg == nil {
		return m, nil
	}
	collectors := []prometheus.Collector{m.requests, m.errors, m.duration, m.healthy, m.tcpConns, m.tcpWaits, m.zoneWaits}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range collectors[:i] {
				reg.Unregister(done)
			}
			var already prometheus.AlreadyRegisteredError
			if errors.As(err, &already) {
				return nil, fmt.Errorf("already registered (one Forwarder per registry and namespace): %w", err)
			}
			return nil, err
		}
	}
	return m, nil
}

// forServer returns the children labelled with server addr.
func (m *metrics) forServer(addr string) *serverMetrics {
	s := &serverMetrics{
		requestsTCP: m.requests.WithLabelValues(addr, string(TCP)),
		requestsUDP: m.requests.WithLabelValues(addr, string(UDP)),
		duration:    m.duration.WithLabelValues(addr),
		healthy:     m.healthy.WithLabelValues(addr),
		tcpConns:    m.tcpConns.WithLabelValues(addr),
		tcpWaits:    m.tcpWaits.WithLabelValues(addr),
	}
	for r := range numReasons {
		s.errors[r] = m.errors.WithLabelValues(addr, r.String())
	}
	s.healthy.Set(1)
	return s
}

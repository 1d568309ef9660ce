package kubectlplugin

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// The node cache's metrics the status reads (dnsengine and
// dnsengine/forward name them under nodecache.MetricsNamespace;
// docs/deploy.md documents them). The plugin does not import the node
// cache, which builds for Linux only: the plugin runs on any workstation.
const (
	metricsPrefix  = "localdns_nodecache"
	metricHits     = metricsPrefix + "_cache_hits_total"
	metricMisses   = metricsPrefix + "_cache_misses_total"
	metricStale    = metricsPrefix + "_cache_stale_total"
	metricRequests = metricsPrefix + "_requests_total"
	metricHealthy  = metricsPrefix + "_upstream_healthy"

	// defaultOpsPort is the node cache's --metrics-addr port by default.
	defaultOpsPort = "9253"
	// scrapePortAnnotation is where the manifests name the ops port for
	// Prometheus.
	scrapePortAnnotation = "prometheus.io/port"
)

// NodeCache is one node's node cache as the status shows it.
type NodeCache struct {
	Node    string `json:"node"`
	Pod     string `json:"pod,omitempty"`
	Ready   bool   `json:"ready"`
	Version string `json:"version,omitempty"`
	// Metrics are read through the API server's pod proxy from the ops
	// listener; nil when they could not be (Problem says why).
	Metrics *NodeCacheMetrics `json:"metrics,omitempty"`
	Problem string            `json:"problem,omitempty"`
}

// NodeCacheMetrics are the counters since the node cache started.
type NodeCacheMetrics struct {
	Hits     uint64 `json:"hits"`
	Misses   uint64 `json:"misses"`
	Stale    uint64 `json:"stale"`
	ServFail uint64 `json:"servfail"`
	// HitRatio is hits / (hits + misses); absent before the first query.
	HitRatio  *float64   `json:"hitRatio,omitempty"`
	Upstreams []Upstream `json:"upstreams"`
}

// Upstream is one kube-dns server as the node cache sees it.
type Upstream struct {
	Server  string `json:"server"`
	Healthy bool   `json:"healthy"`
}

// nodeCacheRows lists the node cache per node: every node cache pod, and
// every node that should run one and runs none. nodes may be nil when they
// cannot be listed.
func nodeCacheRows(ctx context.Context, client kubernetes.Interface, pods []corev1.Pod, nodes []corev1.Node, nodeSelector map[string]string) []NodeCache {
	var rows []NodeCache
	covered := map[string]bool{}
	for i := range pods {
		pod := &pods[i]
		covered[pod.Spec.NodeName] = true
		rows = append(rows, nodeCacheOf(ctx, client, pod))
	}
	selector := labels.SelectorFromSet(nodeSelector)
	for _, n := range nodes {
		if covered[n.Name] {
			continue
		}
		row := NodeCache{Node: n.Name, Problem: "no node cache pod"}
		if !selector.Matches(labels.Set(n.Labels)) {
			row.Problem = "none expected: the DaemonSet's nodeSelector excludes the node"
		}
		rows = append(rows, row)
	}
	slices.SortFunc(rows, func(a, b NodeCache) int {
		return strings.Compare(a.Node+"/"+a.Pod, b.Node+"/"+b.Pod)
	})
	return rows
}

// nodeCacheOf reads one node cache pod: readiness, version, metrics.
func nodeCacheOf(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod) NodeCache {
	row := NodeCache{Node: orDash(pod.Spec.NodeName), Pod: pod.Name, Ready: podReady(pod)}
	c := container(pod.Spec.Containers, nodeCacheContainer)
	if c == nil {
		row.Problem = "no container named " + nodeCacheContainer
		return row
	}
	row.Version = imageVersion(c.Image)
	if pod.Status.PodIP == "" {
		row.Problem = "no pod IP yet"
		return row
	}
	body, err := client.CoreV1().Pods(pod.Namespace).ProxyGet("http", pod.Name, opsPort(pod, c), "/metrics", nil).DoRaw(ctx)
	if err != nil {
		row.Problem = "metrics unreachable through the API server's pod proxy: " + firstLine(err.Error())
		return row
	}
	m, err := parseNodeCacheMetrics(bytes.NewReader(body))
	if err != nil {
		row.Problem = err.Error()
		return row
	}
	row.Metrics = m
	return row
}

// opsPort is the port of the node cache's ops listener (/metrics,
// /healthz): where the kubelet's liveness probe asks /healthz, else the
// scrape annotation, else the node cache's default.
func opsPort(pod *corev1.Pod, c *corev1.Container) string {
	if p := c.LivenessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Port.Type == intstr.Int {
		return p.HTTPGet.Port.String()
	}
	if port := pod.Annotations[scrapePortAnnotation]; port != "" {
		return port
	}
	return defaultOpsPort
}

// parseNodeCacheMetrics reads the Prometheus text the ops listener serves.
func parseNodeCacheMetrics(r io.Reader) (*NodeCacheMetrics, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse the node cache's metrics: %w", err)
	}
	if families[metricHits] == nil {
		return nil, fmt.Errorf("the metrics lack %s: not a localdns node cache?", metricHits)
	}
	m := &NodeCacheMetrics{
		Hits:   uint64(sum(families[metricHits], nil)),
		Misses: uint64(sum(families[metricMisses], nil)),
		Stale:  uint64(sum(families[metricStale], nil)),
		ServFail: uint64(sum(families[metricRequests], func(l map[string]string) bool {
			return l["rcode"] == "SERVFAIL"
		})),
		Upstreams: []Upstream{},
	}
	if total := m.Hits + m.Misses; total > 0 {
		ratio := float64(m.Hits) / float64(total)
		m.HitRatio = &ratio
	}
	if f := families[metricHealthy]; f != nil {
		for _, s := range f.GetMetric() {
			m.Upstreams = append(m.Upstreams, Upstream{Server: labelsOf(s)["server"], Healthy: value(s) == 1})
		}
		slices.SortFunc(m.Upstreams, func(a, b Upstream) int { return strings.Compare(a.Server, b.Server) })
	}
	return m, nil
}

// sum adds the samples of a counter or gauge family whose labels match.
func sum(f *dto.MetricFamily, match func(map[string]string) bool) float64 {
	var total float64
	for _, s := range f.GetMetric() {
		if match == nil || match(labelsOf(s)) {
			total += value(s)
		}
	}
	return total
}

func value(s *dto.Metric) float64 {
	if c := s.GetCounter(); c != nil {
		return c.GetValue()
	}
	return s.GetGauge().GetValue()
}

func labelsOf(s *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range s.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// cells are the table cells of the metrics columns.
func (m *NodeCacheMetrics) cells() (ratio, servfail, stale, upstream string) {
	if m == nil {
		return "-", "-", "-", "-"
	}
	ratio = "-"
	if m.HitRatio != nil {
		ratio = strconv.FormatFloat(100**m.HitRatio, 'f', 1, 64) + "%"
	}
	healthy := 0
	var down []string
	for _, u := range m.Upstreams {
		if u.Healthy {
			healthy++
		} else {
			down = append(down, u.Server)
		}
	}
	upstream = fmt.Sprintf("%d/%d healthy", healthy, len(m.Upstreams))
	if len(down) > 0 {
		upstream += " (down: " + strings.Join(down, ", ") + ")"
	}
	return ratio, strconv.FormatUint(m.ServFail, 10), strconv.FormatUint(m.Stale, 10), upstream
}

// podReady reports the pod's Ready condition.
func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func container(containers []corev1.Container, name string) *corev1.Container {
	i := slices.IndexFunc(containers, func(c corev1.Container) bool { return c.Name == name })
	if i < 0 {
		return nil
	}
	return &containers[i]
}

// imageVersion is the tag (or digest) of an image reference.
func imageVersion(image string) string {
	if _, digest, ok := strings.Cut(image, "@"); ok {
		return digest
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[i+1:]
	}
	return "latest"
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

package kubectlplugin

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestStatus reads the whole installation through the API server: the
// webhook's flags and configuration, the caBundle the real self-managed
// certificates wrote, a dry-run pod the real webhook injected, node-a's
// real node cache metrics through the pod proxy, node-b's unreachable ones,
// node-c without a node cache, and every namespace.
func TestStatus(t *testing.T) {
	r := run(t, "", "status")
	if !errors.Is(r.err, ErrUnhealthy) {
		t.Errorf("status: err %v, want ErrUnhealthy (node-b's node cache is not ready)", r.err)
	}
	golden(t, "status.txt", r.stdout)

	r = run(t, "", "status", "-o", "json")
	var st struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Status
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, r.stdout)
	}
	if st.APIVersion != OutputAPIVersion || st.Kind != "Status" || st.Mode != ModeNamespaceOptIn {
		t.Errorf("status -o json: apiVersion %q kind %q mode %q", st.APIVersion, st.Kind, st.Mode)
	}
	i := slices.IndexFunc(st.NodeCaches, func(n NodeCache) bool { return n.Node == "node-a" })
	if i < 0 || st.NodeCaches[i].Metrics == nil {
		t.Fatalf("status -o json: no metrics for node-a: %+v", st.NodeCaches)
	}
	m := st.NodeCaches[i].Metrics
	// startNodeCache sent one name three times and one SERVFAIL name.
	if m.Hits != 2 || m.Misses != 2 || m.ServFail != 1 || m.Stale != 0 || m.HitRatio == nil || *m.HitRatio != 0.5 {
		t.Errorf("node-a metrics %+v, want 2 hits, 2 misses, 1 SERVFAIL, 0 stale, ratio 0.5", m)
	}
	if len(m.Upstreams) != 1 || !m.Upstreams[0].Healthy {
		t.Errorf("node-a upstreams %+v, want one healthy", m.Upstreams)
	}
}

// TestStatusWebhookDown: with the webhook's Service leading nowhere, the API
// server admits the probe pod unchanged and status says so.
func TestStatusWebhookDown(t *testing.T) {
	f := requireFixture(t)
	t.Cleanup(f.webhookDown())
	r := run(t, "", "status", "-o", "json")
	if !errors.Is(r.err, ErrUnhealthy) {
		t.Errorf("status: err %v, want ErrUnhealthy", r.err)
	}
	var st Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, r.stdout)
	}
	i := slices.IndexFunc(st.Checks, func(c Check) bool { return c.Name == "admission" })
	if i < 0 || st.Checks[i].State != StateFail || !strings.Contains(st.Checks[i].Detail, "admitted unchanged") {
		t.Errorf("admission check %+v, want a failure saying the pod was admitted unchanged", st.Checks)
	}
}

// TestStatusNotInstalled: another system namespace holds no localdns.
func TestStatusNotInstalled(t *testing.T) {
	r := run(t, "", "status", "--system-namespace", "blog")
	if !errors.Is(r.err, ErrUnhealthy) {
		t.Errorf("status: err %v, want ErrUnhealthy", r.err)
	}
	golden(t, "status-not-installed.txt", r.stdout)
}

package nodecache

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/localdns/localdns/internal/testenv"
)

func TestParseStartupTaint(t *testing.T) {
	good := []struct {
		args      []string
		key, node string
	}{
		{nil, "", ""},
		{[]string{"--startup-taint", DefaultStartupTaint, "--node-name", "node-a"}, DefaultStartupTaint, "node-a"},
		{[]string{"--startup-taint=example.com/dns-not-ready", "--node-name=ip-10-0-0-1.ec2.internal"}, "example.com/dns-not-ready", "ip-10-0-0-1.ec2.internal"},
		{[]string{"--node-name", "node-a"}, "", "node-a"}, // named, nothing to do with it
	}
	for _, tc := range good {
		cfg, err := Parse(tc.args, io.Discard)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.args, err)
			continue
		}
		if cfg.StartupTaint != tc.key || cfg.NodeName != tc.node {
			t.Errorf("Parse(%q): startup taint %q on node %q, want %q on %q", tc.args, cfg.StartupTaint, cfg.NodeName, tc.key, tc.node)
		}
	}
	bad := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--startup-taint", DefaultStartupTaint}, "--node-name: --startup-taint needs this node's name"},
		{[]string{"--startup-taint", "not a key", "--node-name", "node-a"}, `--startup-taint: "not a key" is not a taint key`},
		{[]string{"--startup-taint", "a/b/c", "--node-name", "node-a"}, "--startup-taint"},
		{[]string{"--node-name", "Node_A"}, `--node-name: "Node_A" is not a node name`},
		{[]string{"standby", "--startup-taint", DefaultStartupTaint, "--node-name", "node-a"}, "the node cache removes the startup taint, not the standby"},
	}
	for _, tc := range bad {
		if _, err := Parse(tc.args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.args, err, tc.wantErr)
		}
	}
}

// roundTripFunc hooks into a client's requests.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// clientWithHook is a client of cfg whose requests go through hook, which
// sends them on with next.
func clientWithHook(t *testing.T, cfg *rest.Config, hook func(r *http.Request, next http.RoundTripper) (*http.Response, error)) kubernetes.Interface {
	t.Helper()
	hooked := rest.CopyConfig(cfg)
	hooked.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) { return hook(r, rt) })
	})
	c, err := kubernetes.NewForConfig(hooked)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const taintKey = DefaultStartupTaint

var (
	startupNoSchedule = corev1.Taint{Key: taintKey, Effect: corev1.TaintEffectNoSchedule}
	startupNoExecute  = corev1.Taint{Key: taintKey, Effect: corev1.TaintEffectNoExecute}
	otherTaint        = corev1.Taint{Key: "example.com/dedicated", Value: "dns", Effect: corev1.TaintEffectNoSchedule}
)

func createNode(t *testing.T, c kubernetes.Interface, name string, taints ...corev1.Taint) *corev1.Node {
	t.Helper()
	n, err := c.CoreV1().Nodes().Create(context.Background(), &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "linux"}},
		Spec:       corev1.NodeSpec{Taints: taints, PodCIDR: "10.244.1.0/24"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func withoutStartupTaint(taints []corev1.Taint) []corev1.Taint {
	return slices.DeleteFunc(slices.Clone(taints), func(t corev1.Taint) bool { return t.Key == taintKey })
}

func hasStartupTaint(n *corev1.Node) bool {
	return len(withoutStartupTaint(n.Spec.Taints)) < len(n.Spec.Taints)
}

func getNode(t *testing.T, c kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	n, err := c.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestStartupTaintAgainstAPIServer removes the startup taint through a real
// kube-apiserver: every taint with the key goes, the rest of the Node stays,
// a second removal writes nothing, a conflicting write in between is
// retried from a fresh read, and the node cache's remover retries until the
// Node exists, counting each attempt.
func TestStartupTaintAgainstAPIServer(t *testing.T) {
	cfg := testenv.Start(t, &envtest.Environment{})
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	t.Run("removes every taint with the key, nothing else, once", func(t *testing.T) {
		before := createNode(t, admin, "node-a", otherTaint, startupNoSchedule, startupNoExecute)
		removed, err := RemoveStartupTaint(ctx, admin.CoreV1().Nodes(), "node-a", taintKey)
		if err != nil || !removed {
			t.Fatalf("RemoveStartupTaint = %v, %v; want removed", removed, err)
		}
		after := getNode(t, admin, "node-a")
		// The API server adds taints of its own at creation (not-ready).
		if want := withoutStartupTaint(before.Spec.Taints); len(want) == len(before.Spec.Taints) || !slices.Equal(after.Spec.Taints, want) {
			t.Errorf("taints after removal %+v, want %+v", after.Spec.Taints, want)
		}
		if after.Spec.PodCIDR != before.Spec.PodCIDR || after.Labels["kubernetes.io/os"] != "linux" {
			t.Errorf("the rest of the Node changed: %+v", after)
		}
		removed, err = RemoveStartupTaint(ctx, admin.CoreV1().Nodes(), "node-a", taintKey)
		if err != nil || removed {
			t.Errorf("second RemoveStartupTaint = %v, %v; want nothing to remove", removed, err)
		}
		if again := getNode(t, admin, "node-a"); again.ResourceVersion != after.ResourceVersion {
			t.Errorf("the second removal wrote the Node (resourceVersion %s -> %s)", after.ResourceVersion, again.ResourceVersion)
		}
	})

	t.Run("a node without taints", func(t *testing.T) {
		createNode(t, admin, "node-b")
		if removed, err := RemoveStartupTaint(ctx, admin.CoreV1().Nodes(), "node-b", taintKey); err != nil || removed {
			t.Errorf("RemoveStartupTaint = %v, %v; want nothing to remove", removed, err)
		}
	})

	t.Run("a missing node", func(t *testing.T) {
		_, err := RemoveStartupTaint(ctx, admin.CoreV1().Nodes(), "no-such-node", taintKey)
		if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), "node no-such-node") {
			t.Errorf("RemoveStartupTaint = %v, want NotFound naming the node", err)
		}
	})

	t.Run("a conflicting write is retried from a fresh read", func(t *testing.T) {
		createNode(t, admin, "node-c", startupNoSchedule)
		// Someone else (the kubelet, say) updates the Node between the
		// remover's read and its write: the API server refuses the stale
		// write with a conflict.
		var puts atomic.Int32
		c := clientWithHook(t, cfg, func(r *http.Request, next http.RoundTripper) (*http.Response, error) {
			if r.Method == http.MethodPut && puts.Add(1) == 1 {
				n := getNode(t, admin, "node-c")
				n.Labels["example.com/touched"] = "yes"
				if _, err := admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
					t.Errorf("the competing update: %v", err)
				}
			}
			return next.RoundTrip(r)
		})
		removed, err := RemoveStartupTaint(ctx, c.CoreV1().Nodes(), "node-c", taintKey)
		if err != nil || !removed {
			t.Fatalf("RemoveStartupTaint = %v, %v; want removed after a conflict", removed, err)
		}
		after := getNode(t, admin, "node-c")
		if hasStartupTaint(after) || after.Labels["example.com/touched"] != "yes" || puts.Load() != 2 {
			t.Errorf("after %d writes: taints %+v, labels %v; want two writes, no taint, the competing label kept",
				puts.Load(), after.Spec.Taints, after.Labels)
		}
	})

	t.Run("the node cache removes it once ready, retrying until it can", func(t *testing.T) {
		// The Node appears only after the first attempt found none: the
		// remover must count the error, retry, then remove.
		var created atomic.Bool
		c := clientWithHook(t, cfg, func(r *http.Request, next http.RoundTripper) (*http.Response, error) {
			resp, err := next.RoundTrip(r)
			if r.Method == http.MethodGet && !created.Swap(true) {
				createNode(t, admin, "node-d", otherTaint, startupNoSchedule)
			}
			return resp, err
		})
		reg := prometheus.NewRegistry()
		s, err := newStartupTaintWith(c.CoreV1().Nodes(), taintKey, "node-d", reg, discard())
		if err != nil {
			t.Fatal(err)
		}
		s.backoff = backoff{initial: time.Millisecond, max: time.Millisecond}
		var readyCalls atomic.Int32
		ready := func() error {
			if readyCalls.Add(1) == 1 {
				return errors.New("not listening")
			}
			return nil
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.removeWhenReady(ctx, ready)
		}()
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Fatal("removeWhenReady did not return")
		}
		if after := getNode(t, admin, "node-d"); hasStartupTaint(after) || !slices.Contains(after.Spec.Taints, otherTaint) {
			t.Errorf("taints %+v, want %s gone and %s kept", after.Spec.Taints, taintKey, otherTaint.Key)
		}
		if readyCalls.Load() < 2 {
			t.Errorf("removed before ready reported nil (%d calls)", readyCalls.Load())
		}
		for result, want := range map[string]float64{taintError: 1, taintRemoved: 1, taintAbsent: 0} {
			if got := labelledMetric(t, reg, "localdns_nodecache_startup_taint_removals_total", "result", result); got != want {
				t.Errorf("startup_taint_removals_total{result=%q} = %v, want %v", result, got, want)
			}
		}
	})

	t.Run("stops when the context ends before ready", func(t *testing.T) {
		s, err := newStartupTaintWith(admin.CoreV1().Nodes(), taintKey, "node-a", prometheus.NewRegistry(), discard())
		if err != nil {
			t.Fatal(err)
		}
		stopped, cancel := context.WithCancel(ctx)
		cancel()
		s.removeWhenReady(stopped, func() error { return errors.New("never ready") })
	})
}

// labelledMetric is the value of the series of name with label=value in reg.
func labelledMetric(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no series %s{%s=%q}", name, label, value)
	return 0
}

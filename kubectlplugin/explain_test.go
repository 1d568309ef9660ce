package kubectlplugin

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Manifests explained from standard input.
const (
	annotatedPod = `apiVersion: v1
kind: Pod
metadata:
  name: annotated
  namespace: cart
  annotations:
    localdns.io/timeout: "99"
    localdns.io/options: use-vc,bad option
    localdns.io/searches: corp.example
spec:
  containers:
  - name: app
    image: registry.example/app:1
`
	kubeSystemPod = `{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "dns-helper", "namespace": "kube-system", "labels": {"localdns.io/inject": "true"}},
 "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}}`
	defaultDNSPod = `apiVersion: v1
kind: Pod
metadata:
  name: resolver
spec:
  dnsPolicy: Default
  containers:
  - name: app
    image: registry.example/app:1
`
	twoPods = defaultDNSPod + "---\n" + defaultDNSPod
	config  = `apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
`
)

// TestExplain creates each pod with a server-side dry run through the real
// webhook and shows what came back, and why.
func TestExplain(t *testing.T) {
	tests := []struct {
		name   string
		stdin  string
		args   []string
		golden string
	}{
		{"running pod of a Deployment", "", []string{"explain", "-n", "shop", "web-5d8f7-aaaaa"}, "explain-web.txt"},
		{"as YAML", "", []string{"explain", "-n", "shop", "web-5d8f7-aaaaa", "-o", "yaml"}, "explain-web.yaml"},
		{"running pod of a StatefulSet with a volume claim template", "", []string{"explain", "-n", "shop", "db-0"}, "explain-db.txt"},
		{"injected bare pod", "", []string{"explain", "-n", "cart", "api"}, "explain-api.txt"},
		{"musl Deployment manifest", "", []string{"explain", "-f", filepath.Join("testdata", "alpine-deployment.yaml")}, "explain-alpine.txt"},
		{"bad annotations", annotatedPod, []string{"explain", "-f", "-"}, "explain-annotated.txt"},
		{"kube-system", kubeSystemPod, []string{"explain", "-f", "-"}, "explain-kube-system.txt"},
		{"dnsPolicy Default, namespace from -n", defaultDNSPod, []string{"explain", "-n", "shop", "-f", "-"}, "explain-dns-default.txt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, tt.stdin, tt.args...)
			if r.err != nil {
				t.Fatalf("%v: %v", tt.args, r.err)
			}
			golden(t, tt.golden, r.stdout)
		})
	}
}

// TestExplainStoresNothing: the dry run leaves no pod behind.
func TestExplainStoresNothing(t *testing.T) {
	client := clientset(t)
	before, err := client.CoreV1().Pods("shop").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r := run(t, defaultDNSPod, "explain", "-n", "shop", "-f", "-"); r.err != nil {
		t.Fatal(r.err)
	}
	after, err := client.CoreV1().Pods("shop").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Items) != len(before.Items) {
		t.Errorf("shop had %d pods before explain, %d after", len(before.Items), len(after.Items))
	}
}

// TestExplainWebhookDown: the webhook would inject the pod, the API server
// cannot call it: webhook-not-reached.
func TestExplainWebhookDown(t *testing.T) {
	f := requireFixture(t)
	t.Cleanup(f.webhookDown())
	pod := `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late"}, "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}}`
	r := run(t, pod, "explain", "-n", "shop", "-f", "-", "-o", "json")
	if r.err != nil {
		t.Fatal(r.err)
	}
	var e Explanation
	if err := json.Unmarshal([]byte(r.stdout), &e); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if e.Injected || e.Reason != ReasonWebhookNotReached || e.Webhook != "namespace.localdns.io" || e.DNSPolicy != string(corev1.DNSClusterFirst) {
		t.Errorf("explanation %+v, want not injected, %s, selected by namespace.localdns.io, dnsPolicy ClusterFirst", e, ReasonWebhookNotReached)
	}
}

func TestExplainBadInput(t *testing.T) {
	tests := []struct {
		name    string
		stdin   string
		args    []string
		wantErr string
	}{
		{"nothing to explain", "", []string{"explain"}, "give either one pod name or -f MANIFEST"},
		{"pod and manifest", "", []string{"explain", "web", "-f", "-"}, "give either one pod name or -f MANIFEST"},
		{"two objects", twoPods, []string{"explain", "-f", "-"}, "-: want one object, found 2"},
		{"no pod in it", config, []string{"explain", "-f", "-"}, "-: a ConfigMap has no pod to explain"},
		{"missing pod", "", []string{"explain", "-n", "shop", "nothing"}, `read pod shop/nothing: pods "nothing" not found`},
		{"missing file", "", []string{"explain", "-f", filepath.Join("testdata", "absent.yaml")}, "read testdata/absent.yaml: open testdata/absent.yaml: no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, tt.stdin, tt.args...)
			if r.err == nil || !strings.Contains(r.err.Error(), tt.wantErr) {
				t.Errorf("%v: err %v, want %q", tt.args, r.err, tt.wantErr)
			}
		})
	}
}

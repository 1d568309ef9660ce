package localdns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/localdns/localdns/e2e/cluster"
)

// pluginNamespace is the scratch namespace CheckKubectlPlugin creates,
// fills with a pod before opting it in, and deletes.
const pluginNamespace = "localdns-e2e-plugin"

// pluginDeployment is the workload whose pod predates the opt-in.
const pluginDeployment = "late-opt-in"

// The parts of the plugin's -o json output this check reads; written here
// rather than imported, so that the JSON itself is what is checked.
type (
	pluginStatus struct {
		Kind       string                 `json:"kind"`
		Mode       string                 `json:"mode"`
		Checks     []pluginCheck          `json:"checks"`
		NodeCaches []pluginNodeCache      `json:"nodeCaches"`
		Namespaces []pluginNamespaceState `json:"namespaces"`
	}
	pluginCheck struct {
		Name   string `json:"name"`
		State  string `json:"state"`
		Detail string `json:"detail"`
	}
	pluginNodeCache struct {
		Node    string `json:"node"`
		Pod     string `json:"pod"`
		Ready   bool   `json:"ready"`
		Version string `json:"version"`
		Problem string `json:"problem"`
		Metrics *struct {
			Upstreams []pluginUpstream `json:"upstreams"`
		} `json:"metrics"`
	}
	pluginUpstream struct {
		Server  string `json:"server"`
		Healthy bool   `json:"healthy"`
	}
	pluginNamespaceState struct {
		Name   string `json:"name"`
		Inject bool   `json:"inject"`
		Why    string `json:"why"`
	}
	pluginPods struct {
		Items []struct {
			Name     string         `json:"name"`
			Reason   string         `json:"reason"`
			OptIn    string         `json:"optIn"`
			Workload pluginWorkload `json:"workload"`
		} `json:"items"`
	}
	pluginWorkload struct {
		Kind string `json:"kind"`
		Name string `json:"name"`
	}
	pluginExplanation struct {
		Source      string   `json:"source"`
		Current     string   `json:"current"`
		Injected    bool     `json:"injected"`
		Mode        string   `json:"mode"`
		Nameservers []string `json:"nameservers"`
	}
	pluginRestart struct {
		Items []struct {
			Workload pluginWorkload `json:"workload"`
			Action   string         `json:"action"`
		} `json:"items"`
	}
)

// CheckKubectlPlugin builds kubectl-localdns and runs it against the
// installed cluster the way an operator would:
//   - status: every check ok, every node's node cache ready with metrics
//     read through the API server's pod proxy and a healthy kube-dns;
//   - pods: a Deployment's pod created before its namespace was opted in is
//     listed as created-before-opt-in, owned by the Deployment;
//   - explain: that pod's template would now get the node cache;
//   - restart: rolls the Deployment, after which its pods are injected and
//     pods lists none.
//
// It leaves nothing behind: the scratch namespace is deleted.
func CheckKubectlPlugin(ctx context.Context, c *cluster.Cluster, repoDir, workDir string) error {
	bin := filepath.Join(workDir, "kubectl-localdns")
	if err := c.Step("build kubectl-localdns", func() error {
		build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/kubectl-localdns")
		build.Dir = repoDir
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/kubectl-localdns: %w: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}); err != nil {
		return err
	}
	plugin := func(args ...string) (string, error) { return runPlugin(ctx, c, bin, args...) }

	if err := c.Step("kubectl localdns status", func() error { return checkPluginStatus(plugin) }); err != nil {
		return err
	}
	defer func() {
		// Best effort: the cluster is torn down after the run anyway.
		c.Kubectl(ctx, nil, "delete", "namespace", pluginNamespace, "--ignore-not-found", "--wait=false") //nolint:errcheck
	}()
	var podName string
	if err := c.Step("a Deployment's pod created before its namespace is opted in", func() error {
		var err error
		podName, err = podBeforeOptIn(ctx, c)
		return err
	}); err != nil {
		return err
	}
	if err := c.Step("kubectl localdns pods lists it", func() error {
		return checkPluginPods(plugin, podName)
	}); err != nil {
		return err
	}
	if err := c.Step("kubectl localdns explain: a restart would inject it", func() error {
		return checkPluginExplain(plugin, podName)
	}); err != nil {
		return err
	}
	return c.Step("kubectl localdns restart rolls the Deployment; its new pods are injected", func() error {
		return checkPluginRestart(ctx, c, plugin)
	})
}

// runPlugin runs the plugin inside the node's network namespace, where the
// API server is reachable, as cluster admin; the error carries stderr.
func runPlugin(ctx context.Context, c *cluster.Cluster, bin string, args ...string) (string, error) {
	cmd := c.NodeCommand(ctx, append([]string{bin, "--kubeconfig=" + c.Kubeconfig()}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl localdns %s: %w: %s\n%s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()), stdout.String())
	}
	return stdout.String(), nil
}

func decodePlugin(out string, into any) error {
	if err := json.Unmarshal([]byte(out), into); err != nil {
		return fmt.Errorf("decode the plugin's JSON: %w\n%s", err, out)
	}
	return nil
}

// checkPluginStatus: the plugin exits 0 (healthy), and its report agrees
// with the installation: namespace opt-in, every check ok, a ready node
// cache on every node with metrics and a healthy upstream, kube-system out.
func checkPluginStatus(plugin func(...string) (string, error)) error {
	table, err := plugin("status")
	if err != nil {
		return err
	}
	for _, header := range []string{"CHECK", "NODE", "NAMESPACE"} {
		if !strings.Contains(table, header) {
			return fmt.Errorf("status prints no %s table:\n%s", header, table)
		}
	}
	out, err := plugin("status", "-o", "json")
	if err != nil {
		return err
	}
	var st pluginStatus
	if err := decodePlugin(out, &st); err != nil {
		return err
	}
	var problems []string
	if st.Kind != "Status" || st.Mode != "namespace-opt-in" {
		problems = append(problems, fmt.Sprintf("kind %q mode %q, want Status in namespace-opt-in", st.Kind, st.Mode))
	}
	for _, name := range []string{"webhook", "mode", "configuration", "caBundle", "kube-dns", "admission", "node cache"} {
		i := slices.IndexFunc(st.Checks, func(ch pluginCheck) bool { return ch.Name == name })
		switch {
		case i < 0:
			problems = append(problems, "no check "+name)
		case st.Checks[i].State != "ok":
			problems = append(problems, fmt.Sprintf("check %s: %s: %s", name, st.Checks[i].State, st.Checks[i].Detail))
		}
	}
	if len(st.NodeCaches) == 0 {
		problems = append(problems, "no node cache listed")
	}
	for _, n := range st.NodeCaches {
		switch {
		case !n.Ready || n.Version != imageTag || n.Problem != "":
			problems = append(problems, fmt.Sprintf("node %s: pod %q ready %v version %q problem %q", n.Node, n.Pod, n.Ready, n.Version, n.Problem))
		case n.Metrics == nil || !slices.ContainsFunc(n.Metrics.Upstreams, func(u pluginUpstream) bool { return u.Healthy }):
			problems = append(problems, fmt.Sprintf("node %s: no healthy upstream in %+v", n.Node, n.Metrics))
		}
	}
	if i := slices.IndexFunc(st.Namespaces, func(ns pluginNamespaceState) bool { return ns.Name == "kube-system" }); i < 0 || st.Namespaces[i].Inject || st.Namespaces[i].Why != "system-namespace" {
		problems = append(problems, "kube-system is not listed as out (system-namespace)")
	}
	if len(problems) > 0 {
		return fmt.Errorf("status: %s\n%s", strings.Join(problems, "; "), table)
	}
	return nil
}

// podBeforeOptIn creates the scratch namespace (not opted in) with a
// one-replica Deployment, waits for its pod, then opts the namespace in.
func podBeforeOptIn(ctx context.Context, c *cluster.Cluster) (string, error) {
	if err := EnsureNamespace(ctx, c, pluginNamespace, false); err != nil {
		return "", err
	}
	manifest := fmt.Sprintf(`{"apiVersion": "apps/v1", "kind": "Deployment",
 "metadata": {"name": %[1]q, "namespace": %[2]q},
 "spec": {"replicas": 1, "selector": {"matchLabels": {"app": %[1]q}},
  "template": {"metadata": {"labels": {"app": %[1]q}},
   "spec": {"terminationGracePeriodSeconds": 1,
    "containers": [{"name": "sleep", "image": %[3]q, "imagePullPolicy": "Never", "args": ["-c", "sleep 3600"]}]}}}}`,
		pluginDeployment, pluginNamespace, cluster.BusyboxImage)
	if err := c.Apply(ctx, []byte(manifest)); err != nil {
		return "", err
	}
	var name string
	if err := poll(ctx, 2*time.Minute, func() error {
		out, err := c.Kubectl(ctx, nil, "-n", pluginNamespace, "get", "pods", "-l", "app="+pluginDeployment, "-o", "jsonpath={.items[*].metadata.name}")
		if err != nil {
			return err
		}
		if name = strings.TrimSpace(out); name == "" || strings.Contains(name, " ") {
			return fmt.Errorf("pods of %s: %q, want one", pluginDeployment, name)
		}
		return nil
	}); err != nil {
		return "", err
	}
	return name, EnsureNamespace(ctx, c, pluginNamespace, true)
}

func checkPluginPods(plugin func(...string) (string, error), podName string) error {
	out, err := plugin("pods", "-n", pluginNamespace, "-o", "json")
	if err != nil {
		return err
	}
	var list pluginPods
	if err := decodePlugin(out, &list); err != nil {
		return err
	}
	if len(list.Items) != 1 {
		return fmt.Errorf("pods -n %s: %d pods, want %s:\n%s", pluginNamespace, len(list.Items), podName, out)
	}
	p := list.Items[0]
	if p.Name != podName || p.Reason != "created-before-opt-in" || p.OptIn != "namespace label" ||
		p.Workload.Kind != "Deployment" || p.Workload.Name != pluginDeployment {
		return fmt.Errorf("pods -n %s: %+v, want %s created-before-opt-in by namespace label, owned by Deployment %s", pluginNamespace, p, podName, pluginDeployment)
	}
	return nil
}

func checkPluginExplain(plugin func(...string) (string, error), podName string) error {
	out, err := plugin("explain", "-n", pluginNamespace, podName, "-o", "json")
	if err != nil {
		return err
	}
	var e pluginExplanation
	if err := decodePlugin(out, &e); err != nil {
		return err
	}
	if !e.Injected || e.Mode != ModeNodeCache || len(e.Nameservers) == 0 || e.Nameservers[0] != LocalIP ||
		e.Current != "not injected" || !strings.Contains(e.Source, "ReplicaSet/"+pluginDeployment+"-") {
		return fmt.Errorf("explain %s: %+v, want injected in mode %s with %s first, from its ReplicaSet's template, currently not injected", podName, e, ModeNodeCache, LocalIP)
	}
	return nil
}

// checkPluginRestart restarts, waits for the rollout, and checks the pods
// themselves (not only the plugin's word) are injected now.
func checkPluginRestart(ctx context.Context, c *cluster.Cluster, plugin func(...string) (string, error)) error {
	out, err := plugin("restart", "-n", pluginNamespace, "-o", "json")
	if err != nil {
		return err
	}
	var r pluginRestart
	if err := decodePlugin(out, &r); err != nil {
		return err
	}
	if len(r.Items) != 1 || r.Items[0].Workload.Kind != "Deployment" || r.Items[0].Workload.Name != pluginDeployment || r.Items[0].Action != "restarted" {
		return fmt.Errorf("restart -n %s: %s, want Deployment %s restarted", pluginNamespace, out, pluginDeployment)
	}
	if _, err := c.Kubectl(ctx, nil, "-n", pluginNamespace, "rollout", "status", "deployment/"+pluginDeployment, "--timeout=3m"); err != nil {
		return err
	}
	if out, err = plugin("pods", "-n", pluginNamespace, "-o", "json"); err != nil {
		return err
	}
	var left pluginPods
	if err := decodePlugin(out, &left); err != nil {
		return err
	}
	if len(left.Items) != 0 {
		return fmt.Errorf("after the restart, pods still lists %+v", left.Items)
	}
	out, err = c.Kubectl(ctx, nil, "-n", pluginNamespace, "get", "pods", "-l", "app="+pluginDeployment, "-o", "json")
	if err != nil {
		return err
	}
	var pods struct {
		Items []struct {
			Metadata struct {
				Name              string            `json:"name"`
				DeletionTimestamp *string           `json:"deletionTimestamp"`
				Annotations       map[string]string `json:"annotations"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &pods); err != nil {
		return fmt.Errorf("decode pods: %w", err)
	}
	live := 0
	for _, p := range pods.Items {
		if p.Metadata.DeletionTimestamp != nil {
			continue // the old pod, terminating
		}
		live++
		if got := p.Metadata.Annotations[InjectedAnnotation]; got != ModeNodeCache {
			return fmt.Errorf("after the restart, pod %s has %s=%q, want %s", p.Metadata.Name, InjectedAnnotation, got, ModeNodeCache)
		}
	}
	if live == 0 {
		return errors.New("after the restart, no pod of " + pluginDeployment + " is left")
	}
	return nil
}

package manifests

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/localdns/localdns/nodecache"
)

// startupTaintPolicy names the startup taint's RBAC, and the
// ValidatingAdmissionPolicy (and binding) that confines it.
const startupTaintPolicy = "localdns-nodecache-startup-taint"

// nodeNameExtra is the user-info extra of a bound service-account token
// naming the Node its pod runs on (Kubernetes >= 1.30).
const nodeNameExtra = "authentication.kubernetes.io/node-name"

var nodecacheIdentity = "system:serviceaccount:" + namespace + ":localdns-nodecache"

// checkStartupTaintPolicy: with the startup taint on, the policy and its
// binding exist, deny, match the node cache's identity and Node updates,
// name the node cache's --startup-taint key, tie the Node to the token's
// node-name, and compare every other field of the Node's spec and the
// metadata a client sets; off, neither is installed.
func checkStartupTaintPolicy(t *testing.T, m manifest, in install) {
	t.Helper()
	p := installedPolicy(t, m, startupTaintPolicy, in.startupTaint != "", "with the startup taint only")
	if p == nil {
		return
	}
	rules := p.MatchConstraints.ResourceRules
	if len(rules) != 1 || !slices.Equal(rules[0].Resources, []string{"nodes"}) || len(rules[0].ResourceNames) != 0 ||
		!slices.Contains(rules[0].Operations, admissionregistrationv1.Update) {
		t.Errorf("match constraints %+v: want UPDATE of every Node", rules)
	}
	if want := fmt.Sprintf("request.userInfo.username == %q", nodecacheIdentity); len(p.MatchConditions) != 1 || p.MatchConditions[0].Expression != want {
		t.Errorf("match conditions %+v: want exactly %s", p.MatchConditions, want)
	}
	if want := fmt.Sprintf("%q", in.startupTaint); len(p.Variables) != 1 || p.Variables[0].Name != "key" || p.Variables[0].Expression != want {
		t.Errorf("variables %+v: want key = %s, the node cache's --startup-taint", p.Variables, want)
	}
	var expressions strings.Builder
	for _, v := range p.Validations {
		expressions.WriteString(v.Expression + "\n")
	}
	for _, want := range []string{
		"request.userInfo.?extra[?'" + nodeNameExtra + "'].orValue([]) == [object.metadata.name]",
		"object.spec.?taints.orValue([]) == oldObject.spec.?taints.orValue([]).filter(t, t.key != variables.key)",
		// Every other spec field, present and future, both ways.
		"object.spec.all(f, f == 'taints' || (f in oldObject.spec && object.spec[f] == oldObject.spec[f]))",
		"oldObject.spec.all(f, f == 'taints' || f in object.spec)",
	} {
		if !strings.Contains(expressions.String(), want) {
			t.Errorf("the policy does not check %s", want)
		}
	}
	for _, field := range []string{"labels", "annotations", "ownerReferences", "finalizers"} {
		if c := "object.metadata.?" + field + " == oldObject.metadata.?" + field; !strings.Contains(expressions.String(), c) {
			t.Errorf("the policy does not compare metadata.%s (%s)", field, c)
		}
	}
}

// checkStartupTaintPolicyEnforced changes Nodes as the node cache's
// ServiceAccount (impersonated, with the node-name its bound token carries)
// through the real API server, where the startup-taint overlay is applied:
// the node cache's own RemoveStartupTaint on its own Node passes; on another
// Node, without a node-name, or changing anything else, the policy denies.
func checkStartupTaintPolicyEnforced(t *testing.T, c cluster) {
	t.Helper()
	ctx := t.Context()
	adminCfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	admin := kubernetes.NewForConfigOrDie(adminCfg)
	as := func(node string) kubernetes.Interface {
		cfg := rest.CopyConfig(adminCfg)
		cfg.Impersonate = rest.ImpersonationConfig{
			UserName: nodecacheIdentity,
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
		}
		if node != "" {
			cfg.Impersonate.Extra = map[string][]string{nodeNameExtra: {node}}
		}
		return kubernetes.NewForConfigOrDie(cfg)
	}
	key := nodecache.DefaultStartupTaint
	startup := corev1.Taint{Key: key, Effect: corev1.TaintEffectNoSchedule}
	other := corev1.Taint{Key: "example.com/dedicated", Value: "dns", Effect: corev1.TaintEffectNoSchedule}
	for _, name := range []string{"node-a", "node-b", "node-cordoned"} {
		_, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "linux"}},
			Spec:       corev1.NodeSpec{Taints: []corev1.Taint{other, startup}, Unschedulable: name == "node-cordoned"},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	denied := func(err error) bool {
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+startupTaintPolicy+"'")
	}
	// update applies change to a fresh read of Node name and sends it as
	// client, as the node cache does (its grant is update, not patch), in a
	// server-side dry run: a policy that lets one through changes nothing
	// for the next case.
	update := func(client kubernetes.Interface, name string, change func(*corev1.Node)) error {
		n, err := admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		change(n)
		_, err = client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
		return err
	}
	removeStartup := func(n *corev1.Node) {
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == key })
	}
	alsoRemoving := func(change func(*corev1.Node)) func(*corev1.Node) {
		return func(n *corev1.Node) { removeStartup(n); change(n) }
	}

	// The API server enforces a new policy once it has loaded it: wait for
	// the first denial (dry runs: nothing is persisted meanwhile).
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		last = update(as("node-a"), "node-b", removeStartup)
		return denied(last), nil
	}); err != nil {
		t.Fatalf("the policy never denied the removal from another Node: %v (last: %v)", err, last)
	}

	forbidden := []struct {
		what   string
		as     string // the token's node-name; "": none
		node   string
		change func(*corev1.Node)
	}{
		{"the taint of another Node", "node-a", "node-b", removeStartup},
		{"without a node-name in the token", "", "node-a", removeStartup},
		{"another taint", "node-a", "node-a", func(n *corev1.Node) { n.Spec.Taints = []corev1.Taint{startup} }},
		{"a taint added", "node-a", "node-a", func(n *corev1.Node) {
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "example.com/x", Effect: corev1.TaintEffectNoExecute})
		}},
		{"the startup taint's effect", "node-a", "node-a", func(n *corev1.Node) {
			removeStartup(n)
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: key, Effect: corev1.TaintEffectPreferNoSchedule})
		}},
		// With the taint's removal, which alone would pass.
		{"the Node cordoned", "node-a", "node-a", alsoRemoving(func(n *corev1.Node) { n.Spec.Unschedulable = true })},
		{"the Node uncordoned (a spec field gone)", "node-cordoned", "node-cordoned", alsoRemoving(func(n *corev1.Node) { n.Spec.Unschedulable = false })},
		{"the provider ID", "node-a", "node-a", alsoRemoving(func(n *corev1.Node) { n.Spec.ProviderID = "aws:///x" })},
		{"the pod CIDR", "node-a", "node-a", alsoRemoving(func(n *corev1.Node) { n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.9.0/24", []string{"10.244.9.0/24"} })},
		{"a label", "node-a", "node-a", alsoRemoving(func(n *corev1.Node) { n.Labels["node-role.kubernetes.io/control-plane"] = "" })},
		{"an annotation", "node-a", "node-a", alsoRemoving(func(n *corev1.Node) { n.Annotations = map[string]string{"x": "y"} })},
		{"a finalizer", "node-a", "node-a", alsoRemoving(func(n *corev1.Node) { n.Finalizers = append(n.Finalizers, "example.com/keep") })},
	}
	for _, f := range forbidden {
		if err := update(as(f.as), f.node, f.change); !denied(err) {
			t.Errorf("%s changed by the node cache's identity: want a denial by the policy, got %v", f.what, err)
		}
		if err := update(admin, f.node, f.change); err != nil {
			t.Errorf("%s changed by an administrator: %v", f.what, err)
		}
	}
	// Patch is not granted at all.
	_, err = as("node-a").CoreV1().Nodes().Patch(ctx, "node-a", types.MergePatchType, json.RawMessage(`{"spec":{"taints":null}}`), metav1.PatchOptions{})
	if !apierrors.IsForbidden(err) || denied(err) {
		t.Errorf("a patch by the node cache's identity: %v, want forbidden by RBAC", err)
	}

	// The node cache's own code, on its own Node: passes, and for real.
	removed, err := nodecache.RemoveStartupTaint(ctx, as("node-a").CoreV1().Nodes(), "node-a", key)
	if err != nil || !removed {
		t.Fatalf("RemoveStartupTaint on its own Node = %v, %v; want removed", removed, err)
	}
	n, err := admin.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == key }) || !slices.Contains(n.Spec.Taints, other) {
		t.Errorf("node-a's taints %+v: want %s gone, %s kept", n.Spec.Taints, key, other.Key)
	}
	if removed, err := nodecache.RemoveStartupTaint(ctx, as("node-a").CoreV1().Nodes(), "node-b", key); !denied(err) || removed {
		t.Errorf("RemoveStartupTaint on another Node = %v, %v; want the policy's denial", removed, err)
	}
}

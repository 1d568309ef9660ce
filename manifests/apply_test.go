package manifests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/localdns/localdns/internal/testenv"
)

// standInCRD is a schema-less CustomResourceDefinition standing in for a
// third-party one (cert-manager, Prometheus Operator): enough for the API
// server to accept our objects of that kind, not to validate their fields.
func standInCRD(group, kind, plural string) *apiextensionsv1.CustomResourceDefinition {
	preserve := true
	return &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: plural + "." + group},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: group,
			Names: apiextensionsv1.CustomResourceDefinitionNames{Kind: kind, ListKind: kind + "List", Plural: plural, Singular: strings.ToLower(kind)},
			Scope: apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object", XPreserveUnknownFields: &preserve,
				}},
			}},
		},
	}
}

// cluster is a real kube-apiserver + etcd and a kubectl pointed at it.
type cluster struct {
	t          *testing.T
	kubeconfig string
}

func bootCluster(t *testing.T) cluster {
	t.Helper()
	env := &envtest.Environment{CRDs: []*apiextensionsv1.CustomResourceDefinition{
		standInCRD("cert-manager.io", "Issuer", "issuers"),
		standInCRD("cert-manager.io", "Certificate", "certificates"),
		standInCRD("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
	}}
	testenv.Start(t, env)
	admin, err := env.AddUser(envtest.User{Name: "localdns-deploy-test", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return cluster{t: t, kubeconfig: path}
}

// kubectl runs kubectl against the cluster with stdin, returning its
// standard output; the error carries its standard error.
func (c cluster) kubectl(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command(kubectl(c.t), append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), err
}

// apply server-side applies a rendered kustomization. kubectl's default
// --validate=strict makes the API server reject unknown or misplaced fields.
func (c cluster) apply(rendered []byte) (string, error) {
	return c.kubectl(rendered, "apply", "--server-side", "--field-manager=localdns-manifests-test", "-f", "-")
}

// TestApplyToAPIServer applies every kustomization, in the order a user
// would (install, switch overlays, add monitoring, uninstall), to a real
// API server, so schema errors fail; then checks what the API server
// decides about the result: RBAC as the service accounts see it, and the
// webhook pods against Pod Security "restricted".
func TestApplyToAPIServer(t *testing.T) {
	c := bootCluster(t)

	t.Run("validation is strict", func(t *testing.T) {
		// The check below is only worth something if a schema error fails.
		bad := []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: default}\ndataa: {a: b}\n")
		if out, err := c.apply(bad); err == nil || !strings.Contains(err.Error(), "dataa") {
			t.Fatalf("an unknown field was accepted: %v\n%s", err, out)
		}
	})
	for _, name := range []string{"default", "cluster-wide", "cert-manager", "default", "startup-taint", "monitoring", "uninstall"} {
		out, err := c.apply(render(t, kustomizations[name]))
		if err != nil {
			t.Fatalf("apply %s: %v\n%s", name, err, out)
		}
	}

	// Every chart profile, as a server-side dry run over what is installed:
	// the API server validates each object strictly, nothing changes.
	for name := range chartProfiles {
		t.Run("dry run "+name, func(t *testing.T) {
			out, err := c.kubectl(renderProfile(t, name), "apply", "--server-side", "--dry-run=server", "--force-conflicts",
				"--field-manager=localdns-chart-test", "-f", "-")
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}

	t.Run("the webhook may change only the caBundle", func(t *testing.T) { checkPolicyEnforced(t, c) })
	t.Run("the node cache may only remove the startup taint from its own Node", func(t *testing.T) { checkStartupTaintPolicyEnforced(t, c) })

	t.Run("RBAC", func(t *testing.T) {
		const webhookSA = "system:serviceaccount:localdns-system:localdns-webhook"
		const nodecacheSA = "system:serviceaccount:localdns-system:localdns-nodecache"
		tests := []struct {
			as, verb, resource, namespace string
			want                          bool
		}{
			{webhookSA, "watch", "namespaces", "", true},
			{webhookSA, "get", "services/kube-dns", "kube-system", true},
			{webhookSA, "get", "services/other", "kube-system", false},
			{webhookSA, "list", "services", "default", false},
			{webhookSA, "create", "secrets", namespace, true},
			{webhookSA, "update", "secrets/localdns-webhook-tls", namespace, true},
			{webhookSA, "get", "secrets/other", namespace, false},
			{webhookSA, "create", "secrets", "default", false},
			{webhookSA, "update", "mutatingwebhookconfigurations/localdns-webhook", "", true},
			{webhookSA, "update", "mutatingwebhookconfigurations/someone-elses", "", false},
			{webhookSA, "create", "pods", "default", false},
			{nodecacheSA, "get", "services/kube-dns", "kube-system", true},
			{nodecacheSA, "list", "services", "kube-system", false},
			{nodecacheSA, "get", "secrets/localdns-webhook-tls", namespace, false},
			// The startup-taint overlay is applied: Nodes, confined by its policy.
			{nodecacheSA, "update", "nodes", "", true},
			{nodecacheSA, "get", "nodes", "", true},
			{nodecacheSA, "patch", "nodes", "", false},
			{nodecacheSA, "delete", "nodes", "", false},
			{nodecacheSA, "list", "nodes", "", false},
		}
		for _, tt := range tests {
			args := []string{"auth", "can-i", tt.verb, tt.resource, "--as", tt.as}
			if tt.namespace != "" {
				args = append(args, "-n", tt.namespace)
			}
			out, _ := c.kubectl(nil, args...) // exit status 1 means "no"
			if got := strings.TrimSpace(out) == "yes"; got != tt.want {
				t.Errorf("%s can %s %s in %q: %q, want %v", tt.as, tt.verb, tt.resource, tt.namespace, strings.TrimSpace(out), tt.want)
			}
		}
	})

	t.Run("webhook pods meet Pod Security restricted", func(t *testing.T) {
		var d appsv1.Deployment
		load(t, "default").must("Deployment", "localdns-webhook", &d)
		ns := []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: psa-restricted\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n")
		if out, err := c.apply(ns); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		pod := corev1.Pod{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Name: "webhook-template", Namespace: "psa-restricted"},
			Spec:       d.Spec.Template.Spec,
		}
		pod.Spec.ServiceAccountName = ""
		raw, err := json.Marshal(pod)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := c.kubectl(raw, "create", "--dry-run=server", "-f", "-"); err != nil {
			t.Fatalf("the webhook's pod template is refused under restricted: %v\n%s", err, out)
		}
	})
}

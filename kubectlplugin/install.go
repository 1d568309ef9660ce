package kubectlplugin

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/localdns/localdns/webhook"
)

// The labels manifests/base puts on localdns's workloads; the plugin finds
// the webhook Deployment and the node cache pods by them, so a renamed
// installation (another release name) is found too.
const (
	nameLabel          = "app.kubernetes.io/name"
	webhookAppName     = "localdns-webhook"
	nodeCacheAppName   = "localdns-nodecache"
	webhookContainer   = "webhook"
	nodeCacheContainer = "nodecache"
	// DefaultSystemNamespace is where manifests/base installs localdns.
	DefaultSystemNamespace = "localdns-system"
)

// installation is what the plugin reads of localdns in the cluster: the
// webhook as deployed (its flags parsed by the webhook's own parser, so every
// decision here uses the configuration the webhook runs with), its
// MutatingWebhookConfiguration and the kube-dns fallback it would write.
type installation struct {
	namespace string
	webhook   *appsv1.Deployment
	config    webhook.Config
	// webhookConfig is nil when the MutatingWebhookConfiguration is missing.
	webhookConfig *admissionregistrationv1.MutatingWebhookConfiguration
	// kubeDNSIPs is empty when the webhook would not know them (its skip
	// reason kube-dns-unknown); kubeDNSErr says why they could not be read.
	kubeDNSIPs []netip.Addr
	kubeDNSErr error
}

// errNotInstalled reports a missing webhook Deployment.
type errNotInstalled struct{ namespace string }

func (e errNotInstalled) Error() string {
	return fmt.Sprintf("no Deployment labelled %s=%s in namespace %s: localdns is not installed there (see --system-namespace)",
		nameLabel, webhookAppName, e.namespace)
}

// readInstallation reads the webhook Deployment, parses its flags, and reads
// the configuration and the kube-dns Service it names. Only a missing or
// unreadable Deployment is an error: without its flags nothing can be
// decided the way the webhook decides.
func readInstallation(ctx context.Context, client kubernetes.Interface, namespace string) (*installation, error) {
	deployments, err := client.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{LabelSelector: nameLabel + "=" + webhookAppName})
	if err != nil {
		return nil, fmt.Errorf("list the webhook Deployment in %s: %w", namespace, err)
	}
	if len(deployments.Items) == 0 {
		return nil, errNotInstalled{namespace}
	}
	deploy := &deployments.Items[0] // the list is sorted by name
	cfg, err := webhookFlags(deploy)
	if err != nil {
		return nil, err
	}
	in := &installation{namespace: namespace, webhook: deploy, config: cfg}

	whc, err := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, cfg.WebhookConfigName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("read MutatingWebhookConfiguration %s: %w", cfg.WebhookConfigName, err)
	default:
		in.webhookConfig = whc
	}
	in.kubeDNSIPs, in.kubeDNSErr = kubeDNSIPs(ctx, client, cfg)
	return in, nil
}

// webhookFlags parses the webhook container's arguments with the webhook's
// own flag parser, after expanding $(VAR) references as the kubelet does.
func webhookFlags(deploy *appsv1.Deployment) (webhook.Config, error) {
	containers := deploy.Spec.Template.Spec.Containers
	i := slices.IndexFunc(containers, func(c corev1.Container) bool { return c.Name == webhookContainer })
	if i < 0 {
		if len(containers) != 1 {
			return webhook.Config{}, fmt.Errorf("the webhook Deployment %s/%s has no container named %s", deploy.Namespace, deploy.Name, webhookContainer)
		}
		i = 0
	}
	env := containerEnv(containers[i], deploy.Namespace)
	args := expandArgs(containers[i].Args, env)
	getenv := func(name string) string { return env[name] }
	cfg, err := webhook.ParseFlags(webhookAppName, args, getenv, io.Discard)
	if err != nil {
		return webhook.Config{}, fmt.Errorf("the flags of Deployment %s/%s: %w", deploy.Namespace, deploy.Name, err)
	}
	return cfg, nil
}

// containerEnv is the container's environment as far as it is known without
// the running pod: literal values, and the namespace from the downward API.
func containerEnv(c corev1.Container, namespace string) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			env[e.Name] = namespace
		}
	}
	return env
}

// varRef is a $(VAR) reference in a container argument, or the $$ escape.
var varRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expandArgs substitutes $(VAR) references with env the way the kubelet does:
// unknown references stay as written, $$ becomes $.
func expandArgs(args []string, env map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = varRef.ReplaceAllStringFunc(a, func(ref string) string {
			if ref == "$$" {
				return "$"
			}
			if v, ok := env[ref[2:len(ref)-1]]; ok {
				return v
			}
			return ref
		})
	}
	return out
}

// kubeDNSIPs are the fallback nameservers the webhook chooses from:
// --kube-dns-ip, else the ClusterIPs of --kube-dns-service (none when absent
// or headless, the webhook's kube-dns-unknown).
func kubeDNSIPs(ctx context.Context, client kubernetes.Interface, cfg webhook.Config) ([]netip.Addr, error) {
	if len(cfg.KubeDNSIPs) > 0 {
		return cfg.KubeDNSIPs, nil
	}
	svc, err := client.CoreV1().Services(cfg.KubeDNSService.Namespace).Get(ctx, cfg.KubeDNSService.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read Service %s: %w", cfg.KubeDNSService, err)
	}
	return webhook.ServiceClusterIPs(svc)
}

// env is what the webhook would know of the cluster now. Native sidecars only
// change where a stub goes, not whether a pod is injected. When this user
// may not read the kube-dns Service, the webhook (which may) is assumed to
// know it rather than every pod reported as skipped for kube-dns-unknown:
// the unspecified address of each family stands for its ClusterIPs.
func (in *installation) env() webhook.Env {
	if in.kubeDNSErr != nil {
		unknown := []netip.Addr{netip.IPv4Unspecified()}
		switch in.config.IPFamilies {
		case webhook.IPFamiliesIPv6:
			unknown = []netip.Addr{netip.IPv6Unspecified()}
		case webhook.IPFamiliesDual:
			unknown = append(unknown, netip.IPv6Unspecified())
		}
		return webhook.Env{KubeDNSIPs: unknown}
	}
	return webhook.Env{KubeDNSIPs: in.kubeDNSIPs}
}

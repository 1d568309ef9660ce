package kubectlplugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/localdns/localdns/webhook"
)

// State is the outcome of one check.
type State string

// The states, from good to bad.
const (
	StateOK   State = "ok"
	StateWarn State = "warn"
	StateFail State = "fail"
)

// Check is one line of the status: what was checked, how it went, details.
type Check struct {
	Name   string `json:"name"`
	State  State  `json:"state"`
	Detail string `json:"detail"`
}

func passed(name, detail string) Check { return Check{Name: name, State: StateOK, Detail: detail} }
func warned(name, detail string) Check { return Check{Name: name, State: StateWarn, Detail: detail} }
func failed(name, detail string) Check { return Check{Name: name, State: StateFail, Detail: detail} }

// Modes as the status reports them.
const (
	ModeNamespaceOptIn = "namespace-opt-in"
	ModeClusterWide    = "cluster-wide"
)

// Status is `kubectl localdns status`.
type Status struct {
	// Mode is namespace-opt-in or cluster-wide, from the webhook's flags;
	// empty when the webhook is not installed.
	Mode       string           `json:"mode,omitempty"`
	Checks     []Check          `json:"checks"`
	NodeCaches []NodeCache      `json:"nodeCaches"`
	Namespaces []NamespaceState `json:"namespaces"`
}

// NamespaceState says whether a plain pod created in the namespace now would
// be injected, and why (the opt-in) or why not (the webhook's skip reason, or
// not-selected).
type NamespaceState struct {
	Name   string `json:"name"`
	Inject bool   `json:"inject"`
	// Label is the namespace's localdns.io/inject label, "" when unset.
	Label string `json:"label,omitempty"`
	Why   string `json:"why"`
}

// ErrUnhealthy is returned by status when a check failed or a node cache is
// not ready; the report has been printed.
var ErrUnhealthy = errors.New("localdns is not healthy")

func newStatusCommand(o *options) *cobra.Command {
	probeNamespace := metav1.NamespaceDefault
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Webhook, caBundle, mode, node cache per node, namespaces in and out",
		Long: "Shows whether the webhook is deployed, reachable from the API server (a server-side dry-run\n" +
			"pod) and trusted (caBundle expiry), the mode, every node's node cache (readiness, version,\n" +
			"hit ratio, SERVFAIL and stale answers, upstream health, read through the API server's pod\n" +
			"proxy) and which namespaces are in. Exits non-zero when a check fails or a node cache is not ready.",
		Example: "  kubectl localdns status\n  kubectl localdns status -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := o.connect()
			if err != nil {
				return err
			}
			st, err := s.status(cmd.Context(), probeNamespace)
			if err != nil {
				return err
			}
			if err := s.out().print("Status", st, st.tables()...); err != nil {
				return err
			}
			if st.unhealthy() {
				return ErrUnhealthy
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&probeNamespace, "probe-namespace", probeNamespace, "namespace of the server-side dry-run pod that checks the webhook is reachable")
	return cmd
}

// status gathers the report. A missing installation is reported, not an
// error; failing to read the cluster at all is.
func (s *session) status(ctx context.Context, probeNamespace string) (*Status, error) {
	st := &Status{Checks: []Check{}, NodeCaches: []NodeCache{}, Namespaces: []NamespaceState{}}
	in, err := s.installation(ctx)
	var missing errNotInstalled
	switch {
	case errors.As(err, &missing):
		st.Checks = append(st.Checks, failed("webhook", err.Error()))
	case err != nil:
		return nil, err
	default:
		st.Mode = ModeNamespaceOptIn
		if in.config.ClusterWide {
			st.Mode = ModeClusterWide
		}
		st.Checks = append(st.Checks,
			checkWebhookDeployment(in.webhook),
			checkMode(in),
			checkWebhookConfiguration(in),
			checkCABundle(in.webhookConfig, s.now()),
			checkKubeDNS(in),
			s.checkAdmission(ctx, in, probeNamespace))
	}

	daemonSet, check, err := s.nodeCacheDaemonSet(ctx)
	if err != nil {
		return nil, err
	}
	st.Checks = append(st.Checks, check)
	if daemonSet != nil {
		pods, err := s.client.CoreV1().Pods(s.systemNamespace).List(ctx, metav1.ListOptions{LabelSelector: nameLabel + "=" + nodeCacheAppName})
		if err != nil {
			return nil, fmt.Errorf("list the node cache pods: %w", err)
		}
		nodes, err := s.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			st.Checks = append(st.Checks, warned("nodes", "cannot list nodes, so nodes without a node cache are not shown: "+err.Error()))
			nodes = &corev1.NodeList{}
		}
		st.NodeCaches = nodeCacheRows(ctx, s.client, pods.Items, nodes.Items, daemonSet.Spec.Template.Spec.NodeSelector)
	}

	if in != nil {
		namespaces, err := s.client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list namespaces: %w", err)
		}
		for i := range namespaces.Items {
			st.Namespaces = append(st.Namespaces, in.namespaceState(&namespaces.Items[i]))
		}
	}
	return st, nil
}

func checkWebhookDeployment(d *appsv1.Deployment) Check {
	const name = "webhook"
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	detail := fmt.Sprintf("Deployment %s/%s: %d/%d ready, %s", d.Namespace, d.Name, d.Status.ReadyReplicas, want, images(d.Spec.Template.Spec.Containers))
	switch {
	case d.Status.ReadyReplicas == 0:
		return failed(name, detail)
	case d.Status.ReadyReplicas < want:
		return warned(name, detail)
	}
	return passed(name, detail)
}

// checkMode reports the webhook's mode and whether the configuration's
// selectors agree with it: with --cluster-wide the API server must send pods
// of unlabelled namespaces, without it must not.
func checkMode(in *installation) Check {
	const name = "mode"
	detail := "namespace opt-in: namespaces labelled " + webhook.LabelInject + "=enabled, and pods labelled " + webhook.LabelInject + "=true"
	if in.config.ClusterWide {
		detail = "cluster-wide (--cluster-wide): every namespace not labelled " + webhook.LabelInject + "=disabled"
	}
	if in.webhookConfig == nil {
		return passed(name, detail)
	}
	unlabelled := map[string]string{corev1.LabelMetadataName: "localdns-mode-check"}
	selectsUnlabelled := selectingEntry(in.webhookConfig, nil, unlabelled) != ""
	if selectsUnlabelled != in.config.ClusterWide {
		verb := "does not send"
		if selectsUnlabelled {
			verb = "sends"
		}
		return warned(name, fmt.Sprintf("%s; but MutatingWebhookConfiguration %s %s pods of unlabelled namespaces to the webhook: apply the overlay that matches the webhook's flags",
			detail, in.webhookConfig.Name, verb))
	}
	return passed(name, detail)
}

func checkWebhookConfiguration(in *installation) Check {
	const name = "configuration"
	whc := in.webhookConfig
	if whc == nil {
		return failed(name, fmt.Sprintf("MutatingWebhookConfiguration %s not found: the API server calls no webhook", in.config.WebhookConfigName))
	}
	var entries []string
	for _, w := range whc.Webhooks {
		policy := admissionregistrationv1.Fail // the API's default
		if w.FailurePolicy != nil {
			policy = *w.FailurePolicy
		}
		entries = append(entries, fmt.Sprintf("%s (failurePolicy %s)", w.Name, policy))
	}
	detail := fmt.Sprintf("MutatingWebhookConfiguration %s: %s", whc.Name, strings.Join(entries, ", "))
	if len(whc.Webhooks) == 0 {
		return failed(name, detail+"no webhooks")
	}
	return passed(name, detail)
}

// addrList is "a" or "a, b": kube-dns's ClusterIPs, one per family.
func addrList(addrs []netip.Addr) string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return strings.Join(out, ", ")
}

func checkKubeDNS(in *installation) Check {
	const name = "kube-dns"
	switch {
	case len(in.config.KubeDNSIPs) > 0:
		return passed(name, fmt.Sprintf("fallback nameserver %s (--kube-dns-ip)", addrList(in.kubeDNSIPs)))
	case in.kubeDNSErr != nil:
		return warned(name, in.kubeDNSErr.Error())
	case len(in.kubeDNSIPs) == 0:
		return failed(name, fmt.Sprintf("Service %s missing or headless: the webhook leaves pods unchanged (kube-dns-unknown)", in.config.KubeDNSService))
	}
	return passed(name, fmt.Sprintf("fallback nameserver %s (Service %s)", addrList(in.kubeDNSIPs), in.config.KubeDNSService))
}

// checkAdmission creates a pod opted in by its label with a server-side dry
// run: only an injected answer shows that the API server reached the webhook
// and trusted its certificate, since failurePolicy Ignore hides every
// failure. The pod asks for no fallback, so kube-dns plays no part; it meets
// Pod Security "restricted", so no namespace policy refuses it.
func (s *session) checkAdmission(ctx context.Context, in *installation, namespace string) Check {
	const name = "admission"
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "localdns-status-",
			Namespace:    namespace,
			Labels:       map[string]string{webhook.LabelInject: "true"},
			Annotations:  map[string]string{webhook.AnnotationFallback: "false"},
		},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr(true),
				RunAsUser:      ptr(int64(65532)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:  "probe",
				Image: "localdns.invalid/status-probe",
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr(false),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
	got, err := s.client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return failed(name, fmt.Sprintf("server-side dry-run pod in namespace %s: %v", namespace, err))
	}
	if mode := got.Annotations[webhook.AnnotationInjected]; mode != "" {
		return passed(name, fmt.Sprintf("a server-side dry-run pod in namespace %s was injected (mode %s)", namespace, mode))
	}
	ns, err := s.client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	if err != nil {
		return failed(name, fmt.Sprintf("read namespace %s: %v", namespace, err))
	}
	if v := in.judge(pod, ns); !v.inject() {
		return warned(name, fmt.Sprintf("a pod in namespace %s is not injected anyway (%s): pick another --probe-namespace", namespace, v.reason()))
	}
	return failed(name, fmt.Sprintf("a server-side dry-run pod in namespace %s was admitted unchanged: the API server could not call the webhook "+
		"(no ready endpoints, TLS not trusted, timeout) and failurePolicy Ignore let the pod through", namespace))
}

// nodeCacheDaemonSet finds the node cache DaemonSet and checks its rollout.
func (s *session) nodeCacheDaemonSet(ctx context.Context) (*appsv1.DaemonSet, Check, error) {
	const name = "node cache"
	list, err := s.client.AppsV1().DaemonSets(s.systemNamespace).List(ctx, metav1.ListOptions{LabelSelector: nameLabel + "=" + nodeCacheAppName})
	if err != nil {
		return nil, Check{}, fmt.Errorf("list the node cache DaemonSet: %w", err)
	}
	if len(list.Items) == 0 {
		return nil, failed(name, fmt.Sprintf("no DaemonSet labelled %s=%s in namespace %s", nameLabel, nodeCacheAppName, s.systemNamespace)), nil
	}
	ds := &list.Items[0]
	st := ds.Status
	detail := fmt.Sprintf("DaemonSet %s/%s: %d desired, %d ready, %d up to date, %s",
		ds.Namespace, ds.Name, st.DesiredNumberScheduled, st.NumberReady, st.UpdatedNumberScheduled, images(ds.Spec.Template.Spec.Containers))
	switch {
	case st.DesiredNumberScheduled > 0 && st.NumberReady == 0:
		return ds, failed(name, detail), nil
	case st.NumberReady < st.DesiredNumberScheduled:
		return ds, warned(name, detail), nil
	}
	return ds, passed(name, detail), nil
}

// namespaceState judges a plain pod in ns.
func (in *installation) namespaceState(ns *corev1.Namespace) NamespaceState {
	pod := plainPod(ns.Name)
	v := in.judge(pod, ns)
	state := NamespaceState{Name: ns.Name, Inject: v.inject(), Label: ns.Labels[webhook.LabelInject], Why: v.reason()}
	if state.Inject {
		state.Why = string(in.optInOf(pod, ns))
	}
	return state
}

func images(containers []corev1.Container) string {
	var out []string
	for _, c := range containers {
		out = append(out, c.Image)
	}
	return "image " + strings.Join(out, ", ")
}

func (st *Status) unhealthy() bool {
	if slices.ContainsFunc(st.Checks, func(c Check) bool { return c.State == StateFail }) {
		return true
	}
	return slices.ContainsFunc(st.NodeCaches, func(n NodeCache) bool { return n.Pod != "" && !n.Ready })
}

func (st *Status) tables() []table {
	checks := table{columns: []string{"Check", "State", "Detail"}}
	for _, c := range st.Checks {
		checks.add(c.Name, string(c.State), c.Detail)
	}
	nodes := table{columns: []string{"Node", "Pod", "Ready", "Version", "Hit ratio", "SERVFAIL", "Stale", "Upstream", "Problem"}}
	for _, n := range st.NodeCaches {
		ratio, servfail, stale, upstream := n.Metrics.cells()
		ready := "-"
		if n.Pod != "" {
			ready = strconv.FormatBool(n.Ready)
		}
		nodes.add(n.Node, orDash(n.Pod), ready, orDash(n.Version), ratio, servfail, stale, upstream, n.Problem)
	}
	namespaces := table{columns: []string{"Namespace", "Inject", "Label", "Why"}}
	for _, ns := range st.Namespaces {
		namespaces.add(ns.Name, yesNo(ns.Inject), orDash(ns.Label), ns.Why)
	}
	return []table{checks, nodes, namespaces}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func ptr[T any](v T) *T { return &v }

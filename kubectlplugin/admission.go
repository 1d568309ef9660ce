package kubectlplugin

import (
	"maps"
	"slices"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/localdns/localdns/webhook"
)

// ReasonNotSelected is the reason given when no entry of the
// MutatingWebhookConfiguration selects a pod, so the API server never calls
// the webhook for it (its namespace or object selector, or no configuration).
const ReasonNotSelected = "not-selected"

// verdict is what admission would do with a pod created now: which webhook
// entry the API server sends it to, and what the webhook decides (or would,
// were it called).
type verdict struct {
	entry string       // the selecting webhook entry; "" when none
	plan  webhook.Plan // the webhook's decision
}

// inject reports whether the pod would be injected.
func (v verdict) inject() bool { return v.entry != "" && v.plan.Inject }

// reason is why the pod would be left unchanged ("" when injected): the
// webhook's skip reason, which the selectors only anticipate, or
// not-selected when the selectors alone keep out a pod the webhook would
// inject.
func (v verdict) reason() string {
	switch {
	case !v.plan.Inject:
		return string(v.plan.SkipReason)
	case v.entry == "":
		return ReasonNotSelected
	}
	return ""
}

// judge applies the API server's selection and the webhook's own Decide,
// with the flags the webhook runs with, to pod in ns.
func (in *installation) judge(pod *corev1.Pod, ns *corev1.Namespace) verdict {
	return verdict{
		entry: selectingEntry(in.webhookConfig, pod.Labels, ns.Labels),
		plan:  webhook.Decide(pod, webhook.Namespace{Name: ns.Name, Labels: ns.Labels}, in.config, in.env()),
	}
}

// selectingEntry returns the name of the first webhook of whc that the API
// server calls for creating a pod with podLabels in a namespace with
// nsLabels, "" when none does. matchConditions (CEL) are not evaluated; the
// shipped configuration has none.
func selectingEntry(whc *admissionregistrationv1.MutatingWebhookConfiguration, podLabels, nsLabels map[string]string) string {
	if whc == nil {
		return ""
	}
	for _, w := range whc.Webhooks {
		if interceptsPodCreate(w.Rules) && selects(w.NamespaceSelector, nsLabels) && selects(w.ObjectSelector, podLabels) {
			return w.Name
		}
	}
	return ""
}

// selects reports whether a webhook selector matches; an absent selector
// matches everything, an invalid one nothing (the API server rejects those).
func selects(sel *metav1.LabelSelector, set map[string]string) bool {
	if sel == nil {
		return true
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && s.Matches(labels.Set(set))
}

// interceptsPodCreate reports whether the rules cover CREATE of core/v1 pods.
func interceptsPodCreate(rules []admissionregistrationv1.RuleWithOperations) bool {
	has := func(list []string, v string) bool { return slices.Contains(list, v) || slices.Contains(list, "*") }
	for _, r := range rules {
		if (slices.Contains(r.Operations, admissionregistrationv1.Create) || slices.Contains(r.Operations, admissionregistrationv1.OperationAll)) &&
			has(r.APIGroups, "") && has(r.APIVersions, "v1") && has(r.Resources, "pods") {
			return true
		}
	}
	return false
}

// optIn names what opts a pod in, per the webhook's own Decide: the pod's
// label when the pod would be out without it, cluster-wide mode when the pod
// would still be in with neither label, else the namespace label.
type optIn string

const (
	optInPodLabel       optIn = "pod label"
	optInNamespaceLabel optIn = "namespace label"
	optInClusterWide    optIn = "cluster-wide"
)

func (in *installation) optInOf(pod *corev1.Pod, ns *corev1.Namespace) optIn {
	unlabelledPod := withoutInjectLabel(pod)
	if !webhook.Decide(unlabelledPod, webhook.Namespace{Name: ns.Name, Labels: ns.Labels}, in.config, in.env()).Inject {
		return optInPodLabel
	}
	bareNS := webhook.Namespace{Name: ns.Name, Labels: withoutKey(ns.Labels, webhook.LabelInject)}
	if webhook.Decide(unlabelledPod, bareNS, in.config, in.env()).Inject {
		return optInClusterWide
	}
	return optInNamespaceLabel
}

func withoutInjectLabel(pod *corev1.Pod) *corev1.Pod {
	out := pod.DeepCopy()
	out.Labels = withoutKey(out.Labels, webhook.LabelInject)
	return out
}

func withoutKey(m map[string]string, key string) map[string]string {
	out := maps.Clone(m)
	delete(out, key)
	return out
}

// plainPod is what a namespace's opt-in state is judged on: a pod with no
// labels, no annotations and the default DNS policy.
func plainPod(namespace string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: namespace},
		Spec: corev1.PodSpec{
			DNSPolicy:  corev1.DNSClusterFirst,
			Containers: []corev1.Container{{Name: "app", Image: "app"}},
		},
	}
}

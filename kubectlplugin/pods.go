package kubectlplugin

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/localdns/localdns/webhook"
)

// Why an opted-in pod was not injected.
const (
	// ReasonBeforeOptIn: the pod is older than its opt-in (the namespace or
	// pod label, or localdns itself): admission never saw it opted in.
	ReasonBeforeOptIn = "created-before-opt-in"
	// ReasonWebhookDown: the pod was created after its opt-in and still
	// left unchanged: the API server could not call the webhook then (down,
	// unreachable, too slow), and failurePolicy Ignore admitted it.
	ReasonWebhookDown = "admitted-while-webhook-down"
)

// UninjectedPod is a pod the webhook would inject if it were created now,
// and which is not injected.
type UninjectedPod struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Workload  Workload `json:"workload"`
	Reason    string   `json:"reason"`
	// OptIn is what opts it in: pod label, namespace label or cluster-wide.
	OptIn string `json:"optIn"`
	// Created and OptedInAt are the evidence for Reason, at the API's
	// one-second resolution: OptedInAt is the latest of when localdns's
	// webhook configuration was created and when the opting label was set.
	Created   time.Time `json:"created"`
	OptedInAt time.Time `json:"optedInAt"`
}

// UninjectedPodList is `kubectl localdns pods`.
type UninjectedPodList struct {
	Items []UninjectedPod `json:"items"`
}

func newPodsCommand(o *options) *cobra.Command {
	var allNamespaces bool
	cmd := &cobra.Command{
		Use:   "pods [-n NAMESPACE | -A]",
		Short: "Pods that should be injected but are not, why, and their workloads",
		Long: "Lists the pods, running or pending, that the webhook would inject if they were created now and\n" +
			"that are not injected: created before their opt-in (" + ReasonBeforeOptIn + ") or admitted\n" +
			"while the webhook could not be called (" + ReasonWebhookDown + "), with their workloads.\n" +
			"`kubectl localdns restart` rolls those workloads.",
		Example: "  kubectl localdns pods -A\n  kubectl localdns pods -n shop -o yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := o.connect()
			if err != nil {
				return err
			}
			namespace := s.namespace
			if allNamespaces {
				namespace = metav1.NamespaceAll
			}
			list, err := s.uninjectedPods(cmd.Context(), namespace)
			if err != nil {
				return err
			}
			if len(list.Items) == 0 && s.output == "" {
				fmt.Fprintln(s.streams.ErrOut, noneFound("No pods need a restart", namespace))
				return nil
			}
			return s.out().print("UninjectedPodList", list, list.table(allNamespaces))
		},
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "look in every namespace")
	return cmd
}

// uninjectedPods lists the pods of namespace (every namespace when empty)
// that should be injected and are not.
func (s *session) uninjectedPods(ctx context.Context, namespace string) (*UninjectedPodList, error) {
	in, err := s.installation(ctx)
	if err != nil {
		return nil, err
	}
	if in.webhookConfig == nil {
		return nil, fmt.Errorf("MutatingWebhookConfiguration %s not found: no pod is injected in this cluster", in.config.WebhookConfigName)
	}
	namespaces, err := s.namespaces(ctx, namespace)
	if err != nil {
		return nil, err
	}
	pods, err := s.client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	list := &UninjectedPodList{Items: []UninjectedPod{}}
	resolvers := map[string]*owners{}
	for i := range pods.Items {
		pod := &pods.Items[i]
		ns := namespaces[pod.Namespace]
		if ns == nil || !live(pod) || !in.judge(pod, ns).inject() {
			continue
		}
		if resolvers[pod.Namespace] == nil {
			resolvers[pod.Namespace] = newOwners(s.client, pod.Namespace)
		}
		list.Items = append(list.Items, in.uninjected(pod, ns, resolvers[pod.Namespace].workload(ctx, pod)))
	}
	slices.SortFunc(list.Items, func(a, b UninjectedPod) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return list, nil
}

// namespaces reads one namespace, or all of them when name is empty.
func (s *session) namespaces(ctx context.Context, name string) (map[string]*corev1.Namespace, error) {
	out := map[string]*corev1.Namespace{}
	if name != metav1.NamespaceAll {
		ns, err := s.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("namespace %s not found", name)
		}
		if err != nil {
			return nil, fmt.Errorf("read namespace %s: %w", name, err)
		}
		out[name] = ns
		return out, nil
	}
	list, err := s.client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	for i := range list.Items {
		out[list.Items[i].Name] = &list.Items[i]
	}
	return out, nil
}

// live reports whether the pod still runs or will: finished and deleted
// pods never resolve a name again.
func live(pod *corev1.Pod) bool {
	return pod.DeletionTimestamp == nil && pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed
}

// uninjected tells a pod's reason from the times: created no later than
// its opt-in took effect, or after it.
func (in *installation) uninjected(pod *corev1.Pod, ns *corev1.Namespace, w Workload) UninjectedPod {
	by := in.optInOf(pod, ns)
	optedIn := in.webhookConfig.CreationTimestamp.Time
	var labelled time.Time
	switch by {
	case optInPodLabel:
		labelled = labelSetAt(pod.ManagedFields, webhook.LabelInject)
	case optInNamespaceLabel:
		labelled = labelSetAt(ns.ManagedFields, webhook.LabelInject)
	}
	if labelled.After(optedIn) {
		optedIn = labelled
	}
	reason := ReasonBeforeOptIn
	if pod.CreationTimestamp.After(optedIn) {
		reason = ReasonWebhookDown
	}
	return UninjectedPod{
		Namespace: pod.Namespace, Name: pod.Name, Workload: w, Reason: reason, OptIn: string(by),
		Created: pod.CreationTimestamp.UTC(), OptedInAt: optedIn.UTC(),
	}
}

func (l *UninjectedPodList) table(withNamespace bool) table {
	t := table{columns: []string{"Pod", "Workload", "Reason", "Opted in by"}}
	if withNamespace {
		t.columns = slices.Insert(t.columns, 0, "Namespace")
	}
	for _, p := range l.Items {
		cells := []string{p.Name, p.Workload.String(), p.Reason, p.OptIn}
		if withNamespace {
			cells = slices.Insert(cells, 0, p.Namespace)
		}
		t.add(cells...)
	}
	return t
}

// noneFound is kubectl's wording for an empty answer.
func noneFound(what, namespace string) string {
	if namespace == metav1.NamespaceAll {
		return what + "."
	}
	return fmt.Sprintf("%s in namespace %s.", what, namespace)
}

package kubectlplugin

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	"github.com/localdns/localdns/webhook"
)

// ReasonWebhookNotReached is explain's reason when the webhook should have
// injected the pod and the API server returned it unchanged: the call failed
// and failurePolicy Ignore admitted it.
const ReasonWebhookNotReached = "webhook-not-reached"

// Explanation is `kubectl localdns explain`: what admission does to the pod
// if it is created now, found by a server-side dry-run create (nothing is
// stored), and why.
type Explanation struct {
	// Pod is namespace/name of the pod or manifest explained.
	Pod string `json:"pod"`
	// Source is what was sent: a controller's pod template (what a restart
	// creates), the pod as stored, or the manifest.
	Source string `json:"source"`
	// Current is an existing pod's own state: injected (mode) or not.
	Current string `json:"current,omitempty"`
	// Webhook is the entry of the MutatingWebhookConfiguration that selects
	// the pod, "" when none does.
	Webhook  string `json:"webhook,omitempty"`
	Injected bool   `json:"injected"`
	// Reason says why it is not injected: a webhook skip reason,
	// not-selected or webhook-not-reached.
	Reason      string   `json:"reason,omitempty"`
	Mode        string   `json:"mode,omitempty"`
	DNSPolicy   string   `json:"dnsPolicy"`
	Nameservers []string `json:"nameservers,omitempty"`
	Searches    []string `json:"searches,omitempty"`
	Options     []string `json:"options,omitempty"`
	// Stub describes the injected stub container, "" when none.
	Stub string `json:"stub,omitempty"`
	// Warnings are the API server's warnings on the dry-run create: the
	// webhook's (bad annotations, limits) and any other admission's.
	Warnings []string `json:"warnings"`
}

func newExplainCommand(o *options) *cobra.Command {
	var filename string
	cmd := &cobra.Command{
		Use:   "explain (POD | -f MANIFEST)",
		Short: "What the webhook would do to a pod now: mode, nameservers, options, warnings",
		Long: "Creates the pod with a server-side dry run (nothing is stored) and shows what admission\n" +
			"returns and why. For a running pod with a controller, its controller's pod template is\n" +
			"sent: what a restart would create. -f takes a Pod or a workload manifest (Deployment,\n" +
			"StatefulSet, DaemonSet, ReplicaSet, Job, CronJob); - reads standard input.",
		Example: "  kubectl localdns explain -n shop web-5d8f7-aaaaa\n  kubectl localdns explain -f deployment.yaml -o yaml",
		Args: func(_ *cobra.Command, args []string) error {
			if (len(args) == 1) == (filename != "") || len(args) > 1 {
				return errors.New("give either one pod name or -f MANIFEST")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.connect()
			if err != nil {
				return err
			}
			var c *candidate
			if filename != "" {
				c, err = s.candidateFromFile(filename)
			} else {
				c, err = s.candidateFromPod(cmd.Context(), args[0])
			}
			if err != nil {
				return err
			}
			e, err := s.explain(cmd.Context(), c)
			if err != nil {
				return err
			}
			return s.out().print("Explanation", e, e.table())
		},
	}
	cmd.Flags().StringVarP(&filename, "filename", "f", "", "manifest of a Pod or a workload with a pod template; - for standard input")
	return cmd
}

// candidate is the pod to create with a dry run, and where it came from.
type candidate struct {
	pod     *corev1.Pod
	source  string
	current string
}

// candidateFromPod explains an existing pod: its controller's template when
// it has one, else the pod itself.
func (s *session) candidateFromPod(ctx context.Context, name string) (*candidate, error) {
	pod, err := s.client.CoreV1().Pods(s.namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read pod %s/%s: %w", s.namespace, name, err)
	}
	c := &candidate{current: "not injected"}
	if mode := pod.Annotations[webhook.AnnotationInjected]; mode != "" {
		c.current = "injected (" + mode + ")"
	}
	tmpl, owner, err := templateOf(ctx, s.client, pod)
	if err != nil {
		return nil, err
	}
	if tmpl != nil {
		c.pod = fromTemplate(tmpl, pod.Namespace, pod.Name)
		c.source = "the pod template of " + owner + " (what a restart creates)"
		return c, nil
	}
	c.pod = newPod(pod.ObjectMeta, &pod.Spec, pod.Namespace, pod.Name)
	c.source = "the pod as stored (it has no controller)"
	return c, nil
}

// candidateFromFile reads one Pod or workload manifest (YAML or JSON).
func (s *session) candidateFromFile(filename string) (*candidate, error) {
	var data []byte
	var err error
	if filename == "-" {
		data, err = io.ReadAll(s.streams.In)
	} else {
		data, err = os.ReadFile(filename)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", filename, err)
	}
	obj, err := decodeOne(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filename, err)
	}
	meta, err := metaOf(obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filename, err)
	}
	namespace := meta.GetNamespace()
	if namespace == "" {
		namespace = s.namespace
	}
	name := meta.GetName()
	if name == "" {
		name = strings.TrimSuffix(meta.GetGenerateName(), "-")
	}
	c := &candidate{source: "manifest " + filename}
	switch o := obj.(type) {
	case *corev1.Pod:
		c.pod = newPod(o.ObjectMeta, &o.Spec, namespace, name)
	case *appsv1.Deployment:
		c.pod = fromTemplate(&o.Spec.Template, namespace, name)
	case *appsv1.StatefulSet:
		c.pod = fromTemplate(statefulSetPodTemplate(o), namespace, name)
	case *appsv1.DaemonSet:
		c.pod = fromTemplate(&o.Spec.Template, namespace, name)
	case *appsv1.ReplicaSet:
		c.pod = fromTemplate(&o.Spec.Template, namespace, name)
	case *batchv1.Job:
		c.pod = fromTemplate(&o.Spec.Template, namespace, name)
	case *batchv1.CronJob:
		c.pod = fromTemplate(&o.Spec.JobTemplate.Spec.Template, namespace, name)
	default:
		return nil, fmt.Errorf("%s: a %s has no pod to explain", filename, obj.GetObjectKind().GroupVersionKind().Kind)
	}
	return c, nil
}

// decodeOne decodes the only object of a YAML or JSON manifest.
func decodeOne(data []byte) (runtime.Object, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(doc)) > 0 {
			docs = append(docs, doc)
		}
	}
	if len(docs) != 1 {
		return nil, fmt.Errorf("want one object, found %d", len(docs))
	}
	obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(docs[0], nil, nil)
	if err != nil {
		return nil, err
	}
	return obj, nil
}

func metaOf(obj runtime.Object) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no metadata", obj)
	}
	return m, nil
}

// fromTemplate is the pod a controller named name creates from tmpl.
func fromTemplate(tmpl *corev1.PodTemplateSpec, namespace, name string) *corev1.Pod {
	return newPod(tmpl.ObjectMeta, &tmpl.Spec, namespace, name)
}

// newPod is a create request for a pod with meta's labels and annotations
// and spec, named after name by the API server (a dry run of an existing
// name would fail as a conflict).
func newPod(meta metav1.ObjectMeta, spec *corev1.PodSpec, namespace, name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: name + "-",
			Namespace:    namespace,
			Labels:       meta.Labels,
			Annotations:  meta.Annotations,
		},
		Spec: *spec.DeepCopy(),
	}
}

// explain creates the candidate with a server-side dry run and reads what
// admission returned; the webhook's own Decide, with its deployed flags,
// says why when nothing changed.
func (s *session) explain(ctx context.Context, c *candidate) (*Explanation, error) {
	in, err := s.installation(ctx)
	if err != nil {
		return nil, err
	}
	ns, err := s.client.CoreV1().Namespaces().Get(ctx, c.pod.Namespace, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read namespace %s: %w", c.pod.Namespace, err)
	}
	warnings := &warningCollector{}
	cfg := rest.CopyConfig(s.restConfig)
	cfg.WarningHandler = warnings
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	got, err := client.CoreV1().Pods(c.pod.Namespace).Create(ctx, c.pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return nil, fmt.Errorf("server-side dry-run create in namespace %s: %w", c.pod.Namespace, err)
	}
	v := in.judge(c.pod, ns)
	e := &Explanation{
		Pod:       c.pod.Namespace + "/" + strings.TrimSuffix(c.pod.GenerateName, "-"),
		Source:    c.source,
		Current:   c.current,
		Webhook:   v.entry,
		DNSPolicy: string(got.Spec.DNSPolicy),
		Warnings:  warnings.messages(),
	}
	_, marked := c.pod.Annotations[webhook.AnnotationInjected]
	switch mode := got.Annotations[webhook.AnnotationInjected]; {
	case mode != "" && !marked:
		e.Injected, e.Mode = true, mode
	case v.reason() != "":
		e.Reason = v.reason() // already-injected for a marked pod
	default:
		e.Reason = ReasonWebhookNotReached
	}
	if dc := got.Spec.DNSConfig; dc != nil {
		e.Nameservers, e.Searches = dc.Nameservers, dc.Searches
		for _, o := range dc.Options {
			opt := o.Name
			if o.Value != nil {
				opt += ":" + *o.Value
			}
			e.Options = append(e.Options, opt)
		}
	}
	if e.Injected {
		e.Stub = stubOf(got)
	}
	return e, nil
}

// stubOf describes the injected stub container, "" when there is none.
func stubOf(pod *corev1.Pod) string {
	if c := container(pod.Spec.InitContainers, webhook.StubContainerName); c != nil {
		return "native sidecar " + c.Name + " (" + c.Image + ")"
	}
	if c := container(pod.Spec.Containers, webhook.StubContainerName); c != nil {
		return "container " + c.Name + " (" + c.Image + ")"
	}
	return ""
}

func (e *Explanation) table() table {
	t := table{columns: []string{"Field", "Value"}}
	t.add("pod", e.Pod)
	t.add("source", e.Source)
	if e.Current != "" {
		t.add("current", e.Current)
	}
	t.add("selected by", orDash(e.Webhook))
	result := "injected"
	if !e.Injected {
		result = "not injected: " + e.Reason
	}
	t.add("result", result)
	if e.Injected {
		t.add("mode", e.Mode)
	}
	t.add("dnsPolicy", e.DNSPolicy)
	t.add("nameservers", orDash(strings.Join(e.Nameservers, " ")))
	t.add("searches", orDash(strings.Join(e.Searches, " ")))
	t.add("options", orDash(strings.Join(e.Options, " ")))
	if e.Injected {
		t.add("stub", orDash(e.Stub))
	}
	for _, w := range e.Warnings {
		t.add("warning", w)
	}
	return t
}

// warningCollector keeps the API server's warnings for one request.
type warningCollector struct {
	mu   sync.Mutex
	list []string
}

func (w *warningCollector) HandleWarningHeader(_ int, _ string, message string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, message)
}

func (w *warningCollector) messages() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string{}, w.list...)
}

package kubectlplugin

import (
	"context"
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Kinds of the workloads that own pods.
const (
	kindDeployment            = "Deployment"
	kindStatefulSet           = "StatefulSet"
	kindDaemonSet             = "DaemonSet"
	kindReplicaSet            = "ReplicaSet"
	kindJob                   = "Job"
	kindCronJob               = "CronJob"
	kindReplicationController = "ReplicationController"
)

// Workload is the top of a pod's controller chain: the object a user
// manages (a Deployment rather than its ReplicaSet). Kind is empty for a pod
// without a controller.
type Workload struct {
	Kind string `json:"kind,omitempty"`
	Name string `json:"name,omitempty"`
}

func (w Workload) String() string {
	if w.Kind == "" {
		return "<none>"
	}
	return w.Kind + "/" + w.Name
}

// owners resolves pods to their workloads in one namespace, reading each
// intermediate controller (ReplicaSet, Job) once.
type owners struct {
	client    kubernetes.Interface
	namespace string
	parents   map[metav1.OwnerReference]Workload
}

func newOwners(client kubernetes.Interface, namespace string) *owners {
	return &owners{client: client, namespace: namespace, parents: map[metav1.OwnerReference]Workload{}}
}

// workload walks pod's controller references up to the managed workload. A
// ReplicaSet or Job that cannot be read is reported as itself.
func (o *owners) workload(ctx context.Context, pod *corev1.Pod) Workload {
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		return Workload{}
	}
	direct := Workload{Kind: ref.Kind, Name: ref.Name}
	if ref.Kind != kindReplicaSet && ref.Kind != kindJob {
		return direct
	}
	key := *ref
	key.Controller, key.BlockOwnerDeletion = nil, nil
	if w, ok := o.parents[key]; ok {
		return w
	}
	var meta metav1.Object
	var err error
	switch ref.Kind {
	case kindReplicaSet:
		meta, err = o.client.AppsV1().ReplicaSets(o.namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	case kindJob:
		meta, err = o.client.BatchV1().Jobs(o.namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	}
	w := direct
	if err == nil {
		if parent := metav1.GetControllerOfNoCopy(meta); parent != nil {
			w = Workload{Kind: parent.Kind, Name: parent.Name}
		}
	}
	o.parents[key] = w
	return w
}

// templateOf returns the pod template of the controller that created pod,
// with its name, or nil when the pod has no controller with a template
// (a bare pod, a custom controller).
func templateOf(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod) (*corev1.PodTemplateSpec, string, error) {
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		return nil, "", nil
	}
	ns, name := pod.Namespace, ref.Name
	var tmpl *corev1.PodTemplateSpec
	var err error
	switch ref.Kind {
	case kindReplicaSet:
		var rs *appsv1.ReplicaSet
		if rs, err = client.AppsV1().ReplicaSets(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			tmpl = &rs.Spec.Template
		}
	case kindStatefulSet:
		var ss *appsv1.StatefulSet
		if ss, err = client.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			tmpl = statefulSetPodTemplate(ss)
		}
	case kindDaemonSet:
		var ds *appsv1.DaemonSet
		if ds, err = client.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			tmpl = &ds.Spec.Template
		}
	case kindJob:
		var job *batchv1.Job
		if job, err = client.BatchV1().Jobs(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			tmpl = &job.Spec.Template
		}
	case kindReplicationController:
		var rc *corev1.ReplicationController
		if rc, err = client.CoreV1().ReplicationControllers(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			tmpl = rc.Spec.Template
		}
	default:
		return nil, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read the pod's %s %s: %w", ref.Kind, name, err)
	}
	return tmpl, ref.Kind + "/" + name, nil
}

// statefulSetPodTemplate is the template with the volumes the StatefulSet
// controller sets for its volumeClaimTemplates (replacing any of the same
// name), so that the pod it describes passes validation: its containers
// mount them.
func statefulSetPodTemplate(ss *appsv1.StatefulSet) *corev1.PodTemplateSpec {
	tmpl := ss.Spec.Template.DeepCopy()
	for _, claim := range ss.Spec.VolumeClaimTemplates {
		tmpl.Spec.Volumes = slices.DeleteFunc(tmpl.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == claim.Name })
		tmpl.Spec.Volumes = append(tmpl.Spec.Volumes, corev1.Volume{
			Name: claim.Name,
			VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{
				ClaimName: claim.Name + "-" + ss.Name + "-0",
			}},
		})
	}
	return tmpl
}

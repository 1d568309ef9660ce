package webhook

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// Apply returns a copy of pod with plan applied; pod is not modified. A plan
// that does not inject returns an unchanged copy.
func Apply(pod *corev1.Pod, plan Plan) *corev1.Pod {
	out := pod.DeepCopy()
	if !plan.Inject {
		return out
	}
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	out.Annotations[AnnotationInjected] = string(plan.Mode)
	out.Spec.DNSPolicy = corev1.DNSNone
	out.Spec.DNSConfig = &corev1.PodDNSConfig{
		Nameservers: slices.Clone(plan.Nameservers),
		Searches:    slices.Clone(plan.Searches),
		Options:     slices.Clone(plan.Options),
	}
	if stub := plan.Stub; stub != nil {
		c := *stub.Container.DeepCopy()
		if stub.Native {
			out.Spec.InitContainers = slices.Insert(out.Spec.InitContainers, 0, c)
		} else {
			out.Spec.Containers = slices.Insert(out.Spec.Containers, 0, c)
		}
		if !slices.Equal(podSysctls(out), stub.Sysctls) {
			if out.Spec.SecurityContext == nil {
				out.Spec.SecurityContext = &corev1.PodSecurityContext{}
			}
			out.Spec.SecurityContext.Sysctls = slices.Clone(stub.Sysctls)
		}
	}
	return out
}

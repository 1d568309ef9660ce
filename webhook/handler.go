package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Path is where the webhook serves pod admissions (AdmissionReview v1).
const Path = "/mutate-pods"

// Kinds of internal error, the reason label of result="error".
const (
	errDecode    = "decode"
	errNamespace = "namespace-lookup"
	errKubeDNS   = "kube-dns-lookup"
	errMarshal   = "marshal"
	errPatch     = "patch"
	errPanic     = "panic"
)

// Handler mutates pods on admission: decode, decide, patch. It never denies:
// every internal error admits the pod unchanged, logged and counted.
type Handler struct {
	cfg            Config
	nativeSidecars bool
	// cached reads the manager's informers; live reads the API server when
	// the cache has not seen an object yet (a namespace created just now).
	cached, live client.Reader
	decoder      admission.Decoder
	metrics      *Metrics
}

// NewHandler returns the admission handler. nativeSidecars is --native-sidecars
// resolved against the API server.
func NewHandler(cfg Config, nativeSidecars bool, cached, live client.Reader, scheme *runtime.Scheme, metrics *Metrics) *Handler {
	return &Handler{
		cfg:            cfg,
		nativeSidecars: nativeSidecars,
		cached:         cached,
		live:           live,
		decoder:        admission.NewDecoder(scheme),
		metrics:        metrics,
	}
}

var _ admission.Handler = (*Handler)(nil)

// Handle implements admission.Handler.
func (h *Handler) Handle(ctx context.Context, req admission.Request) (resp admission.Response) {
	// controller-runtime recovers panics too, but answers with an error,
	// which the API server treats as a denial whatever the failurePolicy.
	defer func() {
		if r := recover(); r != nil {
			resp = h.allowOnError(ctx, errPanic, fmt.Errorf("panic: %v", r))
		}
	}()
	if req.Operation != admissionv1.Create {
		h.metrics.skipped(SkipNotCreate)
		return admission.Allowed(string(SkipNotCreate))
	}

	pod := &corev1.Pod{}
	if err := h.decoder.Decode(req, pod); err != nil {
		return h.allowOnError(ctx, errDecode, fmt.Errorf("decode pod: %w", err))
	}
	ns, err := h.namespace(ctx, req.Namespace)
	if err != nil {
		return h.allowOnError(ctx, errNamespace, err)
	}
	kubeDNSIPs, err := h.kubeDNSIPs(ctx)
	if err != nil {
		return h.allowOnError(ctx, errKubeDNS, err)
	}

	plan := Decide(pod, ns, h.cfg, Env{KubeDNSIPs: kubeDNSIPs, NativeSidecars: h.nativeSidecars})

	log := logf.FromContext(ctx).WithValues("namespace", req.Namespace, "pod", podName(pod))
	if !plan.Inject {
		h.metrics.skipped(plan.SkipReason)
		log.V(1).Info("pod left unchanged", "reason", plan.SkipReason)
		return admission.Allowed(string(plan.SkipReason)).WithWarnings(plan.Warnings...)
	}
	mutated, err := json.Marshal(Apply(pod, plan))
	if err != nil {
		return h.allowOnError(ctx, errMarshal, fmt.Errorf("marshal mutated pod: %w", err))
	}
	resp = admission.PatchResponseFromRaw(req.Object.Raw, mutated)
	if !resp.Allowed {
		return h.allowOnError(ctx, errPatch, fmt.Errorf("create patch: %s", resp.Result.Message))
	}
	if resp, err = keepUnknownFields(resp, req.Object.Raw, pod, plan); err != nil {
		return h.allowOnError(ctx, errPatch, err)
	}
	h.metrics.injected(plan.Mode)
	log.V(1).Info("pod injected", "mode", plan.Mode, "warnings", len(plan.Warnings))
	return resp.WithWarnings(plan.Warnings...)
}

// keepUnknownFields drops the removals that the decode round trip alone
// causes: fields a newer API server sent that this build's types do not know
// are missing from the mutated pod, and the diff would strip them from the
// user's pod. Removals inside the container list the stub was inserted into
// stay: the diff pairs list elements by index, so after the insertion a
// removal at one index concerns the field of another element.
func keepUnknownFields(resp admission.Response, raw []byte, decoded *corev1.Pod, plan Plan) (admission.Response, error) {
	roundTrip, err := json.Marshal(decoded)
	if err != nil {
		return resp, fmt.Errorf("marshal decoded pod: %w", err)
	}
	lost, err := jsonpatch.CreatePatch(raw, roundTrip)
	if err != nil {
		return resp, fmt.Errorf("diff decoded pod: %w", err)
	}
	unknown := map[string]bool{}
	for _, op := range lost {
		if op.Operation == "remove" {
			unknown[op.Path] = true
		}
	}
	shifted := "" // JSON pointer prefix of the list the stub went into
	if plan.Stub != nil {
		shifted = "/spec/containers/"
		if plan.Stub.Native {
			shifted = "/spec/initContainers/"
		}
	}
	resp.Patches = slices.DeleteFunc(resp.Patches, func(op jsonpatch.JsonPatchOperation) bool {
		return op.Operation == "remove" && unknown[op.Path] && (shifted == "" || !strings.HasPrefix(op.Path, shifted))
	})
	return resp, nil
}

// allowOnError admits the pod unchanged: DNS rewriting is an optimisation,
// never a reason to block a workload.
func (h *Handler) allowOnError(ctx context.Context, kind string, err error) admission.Response {
	h.metrics.failed(kind)
	logf.FromContext(ctx).Error(err, "admitting pod unchanged", "kind", kind)
	return admission.Allowed("localdns: internal error, pod admitted unchanged")
}

// namespace reads the namespace's labels: from the cache, or from the API
// server when the cache has not caught up with a namespace created just now.
func (h *Handler) namespace(ctx context.Context, name string) (Namespace, error) {
	meta := namespaceMetadata()
	key := client.ObjectKey{Name: name}
	err := h.cached.Get(ctx, key, meta)
	if apierrors.IsNotFound(err) {
		err = h.live.Get(ctx, key, meta)
	}
	if err != nil {
		return Namespace{}, fmt.Errorf("get namespace %q: %w", name, err)
	}
	return Namespace{Name: name, Labels: meta.Labels}, nil
}

// kubeDNSIPs is --kube-dns-ip, else the watched Service's ClusterIPs, one
// per family, primary first; none when the Service is absent or headless.
func (h *Handler) kubeDNSIPs(ctx context.Context) ([]netip.Addr, error) {
	if len(h.cfg.KubeDNSIPs) > 0 {
		return h.cfg.KubeDNSIPs, nil
	}
	var svc corev1.Service
	err := h.cached.Get(ctx, h.cfg.KubeDNSService, &svc)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get service %s: %w", h.cfg.KubeDNSService, err)
	}
	return ServiceClusterIPs(&svc)
}

// ServiceClusterIPs reads spec.clusterIPs (spec.ipFamilies holds their
// families in the same order), or spec.clusterIP where an API server left
// clusterIPs unset; a headless Service has none.
func ServiceClusterIPs(svc *corev1.Service) ([]netip.Addr, error) {
	listed := svc.Spec.ClusterIPs
	if len(listed) == 0 && svc.Spec.ClusterIP != "" {
		listed = []string{svc.Spec.ClusterIP}
	}
	var ips []netip.Addr
	for _, s := range listed {
		if s == corev1.ClusterIPNone {
			return nil, nil
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("service %s/%s: clusterIP %q: %w", svc.Namespace, svc.Name, s, err)
		}
		ips = append(ips, ip.Unmap())
	}
	return ips, nil
}

func podName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	return pod.GenerateName
}

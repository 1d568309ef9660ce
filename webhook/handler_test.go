package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// fakeReader answers Get for namespaces and services from maps (absent:
// NotFound) or fails as told.
type fakeReader struct {
	namespaces map[string]map[string]string // name -> labels
	services   map[string]string            // name -> ClusterIP
	err        error                        // for every read
	serviceErr error                        // for Service reads
	panics     bool
}

func (f *fakeReader) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	if f.panics {
		panic("reader exploded")
	}
	if f.err != nil {
		return f.err
	}
	switch o := obj.(type) {
	case *metav1.PartialObjectMetadata:
		labels, ok := f.namespaces[key.Name]
		if !ok {
			return apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, key.Name)
		}
		o.Name, o.Labels = key.Name, labels
	case *corev1.Service:
		if f.serviceErr != nil {
			return f.serviceErr
		}
		ip, ok := f.services[key.Name]
		if !ok {
			return apierrors.NewNotFound(schema.GroupResource{Resource: "services"}, key.Name)
		}
		o.Name, o.Namespace, o.Spec.ClusterIP = key.Name, key.Namespace, ip
	default:
		return errors.New("unexpected type")
	}
	return nil
}

func (f *fakeReader) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return errors.New("not implemented")
}

func admissionRequest(t *testing.T, op admissionv1.Operation, pod *corev1.Pod) admission.Request {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID:       "uid-1",
		Operation: op,
		Namespace: pod.Namespace,
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Object:    runtime.RawExtension{Raw: raw},
	}}
}

func TestHandler(t *testing.T) {
	enabled := map[string]map[string]string{testNS: {LabelInject: namespaceEnabled}}
	tests := []struct {
		name         string
		flags        []string
		cached, live *fakeReader
		op           admissionv1.Operation
		pod          *corev1.Pod
		raw          []byte // replaces the encoded pod
		wantPatch    bool
		wantWarnings int
		result       string // metric labels
		mode         Mode
		reason       string
	}{
		{
			name: "injects from the cache", flags: []string{"--kube-dns-ip=10.0.0.10"},
			cached: &fakeReader{namespaces: enabled}, live: &fakeReader{err: errors.New("live read not expected")},
			op: admissionv1.Create, pod: newPod(annotate(AnnotationNdots, "99")), wantPatch: true, wantWarnings: 1,
			result: resultInjected, mode: ModeNodeCache,
		},
		{
			name: "namespace not cached yet: read live", flags: []string{"--kube-dns-ip=10.0.0.10"},
			cached: &fakeReader{}, live: &fakeReader{namespaces: enabled},
			op: admissionv1.Create, pod: newPod(), wantPatch: true, result: resultInjected, mode: ModeNodeCache,
		},
		{
			name:   "kube-dns from the watched Service",
			cached: &fakeReader{namespaces: enabled, services: map[string]string{"kube-dns": "10.0.0.10"}}, live: &fakeReader{},
			op: admissionv1.Create, pod: newPod(), wantPatch: true, result: resultInjected, mode: ModeNodeCache,
		},
		{
			name:   "headless kube-dns Service is unknown",
			cached: &fakeReader{namespaces: enabled, services: map[string]string{"kube-dns": corev1.ClusterIPNone}}, live: &fakeReader{},
			op: admissionv1.Create, pod: newPod(), wantWarnings: 1, result: resultSkipped, reason: string(SkipKubeDNSUnknown),
		},
		{
			name:   "no kube-dns Service",
			cached: &fakeReader{namespaces: enabled}, live: &fakeReader{},
			op: admissionv1.Create, pod: newPod(), wantWarnings: 1, result: resultSkipped, reason: string(SkipKubeDNSUnknown),
		},
		{
			name: "update is not mutated", flags: []string{"--kube-dns-ip=10.0.0.10"},
			cached: &fakeReader{namespaces: enabled}, live: &fakeReader{},
			op: admissionv1.Update, pod: newPod(), result: resultSkipped, reason: string(SkipNotCreate),
		},
		{
			name: "undecodable object is admitted", flags: []string{"--kube-dns-ip=10.0.0.10"},
			cached: &fakeReader{namespaces: enabled}, live: &fakeReader{},
			op: admissionv1.Create, pod: newPod(), raw: []byte(`{"spec": 7`), result: resultError, reason: errDecode,
		},
		{
			name: "namespace lookup failure is admitted", flags: []string{"--kube-dns-ip=10.0.0.10"},
			cached: &fakeReader{err: errors.New("cache down")}, live: &fakeReader{},
			op: admissionv1.Create, pod: newPod(), result: resultError, reason: errNamespace,
		},
		{
			name:   "kube-dns lookup failure is admitted",
			cached: &fakeReader{namespaces: enabled, serviceErr: errors.New("cache down")}, live: &fakeReader{},
			op: admissionv1.Create, pod: newPod(), result: resultError, reason: errKubeDNS,
		},
		{
			name:   "malformed kube-dns ClusterIP is admitted",
			cached: &fakeReader{namespaces: enabled, services: map[string]string{"kube-dns": "10.0.0.300"}}, live: &fakeReader{},
			op: admissionv1.Create, pod: newPod(), result: resultError, reason: errKubeDNS,
		},
		{
			name: "panic is admitted", flags: []string{"--kube-dns-ip=10.0.0.10"},
			cached: &fakeReader{panics: true}, live: &fakeReader{},
			op: admissionv1.Create, pod: newPod(), result: resultError, reason: errPanic,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, metrics := newTestHandler(t, testConfig(t, tt.flags...), true, tt.cached, tt.live)
			req := admissionRequest(t, tt.op, tt.pod)
			if tt.raw != nil {
				req.Object.Raw = tt.raw
			}
			resp := h.Handle(t.Context(), req)
			if !resp.Allowed {
				t.Fatalf("denied: %+v", resp.Result)
			}
			if got := len(resp.Patches) > 0; got != tt.wantPatch {
				t.Fatalf("patch present = %v, want %v", got, tt.wantPatch)
			}
			if len(resp.Warnings) != tt.wantWarnings {
				t.Errorf("warnings %q, want %d", resp.Warnings, tt.wantWarnings)
			}
			if got := counterValue(t, metrics.admissions.WithLabelValues(tt.result, string(tt.mode), tt.reason)); got != 1 {
				t.Errorf("admissions{result=%s,mode=%s,reason=%s} = %v, want 1", tt.result, tt.mode, tt.reason, got)
			}
			if tt.wantPatch {
				assertPatchYields(t, req, resp, tt.pod)
			}
		})
	}
}

// TestServiceClusterIPs: the kube-dns addresses come from spec.clusterIPs,
// primary first, or spec.clusterIP alone; a headless Service has none.
func TestServiceClusterIPs(t *testing.T) {
	tests := []struct {
		name    string
		spec    corev1.ServiceSpec
		want    string // as fmt prints the addresses
		wantErr bool
	}{
		{name: "IPv4", spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}}, want: "[10.96.0.10]"},
		{name: "IPv6", spec: corev1.ServiceSpec{ClusterIP: "fd00::a", ClusterIPs: []string{"fd00::a"}}, want: "[fd00::a]"},
		{name: "dual-stack, IPv6 primary", spec: corev1.ServiceSpec{ClusterIP: "fd00::a", ClusterIPs: []string{"fd00::a", "10.96.0.10"}},
			want: "[fd00::a 10.96.0.10]"},
		{name: "clusterIPs unset", spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10"}, want: "[10.96.0.10]"},
		{name: "headless", spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, ClusterIPs: []string{corev1.ClusterIPNone}}, want: "[]"},
		{name: "no ClusterIP", want: "[]"},
		{name: "malformed", spec: corev1.ServiceSpec{ClusterIPs: []string{"10.96.0.10", "fd00::g"}}, want: "[]", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ServiceClusterIPs(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns"}, Spec: tt.spec})
			if (err != nil) != tt.wantErr || fmt.Sprint(got) != tt.want {
				t.Errorf("got %v, %v; want %s, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// assertPatchYields applies the response's JSON patch to the request's pod
// and checks the result carries the marker and dnsPolicy None.
func assertPatchYields(t *testing.T, req admission.Request, resp admission.Response, original *corev1.Pod) {
	t.Helper()
	ops, err := json.Marshal(resp.Patches)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		t.Fatalf("decode patch %s: %v", ops, err)
	}
	patched, err := patch.Apply(req.Object.Raw)
	if err != nil {
		t.Fatalf("apply patch %s: %v", ops, err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(patched, &got); err != nil {
		t.Fatal(err)
	}
	if got.Annotations[AnnotationInjected] == "" || got.Spec.DNSPolicy != corev1.DNSNone || got.Spec.DNSConfig == nil {
		t.Fatalf("patched pod lacks the injection: %+v", got)
	}
	got.Annotations, got.Spec.DNSPolicy, got.Spec.DNSConfig = original.Annotations, original.Spec.DNSPolicy, original.Spec.DNSConfig
	if !equality.Semantic.DeepEqual(&got, original) {
		t.Errorf("patch changed more than the DNS settings and the marker")
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestHandlerKeepsUnknownFields: fields this build does not know (sent by a
// newer API server) survive the patch, except inside the container list the
// stub was inserted into, where they are dropped rather than moved onto
// another container.
func TestHandlerKeepsUnknownFields(t *testing.T) {
	const raw = `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"app","namespace":"team-a","annotations":%s},
		"spec":{"futurePodField":"keep","dnsPolicy":"ClusterFirst",
		"initContainers":[{"name":"init","image":"registry.example/init:1","futureField":"init"}],
		"containers":[{"name":"app","image":"registry.example/app:1","futureField":"app"}]}}`
	tests := []struct {
		name        string
		annotations string
		native      bool
		keepInit    bool
		keepApp     bool
	}{
		{"nodecache", `{}`, true, true, true},
		{"stub as native sidecar", `{"localdns.io/mode":"stub"}`, true, false, true},
		{"stub as regular container", `{"localdns.io/mode":"stub"}`, false, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reader := &fakeReader{namespaces: map[string]map[string]string{testNS: {LabelInject: namespaceEnabled}}}
			h, _ := newTestHandler(t, testConfig(t, "--kube-dns-ip=10.0.0.10"), tt.native, reader, reader)
			req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
				UID: "uid", Operation: admissionv1.Create, Namespace: testNS,
				Kind:   metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Object: runtime.RawExtension{Raw: []byte(fmt.Sprintf(raw, tt.annotations))},
			}}
			resp := h.Handle(t.Context(), req)
			ops, err := json.Marshal(resp.Patches)
			if err != nil {
				t.Fatal(err)
			}
			patch, err := jsonpatch.DecodePatch(ops)
			if err != nil {
				t.Fatal(err)
			}
			patched, err := patch.Apply(req.Object.Raw)
			if err != nil {
				t.Fatalf("apply %s: %v", ops, err)
			}
			var got struct {
				Spec struct {
					FuturePodField string `json:"futurePodField"`
					DNSPolicy      string `json:"dnsPolicy"`
					InitContainers []struct {
						Name        string `json:"name"`
						FutureField string `json:"futureField"`
					} `json:"initContainers"`
					Containers []struct {
						Name        string `json:"name"`
						FutureField string `json:"futureField"`
					} `json:"containers"`
				} `json:"spec"`
			}
			if err := json.Unmarshal(patched, &got); err != nil {
				t.Fatal(err)
			}
			if got.Spec.DNSPolicy != string(corev1.DNSNone) || got.Spec.FuturePodField != "keep" {
				t.Fatalf("dnsPolicy %q, futurePodField %q: %s", got.Spec.DNSPolicy, got.Spec.FuturePodField, patched)
			}
			for _, list := range [][]struct {
				Name        string `json:"name"`
				FutureField string `json:"futureField"`
			}{got.Spec.InitContainers, got.Spec.Containers} {
				for _, c := range list {
					want := ""
					switch {
					case c.Name == "init" && tt.keepInit:
						want = "init"
					case c.Name == "app" && tt.keepApp:
						want = "app"
					}
					if c.FutureField != want {
						t.Errorf("container %s: futureField %q, want %q (%s)", c.Name, c.FutureField, want, patched)
					}
				}
			}
		})
	}
}

// BenchmarkHandle measures one admission in-process: decode, decide, apply,
// diff into a JSON patch.
func BenchmarkHandle(b *testing.B) {
	for _, mode := range []Mode{ModeNodeCache, ModeStub} {
		b.Run(string(mode), func(b *testing.B) {
			cfg, err := ParseFlags("bench", []string{"--kube-dns-ip=10.0.0.10"}, func(string) string { return "" }, io.Discard)
			if err != nil {
				b.Fatal(err)
			}
			reader := &fakeReader{namespaces: map[string]map[string]string{testNS: {LabelInject: namespaceEnabled}}}
			h, _ := newTestHandler(b, cfg, true, reader, reader)
			raw, err := json.Marshal(newPod(annotate(AnnotationMode, string(mode))))
			if err != nil {
				b.Fatal(err)
			}
			req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
				UID: "uid", Operation: admissionv1.Create, Namespace: testNS,
				Kind:   metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Object: runtime.RawExtension{Raw: raw},
			}}
			b.ReportAllocs()
			for b.Loop() {
				if resp := h.Handle(b.Context(), req); len(resp.Patches) == 0 {
					b.Fatal("no patch")
				}
			}
		})
	}
}

// newTestHandler builds a Handler with its own metrics registry and a scheme
// that knows Pods, and returns its metrics for the tests that read them.
func newTestHandler(tb testing.TB, cfg Config, native bool, cached, live client.Reader) (*Handler, *Metrics) {
	tb.Helper()
	metrics, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		tb.Fatal(err)
	}
	return NewHandler(cfg, native, cached, live, scheme, metrics), metrics
}

package webhook

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/yaml"
)

// goldenCase is one file under testdata/golden: the inputs of Decide and the
// pod Apply must produce.
type goldenCase struct {
	Flags []string `json:"flags"`
	Env   struct {
		KubeDNSIPs     []netip.Addr `json:"kubeDNSIPs"`
		NativeSidecars bool         `json:"nativeSidecars"`
	} `json:"env"`
	Namespace struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"namespace"`
	Skip     SkipReason  `json:"skip"`     // empty: injected
	Warnings []string    `json:"warnings"` // exact texts
	Pod      corev1.Pod  `json:"pod"`
	Want     *corev1.Pod `json:"want"` // nil: the pod unchanged
}

// TestGolden walks testdata/golden/*.yaml: Decide then Apply on the input pod
// must give exactly the expected pod, reason and warnings.
func TestGolden(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("testdata", "golden", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var c goldenCase
			if err := yaml.UnmarshalStrict(data, &c); err != nil {
				t.Fatalf("parse %s: %v", file, err)
			}
			cfg := testConfig(t, c.Flags...)
			ns := Namespace{Name: c.Namespace.Name, Labels: c.Namespace.Labels}
			plan := Decide(&c.Pod, ns, cfg, Env{KubeDNSIPs: c.Env.KubeDNSIPs, NativeSidecars: c.Env.NativeSidecars})
			if plan.SkipReason != c.Skip || plan.Inject != (c.Skip == "") {
				t.Fatalf("inject=%v reason=%q, want reason %q", plan.Inject, plan.SkipReason, c.Skip)
			}
			if !slices.Equal(plan.Warnings, c.Warnings) {
				t.Errorf("warnings:\n got %q\nwant %q", plan.Warnings, c.Warnings)
			}
			want := c.Want
			if want == nil {
				want = &c.Pod
			}
			got := Apply(&c.Pod, plan)
			if !equality.Semantic.DeepEqual(got, want) {
				gotYAML, _ := yaml.Marshal(got)
				wantYAML, _ := yaml.Marshal(want)
				t.Errorf("pod after Apply:\n%s\nwant:\n%s", gotYAML, wantYAML)
			}
		})
	}
}

// Package manifests holds the kustomize manifests, most of them rendered from
// the Helm chart in charts/localdns; its tests keep the two in step, render
// every kustomization (with the provisioned kubectl) and every chart profile
// (with helm), compare the kustomizations with golden files, check the
// properties the design asks for on every rendering, and apply them all to a
// real kube-apiserver.
package manifests

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/localdns/localdns/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ from the rendered manifests")

// kustomizations are every directory a user applies with `kubectl apply -k`,
// keyed by the name of its golden file.
var kustomizations = map[string]string{
	"default":       "overlays/default",
	"cluster-wide":  "overlays/cluster-wide",
	"cert-manager":  "overlays/cert-manager",
	"startup-taint": "overlays/startup-taint",
	"uninstall":     "uninstall",
	"monitoring":    "monitoring",
}

// kubectl finds the provisioned kubectl (next to kube-apiserver). Missing
// binaries skip the test, or fail it under `make test`.
func kubectl(t *testing.T) string {
	t.Helper()
	dir, err := testenv.AssetsDir()
	if err == nil {
		p := filepath.Join(dir, "kubectl")
		if _, statErr := os.Stat(p); statErr == nil {
			return p
		}
		err = errors.Join(testenv.ErrNoAssets, errors.New("kubectl missing in "+dir))
	}
	if !testenv.Required() {
		t.Skip(err)
	}
	t.Fatal(err)
	return ""
}

// render runs `kubectl kustomize dir`.
func render(t *testing.T, dir string) []byte {
	t.Helper()
	cmd := exec.Command(kubectl(t), "kustomize", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	return out
}

// rendered is the output of a kustomization (kustomizations) or of the chart
// with a profile's values (chartProfiles), by rendering name.
func rendered(t *testing.T, name string) []byte {
	t.Helper()
	if dir, ok := kustomizations[name]; ok {
		return render(t, dir)
	}
	return renderProfile(t, name)
}

// object is one rendered document: its kind and name, and the raw YAML to
// decode into a typed object.
type object struct {
	Kind      string
	Name      string
	Namespace string
	raw       []byte
}

func splitObjects(t *testing.T, rendered []byte) []object {
	t.Helper()
	var objs []object
	for _, doc := range strings.Split(string(rendered), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("rendered document does not parse: %v\n%s", err, doc)
		}
		objs = append(objs, object{Kind: head.Kind, Name: head.Metadata.Name, Namespace: head.Metadata.Namespace, raw: []byte(doc)})
	}
	return objs
}

// TestGolden renders every kustomization and compares it with
// testdata/<name>.yaml; `go test ./manifests -update` rewrites them.
func TestGolden(t *testing.T) {
	for name, dir := range kustomizations {
		t.Run(name, func(t *testing.T) {
			got := render(t, dir)
			golden := filepath.Join("testdata", name+".yaml")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./manifests -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("kubectl kustomize %s differs from %s; review the change and run go test ./manifests -update\n%s",
					dir, golden, lineDiff(string(want), string(got)))
			}
		})
	}
}

// lineDiff lists the lines only in want (-) or only in got (+), enough to
// see what changed without a diff library.
func lineDiff(want, got string) string {
	count := map[string]int{}
	for _, l := range strings.Split(want, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(got, "\n") {
		count[l]--
	}
	var b strings.Builder
	for l, n := range count {
		for ; n > 0; n-- {
			b.WriteString("- " + l + "\n")
		}
		for ; n < 0; n++ {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}

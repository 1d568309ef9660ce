// Package krew holds the krew plugin manifest of kubectl-localdns; its test
// renders the template the way krew-release-bot does and checks the result
// is a manifest krew accepts for every platform the plugin is built for.
package krew

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"text/template"

	"sigs.k8s.io/yaml"
)

// plugin is the part of krew's Plugin (v1alpha2) the test checks.
type plugin struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version          string `json:"version"`
		Homepage         string `json:"homepage"`
		ShortDescription string `json:"shortDescription"`
		Description      string `json:"description"`
		Caveats          string `json:"caveats"`
		Platforms        []struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			URI    string `json:"uri"`
			SHA256 string `json:"sha256"`
			Bin    string `json:"bin"`
			Files  []struct {
				From string `json:"from"`
				To   string `json:"to"`
			} `json:"files"`
		} `json:"platforms"`
	} `json:"spec"`
}

// render fills the template as krew-release-bot does: .TagName, and
// addURIAndSha writing the URL (itself a template) and the archive's digest
// (here the URL's, standing in) at the bot's fixed four-space indent.
func render(t *testing.T, tag string) []byte {
	t.Helper()
	text, err := os.ReadFile("localdns.yaml")
	if err != nil {
		t.Fatal(err)
	}
	data := struct{ TagName string }{tag}
	funcs := template.FuncMap{"addURIAndSha": func(url, tag string) (string, error) {
		var uri bytes.Buffer
		if err := template.Must(template.New("uri").Parse(url)).Execute(&uri, data); err != nil {
			return "", err
		}
		return fmt.Sprintf("uri: %s\n    sha256: %x", uri.String(), sha256.Sum256(uri.Bytes())), nil
	}}
	tmpl, err := template.New("localdns.yaml").Funcs(funcs).Parse(string(text))
	if err != nil {
		t.Fatalf("parse the template: %v", err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, data); err != nil {
		t.Fatalf("render the template: %v", err)
	}
	return out.Bytes()
}

func TestManifest(t *testing.T) {
	const tag = "v1.2.3"
	var p plugin
	if err := yaml.UnmarshalStrict(render(t, tag), &p); err != nil {
		t.Fatalf("rendered manifest: %v", err)
	}
	if p.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || p.Kind != "Plugin" || p.Metadata.Name != "localdns" {
		t.Errorf("apiVersion %q kind %q name %q, want a krew v1alpha2 Plugin named localdns (kubectl localdns)", p.APIVersion, p.Kind, p.Metadata.Name)
	}
	if p.Spec.Version != tag {
		t.Errorf("version %q, want the tag %s", p.Spec.Version, tag)
	}
	if n := len(p.Spec.ShortDescription); n == 0 || n > 80 {
		t.Errorf("shortDescription of %d characters; krew-index wants a short one", n)
	}
	var platforms []string
	for _, pl := range p.Spec.Platforms {
		osName, arch := pl.Selector.MatchLabels["os"], pl.Selector.MatchLabels["arch"]
		platform := osName + "_" + arch
		platforms = append(platforms, platform)
		wantBin := "kubectl-localdns"
		if osName == "windows" {
			wantBin += ".exe"
		}
		if pl.Bin != wantBin || len(pl.Files) != 1 || pl.Files[0].From != wantBin || pl.Files[0].To != "." {
			t.Errorf("%s: bin %q files %+v, want %s copied from the archive", platform, pl.Bin, pl.Files, wantBin)
		}
		if want := "/" + tag + "/kubectl-localdns_" + tag + "_" + platform + ".tar.gz"; !strings.HasSuffix(pl.URI, want) || len(pl.SHA256) != 64 {
			t.Errorf("%s: uri %q sha256 %q, want the release archive ending %s", platform, pl.URI, pl.SHA256, want)
		}
	}
	if want := []string{"darwin_amd64", "darwin_arm64", "linux_amd64", "linux_arm64", "windows_amd64"}; !slices.Equal(sorted(platforms), want) {
		t.Errorf("platforms %v, want %v", platforms, want)
	}
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/localdns/localdns/e2e/cluster"
)

func TestWriteSection(t *testing.T) {
	const section = "## In the cluster\n\nnew figures\n"
	tests := []struct{ name, before, want string }{
		{"absent file", "", section},
		{"appended", "# peers\n\ntable\n", "# peers\n\ntable\n\n" + section},
		{"replaced to the end", "# peers\n\ntable\n\n## In the cluster\n\nold figures\nmore\n", "# peers\n\ntable\n\n" + section},
		{"a mention is not the heading", "# peers\nsee ## In the cluster\n", "# peers\nsee ## In the cluster\n\n" + section},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "results.md")
			if tt.before != "" {
				if err := os.WriteFile(path, []byte(tt.before), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := writeSection(path, section); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("file =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

// TestInstallPrerequisites runs installPrerequisites against fake
// provisioning scripts (named so; they stand in for apt-get and the
// Kubernetes and CoreDNS builds, which take minutes) in a scratch
// repository, with PATH holding only stand-ins for the tools the demo looks
// for: what is missing is installed by the script that provides it, and
// what a script failed to provide is named.
func TestInstallPrerequisites(t *testing.T) {
	tests := []struct {
		name       string
		noTool     string   // a tool not on PATH at first
		noK8s      []string // Kubernetes binaries not built yet
		noCoreDNS  bool
		installFix bool // the fake install-deps.sh provides the missing tool
		wantRan    string
		wantErr    string
	}{
		{name: "everything present", wantRan: ""},
		{name: "a tool missing", noTool: "curl", installFix: true, wantRan: "install-deps\n"},
		{name: "a tool the install does not provide", noTool: "musl-gcc", wantRan: "install-deps\n",
			wantErr: "still missing after hack/install-deps.sh: musl-gcc"},
		{name: "Kubernetes and CoreDNS not built", noK8s: []string{"kubelet", "kube-proxy"}, noCoreDNS: true,
			wantRan: "provision-k8s kubelet kube-proxy\nprovision-coredns\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			bin, repo, cache := filepath.Join(dir, "bin"), filepath.Join(dir, "repo"), filepath.Join(dir, "cache")
			ran := filepath.Join(dir, "ran")
			cfg := cluster.Config{RepoDir: repo, K8sBinDir: filepath.Join(cache, "k8s"),
				CoreDNSBinary: filepath.Join(cache, "coredns"), BusyboxBinary: filepath.Join(cache, "busybox")}
			mustWrite := func(path, content string, mode os.FileMode) {
				t.Helper()
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(content), mode); err != nil {
					t.Fatal(err)
				}
			}
			for _, tool := range demoTools {
				if tool != tt.noTool {
					mustWrite(filepath.Join(bin, tool), "#!/bin/sh\n", 0o755)
				}
			}
			for _, c := range kubernetesComponents {
				if !slices.Contains(tt.noK8s, c) {
					mustWrite(filepath.Join(cfg.K8sBinDir, c), "", 0o755)
				}
			}
			if !tt.noCoreDNS {
				mustWrite(cfg.CoreDNSBinary, "", 0o755)
			}
			mustWrite(cfg.BusyboxBinary, "", 0o755)
			// The fake scripts record that they ran (PATH holds only the
			// stand-ins: absolute paths for the shell's helpers).
			provide := ""
			if tt.installFix {
				provide = fmt.Sprintf("printf '#!/bin/sh\\n' > %[1]q && /bin/chmod +x %[1]q\n", filepath.Join(bin, tt.noTool))
			}
			mustWrite(filepath.Join(repo, "hack/install-deps.sh"), fmt.Sprintf("#!/bin/sh\necho install-deps >> %q\n%s", ran, provide), 0o755)
			mustWrite(filepath.Join(repo, "hack/provision-k8s.sh"), fmt.Sprintf("#!/bin/sh\necho provision-k8s \"$@\" >> %q\n", ran), 0o755)
			mustWrite(filepath.Join(repo, "e2e/hack/provision-coredns.sh"), fmt.Sprintf("#!/bin/sh\necho provision-coredns >> %q\n", ran), 0o755)
			t.Setenv("PATH", bin)

			err := installPrerequisites(context.Background(), cfg)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			got, err := os.ReadFile(ran)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			if string(got) != tt.wantRan {
				t.Errorf("scripts run:\n%q\nwant\n%q", got, tt.wantRan)
			}
		})
	}
}

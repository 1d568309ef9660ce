// Package testenv boots a real kube-apiserver and etcd (controller-runtime
// envtest) from the binaries that hack/provision-k8s.sh builds and caches.
//
// It is imported only by tests. Outside `make test` the binaries may be
// absent: then Boot reports ErrNoAssets and the caller skips. Under
// `make test` LOCALDNS_REQUIRE_ENVTEST=1 turns that skip into a failure, so CI
// can never pass by silently skipping the API server tests.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// KubernetesVersion is the version hack/provision-k8s.sh builds by default.
const KubernetesVersion = "v1.37.2"

// ErrNoAssets means the kube-apiserver and etcd binaries were not found.
var ErrNoAssets = errors.New("envtest binaries not provisioned (run hack/provision-k8s.sh or make test)")

// Required reports whether missing binaries must fail the test run.
func Required() bool { return os.Getenv("LOCALDNS_REQUIRE_ENVTEST") == "1" }

// AssetsDir finds the directory holding kube-apiserver and etcd: the
// KUBEBUILDER_ASSETS variable, else the provisioning script's cache.
func AssetsDir() (string, error) {
	candidates := []string{os.Getenv("KUBEBUILDER_ASSETS")}
	cache := os.Getenv("LOCALDNS_CACHE")
	if cache == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cache = filepath.Join(home, ".cache", "localdns")
		}
	}
	if cache != "" {
		candidates = append(candidates, filepath.Join(cache, "k8s", KubernetesVersion, "bin"))
	}
	for _, dir := range candidates {
		if dir == "" {
			continue
		}
		if isExecutable(filepath.Join(dir, "kube-apiserver")) && isExecutable(filepath.Join(dir, "etcd")) {
			return dir, nil
		}
	}
	return "", ErrNoAssets
}

// Boot starts env with the provisioned binaries and returns its rest config.
// When the binaries are missing it returns an error wrapping ErrNoAssets;
// callers skip on that unless Required.
func Boot(env *envtest.Environment) (*rest.Config, error) {
	dir, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	env.BinaryAssetsDirectory = dir
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver and etcd from %s: %w", dir, err)
	}
	return cfg, nil
}

// Start is Boot for one test: the test is skipped when the binaries are
// missing (failed under Required), failed on any other error, and the API
// server is stopped when it ends.
func Start(t testing.TB, env *envtest.Environment) *rest.Config {
	t.Helper()
	cfg, err := Boot(env)
	if errors.Is(err, ErrNoAssets) && !Required() {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop kube-apiserver: %v", err)
		}
	})
	return cfg
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

package kubectlplugin

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/localdns/localdns/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ from the plugin's output")

// The clocks. The webhook's self-managed CA is issued at certClock, so its
// expiry is the same every run; the plugin reads it at pluginNow.
var (
	certClock = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pluginNow = time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
)

// fx is the cluster every test reads; nil when the API server binaries are
// missing and not required.
var fx *fixture

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	quiet := logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	ctrllog.SetLogger(quiet)
	klog.SetLogger(quiet)

	dir, err := os.MkdirTemp("", "kubectlplugin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubectlplugin:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	proxy, err := startEgressProxy(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubectlplugin:", err)
		return 1
	}
	defer proxy.close()
	egressConfig := filepath.Join(dir, "egress.yaml")
	if err := os.WriteFile(egressConfig, []byte(proxy.config()), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "kubectlplugin:", err)
		return 1
	}

	env := &envtest.Environment{}
	env.ControlPlane.GetAPIServer().Configure().Set("egress-selector-config-file", egressConfig)
	cfg, err := testenv.Boot(env)
	if errors.Is(err, testenv.ErrNoAssets) && !testenv.Required() {
		fmt.Fprintln(os.Stderr, "kubectlplugin: skipping the API server tests:", err)
		return m.Run()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubectlplugin:", err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "kubectlplugin: stop envtest:", err)
		}
	}()
	admin, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubectlplugin: add user:", err)
		return 1
	}
	kubeconfig, err := admin.KubeConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubectlplugin: kubeconfig:", err)
		return 1
	}
	kubeconfigFile := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfigFile, kubeconfig, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "kubectlplugin:", err)
		return 1
	}

	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	defer running.Wait()
	defer cancel()
	f, err := buildFixture(ctx, cfg, proxy, &running)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubectlplugin: build the test cluster:", err)
		return 1
	}
	f.kubeconfig = kubeconfigFile
	fx = f
	return m.Run()
}

// requireFixture skips when the API server is not available (and not required).
func requireFixture(t *testing.T) *fixture {
	t.Helper()
	if fx == nil {
		t.Skip("kube-apiserver and etcd not provisioned (hack/provision-k8s.sh)")
	}
	return fx
}

// result is one run of the plugin.
type result struct {
	stdout, stderr string
	err            error
}

// run runs `kubectl localdns args...` against the test cluster, through its
// kubeconfig file and flags as a user would.
func run(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	f := requireFixture(t)
	var stdout, stderr bytes.Buffer
	streams := genericiooptions.IOStreams{In: strings.NewReader(stdin), Out: &stdout, ErrOut: &stderr}
	cmd := NewCommand(streams, func() time.Time { return pluginNow })
	cmd.SetArgs(append([]string{"--kubeconfig", f.kubeconfig}, args...))
	err := cmd.ExecuteContext(t.Context())
	return result{stdout: stdout.String(), stderr: stderr.String(), err: err}
}

// golden compares got with testdata/name; -update rewrites it.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it)\n--- got:\n%s\n--- want:\n%s", path, got, want)
	}
}

// clientset is an admin client of the test cluster.
func clientset(t *testing.T) kubernetes.Interface {
	t.Helper()
	return requireFixture(t).client
}

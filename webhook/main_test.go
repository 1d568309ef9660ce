package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	"github.com/localdns/localdns/certs"
	"github.com/localdns/localdns/internal/ops/opstest"
	"github.com/localdns/localdns/internal/testenv"
)

// One kube-apiserver + etcd for the package. Several webhook instances (one
// per "profile": a flag set and the matching MutatingWebhookConfiguration)
// run in-process against it; each profile's configuration only selects
// namespaces labelled with its profile name, so tests never see each other.
const profileLabel = "localdns-test/profile"

// The profiles.
const (
	profileDefault     = "default"      // namespace opt-in, native sidecars auto-detected
	profileClusterWide = "cluster-wide" // --cluster-wide
	profileLegacy      = "legacy"       // --native-sidecars=false
	profileDiscover    = "discover"     // kube-dns discovered from a Service
	profileDown        = "down"         // configuration pointing at a closed port
	profileHung        = "hung"         // configuration pointing at a server that never answers
)

const (
	serviceRanges    = "10.0.0.0/24,fd00:10:96::/112"
	fixedKubeDNS     = "10.0.0.10"
	discoverService  = "localdns-test-dns"
	readinessTimeout = 60 * time.Second
)

// suite is nil when the API server binaries are missing and not required.
var suite *apiSuite

type apiSuite struct {
	config *rest.Config
	// metricsAddr of the discover profile, to check the one HTTP listener.
	metricsAddr string
}

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		// Fuzzing (the coordinator and every worker run TestMain): the fuzz
		// targets are pure functions, and an API server per process would
		// only slow them down.
		return m.Run()
	}
	quiet := logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	ctrllog.SetLogger(quiet)
	klog.SetLogger(quiet)

	env := &envtest.Environment{WebhookInstallOptions: envtest.WebhookInstallOptions{LocalServingHost: "127.0.0.1"}}
	// Service ranges of both families, IPv4 primary (envtest's own range
	// first): one API server then holds IPv4, IPv6 and dual-stack kube-dns
	// Services, as IPv4, IPv6 and dual-stack clusters have them.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", serviceRanges)
	cfg, err := testenv.Boot(env)
	if errors.Is(err, testenv.ErrNoAssets) && !testenv.Required() {
		fmt.Fprintln(os.Stderr, "webhook: skipping the API server tests:", err)
		return m.Run()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "webhook:", err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "webhook: stop envtest:", err)
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	defer running.Wait()
	defer cancel()
	s, err := startProfiles(ctx, cfg, env.WebhookInstallOptions, &running)
	if err != nil {
		fmt.Fprintln(os.Stderr, "webhook:", err)
		return 1
	}
	suite = s
	return m.Run()
}

// profileSetup is one webhook instance to start.
type profileSetup struct {
	name        string
	flags       []string
	clusterWide bool
	metricsAddr string
}

func startProfiles(ctx context.Context, cfg *rest.Config, hook envtest.WebhookInstallOptions, running *sync.WaitGroup) (*apiSuite, error) {
	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	metricsPort, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &apiSuite{config: cfg, metricsAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(metricsPort))}
	setups := []profileSetup{
		{name: profileDefault, flags: []string{"--kube-dns-ip=" + fixedKubeDNS}},
		{name: profileClusterWide, flags: []string{"--kube-dns-ip=" + fixedKubeDNS, "--cluster-wide"}, clusterWide: true},
		{name: profileLegacy, flags: []string{"--kube-dns-ip=" + fixedKubeDNS, "--native-sidecars=false"}},
		{name: profileDiscover, flags: []string{"--kube-dns-service=kube-system/" + discoverService}, metricsAddr: s.metricsAddr},
	}
	runErrs := make(chan error, len(setups))
	for _, p := range setups {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		metricsAddr := p.metricsAddr
		if metricsAddr == "" {
			metricsAddr = "0"
		}
		flags := append([]string{"--port=" + strconv.Itoa(port), "--metrics-addr=" + metricsAddr, "--stub-image=registry.example/localdns-stub:test"}, p.flags...)
		wcfg, err := Parse(p.name, flags, func(string) string { return "" }, os.Stderr)
		if err != nil {
			return nil, err
		}
		running.Add(1)
		go func() {
			defer running.Done()
			err := Run(ctx, wcfg, cfg, func(context.Context, kubernetes.Interface) (CertSource, error) {
				return certs.NewFromDir(hook.LocalServingCertDir)
			})
			if err != nil {
				runErrs <- fmt.Errorf("profile %s: %w", p.name, err)
			}
		}()
		url := fmt.Sprintf("https://127.0.0.1:%d%s", port, Path)
		if err := installWebhookConfig(ctx, clientset, p.name, p.clusterWide, url, hook.LocalServingCAData); err != nil {
			return nil, err
		}
	}
	// The down profiles: nobody listens, or a listener accepts connections
	// and never answers (the API server gives up after timeoutSeconds).
	closedPort, err := freePort()
	if err != nil {
		return nil, err
	}
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	running.Add(1)
	go func() {
		defer running.Done()
		holdConnections(ctx, hung)
	}()
	for profile, addr := range map[string]string{
		profileDown: net.JoinHostPort("127.0.0.1", strconv.Itoa(closedPort)),
		profileHung: hung.Addr().String(),
	} {
		if err := installWebhookConfig(ctx, clientset, profile, false, "https://"+addr+Path, hook.LocalServingCAData); err != nil {
			return nil, err
		}
	}
	for _, p := range setups {
		if err := waitServing(ctx, clientset, p.name, runErrs); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// The MutatingWebhookConfiguration the manifests ship, and the JSON patch
// the cluster-wide overlay applies to it.
var (
	shippedWebhookConfig = filepath.Join("..", "manifests", "base", "mutatingwebhookconfiguration.yaml")
	clusterWideOverlay   = filepath.Join("..", "manifests", "overlays", "cluster-wide", "kustomization.yaml")
)

// shippedConfiguration reads the shipped configuration, patched as the
// cluster-wide overlay does when clusterWide, so the tests exercise exactly
// the selectors users get.
func shippedConfiguration(clusterWide bool) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	data, err := os.ReadFile(shippedWebhookConfig)
	if err != nil {
		return nil, err
	}
	doc, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", shippedWebhookConfig, err)
	}
	if clusterWide {
		if doc, err = applyOverlayPatch(doc); err != nil {
			return nil, err
		}
	}
	var whc admissionregistrationv1.MutatingWebhookConfiguration
	if err := json.Unmarshal(doc, &whc); err != nil {
		return nil, fmt.Errorf("decode %s: %w", shippedWebhookConfig, err)
	}
	return &whc, nil
}

// applyOverlayPatch applies the cluster-wide overlay's JSON patch for the
// MutatingWebhookConfiguration to doc.
func applyOverlayPatch(doc []byte) ([]byte, error) {
	data, err := os.ReadFile(clusterWideOverlay)
	if err != nil {
		return nil, err
	}
	var kustomization struct {
		Patches []struct {
			Target struct{ Kind string }
			Patch  string
		}
	}
	if err := yaml.Unmarshal(data, &kustomization); err != nil {
		return nil, fmt.Errorf("parse %s: %w", clusterWideOverlay, err)
	}
	for _, p := range kustomization.Patches {
		if p.Target.Kind != "MutatingWebhookConfiguration" {
			continue
		}
		ops, err := yaml.YAMLToJSON([]byte(p.Patch))
		if err != nil {
			return nil, fmt.Errorf("parse patch in %s: %w", clusterWideOverlay, err)
		}
		patch, err := jsonpatch.DecodePatch(ops)
		if err != nil {
			return nil, fmt.Errorf("decode patch in %s: %w", clusterWideOverlay, err)
		}
		return patch.Apply(doc)
	}
	return nil, fmt.Errorf("%s has no MutatingWebhookConfiguration patch", clusterWideOverlay)
}

// installWebhookConfig registers the shipped configuration for one profile:
// served at url, trusted through caData, limited to the profile's namespaces.
func installWebhookConfig(ctx context.Context, clientset kubernetes.Interface, profile string, clusterWide bool, url string, caData []byte) error {
	whc, err := shippedConfiguration(clusterWide)
	if err != nil {
		return err
	}
	whc.Name = "localdns-test-" + profile
	for i := range whc.Webhooks {
		w := &whc.Webhooks[i]
		w.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caData}
		w.NamespaceSelector.MatchExpressions = append(w.NamespaceSelector.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: profileLabel, Operator: metav1.LabelSelectorOpIn, Values: []string{profile},
		})
	}
	if _, err := clientset.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, whc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create webhook configuration %s: %w", whc.Name, err)
	}
	return nil
}

// waitServing waits until the API server sends the profile's pods through its
// webhook: a dry-run pod (opted in, no fallback needed) comes back injected.
// With failurePolicy Ignore, nothing else tells "registered and serving" apart
// from "silently skipped".
func waitServing(ctx context.Context, clientset kubernetes.Interface, profile string, runErrs <-chan error) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ready-" + profile, Labels: map[string]string{profileLabel: profile}}}
	if _, err := clientset.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return err
	}
	pod := testPod("probe", map[string]string{LabelInject: podOptIn}, map[string]string{AnnotationFallback: "false"})
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, readinessTimeout, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-runErrs:
			return false, err
		default:
		}
		got, err := clientset.CoreV1().Pods(ns.Name).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, err
		}
		return got.Annotations[AnnotationInjected] != "", nil
	})
	if err != nil {
		return fmt.Errorf("profile %s never served: %w", profile, err)
	}
	return nil
}

// holdConnections accepts connections and never answers until ctx ends.
func holdConnections(ctx context.Context, l net.Listener) {
	var held []net.Conn
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			break
		}
		held = append(held, c)
	}
	for _, c := range held {
		c.Close()
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func testPod(name string, labels, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}},
		},
	}
}

// requireSuite skips when the API server is not available (and not required).
func requireSuite(t *testing.T) *apiSuite {
	t.Helper()
	if suite == nil {
		t.Skip("kube-apiserver and etcd not provisioned (hack/provision-k8s.sh)")
	}
	return suite
}

// warningCollector records the API server's warnings for one client.
type warningCollector struct {
	mu       sync.Mutex
	messages []string
}

func (w *warningCollector) HandleWarningHeader(_ int, _ string, message string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.messages = append(w.messages, message)
}

func (w *warningCollector) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.messages
	w.messages = nil
	return out
}

// client returns a clientset whose warnings t can read.
func (s *apiSuite) client(t *testing.T) (kubernetes.Interface, *warningCollector) {
	t.Helper()
	warnings := &warningCollector{}
	cfg := rest.CopyConfig(s.config)
	cfg.WarningHandler = warnings
	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return clientset, warnings
}

var namespaceSeq atomic.Int64

// namespace creates a fresh namespace of a profile with the given
// localdns.io/inject label ("" for none).
func (s *apiSuite) namespace(t *testing.T, clientset kubernetes.Interface, profile, inject string) string {
	t.Helper()
	labels := map[string]string{profileLabel: profile}
	if inject != "" {
		labels[LabelInject] = inject
	}
	name := fmt.Sprintf("t%d-%s", namespaceSeq.Add(1), profile)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := clientset.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return name
}

// httpGet fetches a path of the discover profile's metrics listener.
func (s *apiSuite) httpGet(t *testing.T, path string) (int, string) {
	t.Helper()
	return opstest.Get(t, "http://"+s.metricsAddr+path)
}

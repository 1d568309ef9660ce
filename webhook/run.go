package webhook

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	utilversion "k8s.io/apimachinery/pkg/util/version"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	ctrlwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// CertSource serves the webhook's certificate and keeps it current (rotation,
// reload); Start runs until ctx ends. certs.Source implements it.
type CertSource interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	Start(ctx context.Context) error
}

// NewCertSource builds the certificate source once a client exists; the
// self-managed one bootstraps its Secret and caBundle before returning.
type NewCertSource func(ctx context.Context, clientset kubernetes.Interface) (CertSource, error)

// nativeSidecarsSince is the first release with native sidecars on by default.
var nativeSidecarsSince = utilversion.MajorMinor(1, 29)

// Run serves the webhook until ctx ends, then drains for cfg.ShutdownTimeout.
// It keeps no state besides the API server, so replicas are interchangeable.
func Run(ctx context.Context, cfg Config, restConfig *rest.Config, newCerts NewCertSource) error {
	clientset, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("create clientset: %w", err)
	}
	native, err := resolveNativeSidecars(cfg.NativeSidecars, clientset.Discovery())
	if err != nil {
		return err
	}
	certSource, err := newCerts(ctx, clientset)
	if err != nil {
		return fmt.Errorf("set up serving certificate: %w", err)
	}

	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return fmt.Errorf("build scheme: %w", err)
	}
	server := ctrlwebhook.NewServer(ctrlwebhook.Options{
		Port:    cfg.Port,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.GetCertificate = certSource.GetCertificate }},
	})
	readyz := &healthz.Handler{Checks: map[string]healthz.Checker{}}
	mgr, err := manager.New(restConfig, manager.Options{
		Scheme: scheme,
		Metrics: metricsserver.Options{
			BindAddress: cfg.MetricsAddr,
			ExtraHandlers: healthEndpoints(map[string]*healthz.Handler{
				"/healthz": {Checks: map[string]healthz.Checker{"ping": healthz.Ping}},
				"/readyz":  readyz,
			}),
		},
		HealthProbeBindAddress: "0", // served on the metrics listener instead
		WebhookServer:          server,
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			// Only the kube-dns Service, not every Service of the cluster.
			&corev1.Service{}: {Namespaces: map[string]cache.Config{
				cfg.KubeDNSService.Namespace: {FieldSelector: fields.OneTermEqualSelector("metadata.name", cfg.KubeDNSService.Name)},
			}},
		}},
		GracefulShutdownTimeout: &cfg.ShutdownTimeout,
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	if err := mgr.Add(certSource); err != nil {
		return fmt.Errorf("add certificate source: %w", err)
	}
	// Start the informers with the manager, so /readyz means "can decide".
	watched := []client.Object{namespaceMetadata()}
	if len(cfg.KubeDNSIPs) == 0 {
		watched = append(watched, &corev1.Service{})
	}
	for _, obj := range watched {
		if _, err := mgr.GetCache().GetInformer(ctx, obj); err != nil {
			return fmt.Errorf("watch %T: %w", obj, err)
		}
	}
	metrics, err := NewMetrics(ctrlmetrics.Registry)
	if err != nil {
		return err
	}
	handler := NewHandler(cfg, native, mgr.GetCache(), mgr.GetAPIReader(), scheme, metrics)
	// GetWebhookServer is what adds the server to the manager's runnables.
	mgr.GetWebhookServer().Register(Path, &admission.Webhook{Handler: handler})
	readyz.Checks["webhook"] = server.StartedChecker()
	readyz.Checks["informers"] = informersSynced(mgr.GetCache())

	mgr.GetLogger().Info("starting localdns-webhook", "port", cfg.Port, "metricsAddr", cfg.MetricsAddr,
		"clusterWide", cfg.ClusterWide, "nativeSidecars", native, "kubeDNSIPs", cfg.KubeDNSIPs, "kubeDNSService", cfg.KubeDNSService,
		"ipFamilies", cfg.IPFamilies, "localIP", cfg.LocalIP, "localIPv6", cfg.LocalIPv6)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}

// namespaceMetadata is the object the handler reads namespaces into: labels
// are all it needs, so the informer keeps metadata only.
func namespaceMetadata() *metav1.PartialObjectMetadata {
	meta := &metav1.PartialObjectMetadata{}
	meta.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
	return meta
}

// healthEndpoints serves each check set at its path, the aggregate at /path
// and one check at /path/<name>, as the manager's own probe listener does.
func healthEndpoints(byPath map[string]*healthz.Handler) map[string]http.Handler {
	out := make(map[string]http.Handler, 2*len(byPath))
	for path, h := range byPath {
		out[path] = http.StripPrefix(path, h)
		out[path+"/"] = http.StripPrefix(path, h)
	}
	return out
}

// informersSynced fails until the namespace (and kube-dns) informers synced.
func informersSynced(c cache.Cache) healthz.Checker {
	return func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		if !c.WaitForCacheSync(ctx) {
			return fmt.Errorf("informers not synced")
		}
		return nil
	}
}

// resolveNativeSidecars turns --native-sidecars into a decision; auto asks
// the API server's version once at start (native sidecars: 1.29+).
func resolveNativeSidecars(flag string, dc discovery.ServerVersionInterface) (bool, error) {
	switch flag {
	case NativeSidecarsTrue:
		return true, nil
	case NativeSidecarsFalse:
		return false, nil
	}
	info, err := dc.ServerVersion()
	if err != nil {
		return false, fmt.Errorf("discover API server version for --native-sidecars=auto: %w", err)
	}
	v, err := utilversion.ParseGeneric(info.GitVersion)
	if err != nil {
		return false, fmt.Errorf("parse API server version %q for --native-sidecars=auto: %w", info.GitVersion, err)
	}
	return v.AtLeast(nativeSidecarsSince), nil
}

// RESTConfig loads the API server connection: the --kubeconfig file, else
// $KUBECONFIG or ~/.kube/config, else the in-cluster service account.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	return cfg, nil
}

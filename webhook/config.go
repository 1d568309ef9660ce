package webhook

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/localdns/localdns/internal/contract"
	"github.com/localdns/localdns/internal/flagutil"
	"github.com/localdns/localdns/internal/version"
)

// Native sidecar selection (--native-sidecars).
const (
	NativeSidecarsAuto  = "auto"
	NativeSidecarsTrue  = "true"
	NativeSidecarsFalse = "false"
)

// Config is the webhook's validated configuration.
type Config struct {
	// Serving.
	Port            int
	CertDir         string // external certificates (cert-manager); empty: self-managed
	MetricsAddr     string // /metrics, /healthz, /readyz; "0" disables
	Kubeconfig      string
	ShutdownTimeout time.Duration

	// Identity, used by the self-managed certificates and to skip its own pods.
	Namespace         string
	ServiceName       string
	SecretName        string
	WebhookConfigName string

	// Opt-in.
	ClusterWide bool

	// What the pods get.
	// KubeDNSIPs is the fixed fallback, at most one address per family,
	// primary first; empty: discovered from KubeDNSService.
	KubeDNSIPs     []netip.Addr
	KubeDNSService types.NamespacedName // watched when KubeDNSIPs is empty
	ClusterDomain  string
	// IPFamilies selects the families pods get: auto, ipv4, ipv6 or dual.
	IPFamilies string
	LocalIP    string // the node cache's IPv4 address
	LocalIPv6  string // the node cache's IPv6 address
	// Options are the default resolver options in order: ndots, timeout,
	// attempts, then --options (a later option of the same name wins).
	Options []corev1.PodDNSConfigOption
	// Searches are extra search domains for every pod (--searches), after
	// the cluster's own: under dnsPolicy None the node's are not appended.
	Searches []string

	LogFormat string // text or json

	// Stub injection.
	StubImage string
	// StubPortBinding is how the non-root stub may bind port 53: sysctl (the
	// pod sysctl net.ipv4.ip_unprivileged_port_start=53, pod-wide) or
	// file-capability (the stub image's own cap_net_bind_service, nothing
	// pod-wide; --stub-image must then name the stub-filecap image).
	StubPortBinding   string
	StubResources     corev1.ResourceRequirements
	MuslImagePatterns []string
	NativeSidecars    string // auto, true or false
}

// How the stub binds port 53 (--stub-port-binding).
const (
	StubPortBindingSysctl         = "sysctl"
	StubPortBindingFileCapability = "file-capability"
)

// Parse parses the command line into a validated Config. getenv supplies
// POD_NAMESPACE (the downward API) as the default of --namespace. Usage goes to
// output only for -h/--help, which returns flag.ErrHelp.
func Parse(name string, args []string, getenv func(string) string, output io.Writer) (Config, error) {
	fs := flagutil.NewFlagSet(name, "Usage: "+name+" [flags]\n\n"+
		"The mutating admission webhook that points opted-in pods' DNS at the node cache (or an\n"+
		"injected localdns-stub), with the kube-dns ClusterIP as fallback. See docs/webhook.md.\n\nFlags:\n")
	var (
		cfg                               Config
		ndots, timeout, attempts          int
		options, searches, kubeDNSService string
		kubeDNSIPs, localIP, localIPv6    string
		muslPatterns                      string
		cpuRequest, memRequest, memLimit  string
	)
	defaultNamespace := getenv("POD_NAMESPACE")
	if defaultNamespace == "" {
		defaultNamespace = "localdns-system"
	}

	fs.IntVar(&cfg.Port, "port", 9443, "HTTPS port of the admission webhook (/mutate-pods)")
	fs.StringVar(&cfg.CertDir, "cert-dir", "", "directory with tls.crt and tls.key managed externally (cert-manager), reloaded on change; empty: self-managed certificates in a Secret")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", ":9254", "address of the HTTP listener for /metrics, /healthz and /readyz; 0 disables it")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig for running outside a cluster; empty: $KUBECONFIG or in-cluster")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "how long to drain in-flight admissions on SIGTERM before closing")
	fs.StringVar(&cfg.Namespace, "namespace", defaultNamespace, "the webhook's own namespace, whose pods are never mutated; defaults to $POD_NAMESPACE, else localdns-system")
	fs.StringVar(&cfg.ServiceName, "service-name", "localdns-webhook", "Service in front of the webhook (name in the serving certificate)")
	fs.StringVar(&cfg.SecretName, "secret-name", "localdns-webhook-tls", "Secret holding the self-managed CA and serving certificate")
	fs.StringVar(&cfg.WebhookConfigName, "webhook-config-name", "localdns-webhook", "MutatingWebhookConfiguration whose caBundle the self-managed mode keeps current")
	fs.BoolVar(&cfg.ClusterWide, "cluster-wide", false, "mutate pods in every namespace not labelled localdns.io/inject=disabled")
	fs.StringVar(&kubeDNSIPs, "kube-dns-ip", "", "kube-dns ClusterIP used as fallback, or one per family comma-separated, primary first (as the Service's clusterIPs); empty: read from --kube-dns-service and kept current")
	fs.StringVar(&kubeDNSService, "kube-dns-service", "kube-system/kube-dns", "namespace/name of the kube-dns Service, watched when --kube-dns-ip is empty")
	fs.StringVar(&cfg.ClusterDomain, "cluster-domain", contract.ClusterDomain, "cluster DNS domain")
	fs.StringVar(&cfg.IPFamilies, "ip-families", IPFamiliesAuto, "IP families injected pods get: auto (those of the kube-dns ClusterIPs), ipv4, ipv6 or dual (both, kube-dns's primary family first)")
	fs.StringVar(&localIP, "local-ip", DefaultLocalIP, "IPv4 address of the node cache")
	fs.StringVar(&localIPv6, "local-ipv6", DefaultLocalIPv6, "IPv6 address of the node cache")
	fs.IntVar(&ndots, "ndots", 5, "default ndots (1..15)")
	fs.IntVar(&timeout, "timeout", 1, "default resolver timeout in seconds (1..30)")
	fs.IntVar(&attempts, "attempts", 2, "default resolver attempts (1..5)")
	fs.StringVar(&options, "options", "single-request-reopen", "extra default resolver options, name[:value],...")
	fs.StringVar(&searches, "searches", "", "extra search domains for every injected pod, a.b,c.d, after the cluster's own (under dnsPolicy None kubelet no longer appends the node's)")
	fs.StringVar(&cfg.StubImage, "stub-image", "localdns/stub:"+version.Version, "image of the injected localdns-stub container")
	fs.StringVar(&muslPatterns, "musl-image-patterns", "alpine,musl", "comma-separated substrings of image references that make mode auto inject the stub")
	fs.StringVar(&cfg.StubPortBinding, "stub-port-binding", StubPortBindingSysctl, "how the non-root stub binds port 53: sysctl (pod sysctl net.ipv4.ip_unprivileged_port_start=53, which lets every container of the pod bind 53-1023) or file-capability (the stub-filecap image's own cap_net_bind_service: set --stub-image to it; needs a runtime that puts NET_BIND_SERVICE in the container's bounding set, as containerd and CRI-O do)")
	fs.StringVar(&cfg.NativeSidecars, "native-sidecars", NativeSidecarsAuto, "inject the stub as a native sidecar (init container, restartPolicy Always): auto (API server >= 1.29), true or false")
	fs.StringVar(&cpuRequest, "stub-cpu-request", "10m", "CPU request of the stub container")
	fs.StringVar(&memRequest, "stub-memory-request", "16Mi", "memory request of the stub container")
	fs.StringVar(&memLimit, "stub-memory-limit", "32Mi", "memory limit of the stub container")
	flagutil.LogFormatVar(fs, &cfg.LogFormat)
	if err := flagutil.Parse(fs, args, output); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}

	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	check(validatePort(cfg.Port))
	check(flagutil.ValidLogFormat(cfg.LogFormat))
	cfg.LocalIP, err = familyIP("--local-ip", localIP, corev1.IPv4Protocol)
	check(err)
	cfg.LocalIPv6, err = familyIP("--local-ipv6", localIPv6, corev1.IPv6Protocol)
	check(err)
	cfg.KubeDNSIPs, err = kubeDNSIPsFlag(kubeDNSIPs)
	check(err)
	check(ipFamiliesFlag(cfg.IPFamilies, cfg.KubeDNSIPs))
	svc, err := parseNamespacedName(kubeDNSService)
	check(err)
	cfg.KubeDNSService = svc
	if msgs := validation.IsDNS1123Subdomain(cfg.ClusterDomain); len(msgs) > 0 {
		check(fmt.Errorf("--cluster-domain %q: %s", cfg.ClusterDomain, strings.Join(msgs, "; ")))
	}
	for _, n := range []struct {
		flag, option string
		value        int
	}{{"--ndots", optionNdots, ndots}, {"--timeout", optionTimeout, timeout}, {"--attempts", optionAttempts, attempts}} {
		value := fmt.Sprint(n.value)
		if reason := checkOptionValue(n.option, value); reason != "" {
			check(fmt.Errorf("%s: %s", n.flag, reason))
			continue
		}
		cfg.Options = append(cfg.Options, corev1.PodDNSConfigOption{Name: n.option, Value: &value})
	}
	extra, bad := parseOptions(options)
	for _, b := range bad {
		check(fmt.Errorf("--options %q: %s", b.item, b.reason))
	}
	cfg.Options = mergeOptions(cfg.Options, extra)
	cfg.Searches, err = searchesFlag(searches, cfg.ClusterDomain)
	check(err)
	for _, v := range []struct{ flag, value string }{
		{"--namespace", cfg.Namespace}, {"--service-name", cfg.ServiceName},
		{"--secret-name", cfg.SecretName}, {"--webhook-config-name", cfg.WebhookConfigName},
	} {
		if msgs := validation.IsDNS1123Subdomain(v.value); len(msgs) > 0 {
			check(fmt.Errorf("%s %q: %s", v.flag, v.value, strings.Join(msgs, "; ")))
		}
	}
	if cfg.StubPortBinding != StubPortBindingSysctl && cfg.StubPortBinding != StubPortBindingFileCapability {
		check(fmt.Errorf("--stub-port-binding %q: want %s or %s", cfg.StubPortBinding, StubPortBindingSysctl, StubPortBindingFileCapability))
	}
	if cfg.StubImage == "" {
		check(errors.New("--stub-image must not be empty"))
	}
	cfg.MuslImagePatterns = splitList(muslPatterns)
	switch cfg.NativeSidecars {
	case NativeSidecarsAuto, NativeSidecarsTrue, NativeSidecarsFalse:
	default:
		check(fmt.Errorf("--native-sidecars %q: must be auto, true or false", cfg.NativeSidecars))
	}
	resources, err := stubResources(cpuRequest, memRequest, memLimit)
	check(err)
	cfg.StubResources = resources
	if cfg.ShutdownTimeout <= 0 {
		check(fmt.Errorf("--shutdown-timeout %s: must be positive", cfg.ShutdownTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, fmt.Errorf("invalid flags: %w", err)
	}
	return cfg, nil
}

// searchesFlag parses --searches. Every domain must be valid, and the list
// must leave room under the API server's limits for the cluster's own three
// domains of the longest namespace name, so it is never cut from a pod that
// adds nothing.
func searchesFlag(list, clusterDomain string) ([]string, error) {
	var domains []string
	var errs []error
	for _, d := range splitList(list) {
		if msgs := validSearchDomain(d); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("--searches %q: %s", d, strings.Join(msgs, "; ")))
			continue
		}
		domains = append(domains, d)
	}
	cluster := clusterSearches(strings.Repeat("n", validation.DNS1123LabelMaxLength), clusterDomain)
	all := slices.Concat(cluster, domains)
	if chars := len(strings.Join(all, " ")); len(all) > maxSearches || chars > maxSearchListChars {
		errs = append(errs, fmt.Errorf("--searches: with the cluster's own that makes %d domains and %d characters; the API server allows at most %d domains and %d characters",
			len(all), chars, maxSearches, maxSearchListChars))
	}
	return domains, errors.Join(errs...)
}

func validatePort(port int) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("--port %d: must be in 1..65535", port)
	}
	return nil
}

// familyIP parses an address flag that must be of one family; it returns
// the address in canonical form.
func familyIP(flagName, value string, family corev1.IPFamily) (string, error) {
	ip, err := parseIP(flagName, value)
	if err != nil {
		return "", err
	}
	if familyOf(ip) != family {
		return "", fmt.Errorf("%s %q: not an %s address", flagName, value, family)
	}
	return ip.String(), nil
}

// parseIP is flagutil.ParseAddr, its error naming the flag.
func parseIP(flagName, value string) (netip.Addr, error) {
	ip, err := flagutil.ParseAddr(value)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s: %w", flagName, err)
	}
	return ip, nil
}

// kubeDNSIPsFlag parses --kube-dns-ip: at most one address per family, as a
// Service's clusterIPs.
func kubeDNSIPsFlag(list string) ([]netip.Addr, error) {
	var ips []netip.Addr
	var errs []error
	for _, item := range splitList(list) {
		ip, err := parseIP("--kube-dns-ip", item)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if slices.ContainsFunc(ips, func(seen netip.Addr) bool { return familyOf(seen) == familyOf(ip) }) {
			errs = append(errs, fmt.Errorf("--kube-dns-ip %q: at most one address per IP family", list))
			continue
		}
		ips = append(ips, ip)
	}
	return ips, errors.Join(errs...)
}

// ipFamiliesFlag checks --ip-families, and that a fixed --kube-dns-ip has an
// address of every family it forces (else every pod would be left alone).
func ipFamiliesFlag(value string, kubeDNS []netip.Addr) error {
	var want corev1.IPFamily
	switch value {
	case IPFamiliesAuto, IPFamiliesDual:
		return nil
	case IPFamiliesIPv4:
		want = corev1.IPv4Protocol
	case IPFamiliesIPv6:
		want = corev1.IPv6Protocol
	default:
		return fmt.Errorf("--ip-families %q: must be auto, ipv4, ipv6 or dual", value)
	}
	if len(kubeDNS) == 0 || slices.ContainsFunc(kubeDNS, func(ip netip.Addr) bool { return familyOf(ip) == want }) {
		return nil
	}
	return fmt.Errorf("--ip-families %s: --kube-dns-ip %s has no %s address for the fallback", value, joinAddrs(kubeDNS), want)
}

func parseNamespacedName(s string) (types.NamespacedName, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || validation.IsDNS1123Label(ns) != nil || validation.IsDNS1123Label(name) != nil {
		return types.NamespacedName{}, fmt.Errorf("--kube-dns-service %q: want namespace/name", s)
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}

// stubResources builds the stub's requests and limit; the memory request may
// not exceed the limit (the API server would reject every injected pod).
func stubResources(cpuRequest, memRequest, memLimit string) (corev1.ResourceRequirements, error) {
	var errs []error
	parse := func(flagName, value string) resource.Quantity {
		q, err := resource.ParseQuantity(value)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", flagName, value, err))
		}
		return q
	}
	cpu := parse("--stub-cpu-request", cpuRequest)
	memReq := parse("--stub-memory-request", memRequest)
	memLim := parse("--stub-memory-limit", memLimit)
	if len(errs) == 0 && memReq.Cmp(memLim) > 0 {
		errs = append(errs, fmt.Errorf("--stub-memory-request %s exceeds --stub-memory-limit %s", memRequest, memLimit))
	}
	if len(errs) > 0 {
		return corev1.ResourceRequirements{}, errors.Join(errs...)
	}
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: cpu, corev1.ResourceMemory: memReq},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: memLim},
	}, nil
}

package nodecache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"

	"github.com/localdns/localdns/dnsengine/forward"
)

// The Service the node cache forwards to when --upstream is empty.
const (
	kubeDNSNamespace = "kube-system"
	kubeDNSService   = "kube-dns"
)

// backoff bounds the retries while kube-dns cannot be found.
type backoff struct {
	initial, max time.Duration
}

var discoveryBackoff = backoff{initial: 500 * time.Millisecond, max: 10 * time.Second}

// DiscoverUpstream finds kube-dns through the in-cluster API config: the
// ClusterIPs of Service kube-system/kube-dns and its DNS port for the
// transport. It retries with backoff until it succeeds or ctx ends. Outside
// a cluster it fails at once, telling the user to pass --upstream.
func DiscoverUpstream(ctx context.Context, transport forward.Transport, logger *slog.Logger) ([]netip.AddrPort, error) {
	cfg, err := rest.InClusterConfig()
	if errors.Is(err, rest.ErrNotInCluster) {
		return nil, errors.New("no --upstream given and not running in a Kubernetes cluster (KUBERNETES_SERVICE_HOST is unset): pass --upstream ip[:port]")
	}
	if err != nil {
		return nil, fmt.Errorf("in-cluster API config: %w", err)
	}
	client, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	get := func(ctx context.Context) (*corev1.Service, error) {
		return client.Services(kubeDNSNamespace).Get(ctx, kubeDNSService, metav1.GetOptions{})
	}
	return waitForKubeDNS(ctx, get, transport, discoveryBackoff, logger)
}

// waitForKubeDNS polls get until the Service yields upstreams.
func waitForKubeDNS(ctx context.Context, get func(context.Context) (*corev1.Service, error), transport forward.Transport, b backoff, logger *slog.Logger) ([]netip.AddrPort, error) {
	delay := b.initial
	for {
		svc, err := get(ctx)
		if err == nil {
			var ups []netip.AddrPort
			if ups, err = upstreamsOf(svc, transport); err == nil {
				logger.Info("discovered kube-dns", "service", kubeDNSNamespace+"/"+kubeDNSService, "upstreams", fmt.Sprint(ups))
				return ups, nil
			}
		}
		logger.Warn("kube-dns not found yet; retrying", "service", kubeDNSNamespace+"/"+kubeDNSService, "retry_in", delay, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("discover %s/%s: %w (last error: %w)", kubeDNSNamespace, kubeDNSService, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, b.max)
	}
}

// upstreamsOf returns every ClusterIP of the Service with the DNS port for
// the transport: the port of that protocol named like "dns"/"dns-tcp", else
// the first port of that protocol, else 53.
func upstreamsOf(svc *corev1.Service, transport forward.Transport) ([]netip.AddrPort, error) {
	protocol := corev1.ProtocolTCP
	if transport == TransportUDP {
		protocol = corev1.ProtocolUDP
	}
	port, first := uint16(dnsPort), true
	for _, p := range svc.Spec.Ports {
		if p.Protocol != protocol || p.Port <= 0 || p.Port > 65535 {
			continue
		}
		if strings.HasPrefix(p.Name, "dns") {
			port = uint16(p.Port)
			break
		}
		if first {
			port, first = uint16(p.Port), false
		}
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var ups []netip.AddrPort
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			continue // "None" (headless) or garbage
		}
		ups = append(ups, netip.AddrPortFrom(ip, port))
	}
	if len(ups) == 0 {
		return nil, fmt.Errorf("service %s/%s has no cluster IP", svc.Namespace, svc.Name)
	}
	return ups, nil
}

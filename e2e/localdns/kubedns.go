package localdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/localdns/localdns/e2e/cluster"
)

// kube-dns as the harness runs it: the CoreDNS Deployment behind the
// kube-dns Service.
const (
	kubeDNSNamespace  = "kube-system"
	kubeDNSDeployment = "deployment/coredns"
	kubeDNSSelector   = "k8s-app=kube-dns"
	// kubeDNSMetricsPort is CoreDNS's prometheus :9153.
	kubeDNSMetricsPort = "9153"
)

// KubeDNSPod is one CoreDNS pod of kube-dns.
type KubeDNSPod struct {
	Name, IP string
	Ready    bool
	// Terminating pods still answer the connections they have during
	// CoreDNS's lameduck, but get no new ones.
	Terminating bool
}

// KubeDNSPods lists kube-dns's pods, terminating ones included.
func KubeDNSPods(ctx context.Context, c *cluster.Cluster) ([]KubeDNSPod, error) {
	out, err := listPods(ctx, c, kubeDNSNamespace, kubeDNSSelector)
	if err != nil {
		return nil, err
	}
	return parseKubeDNSPods(out)
}

func parseKubeDNSPods(list []byte) ([]KubeDNSPod, error) {
	pods, err := decodePods(list, "kube-dns")
	if err != nil {
		return nil, err
	}
	out := make([]KubeDNSPod, 0, len(pods.Items))
	for _, it := range pods.Items {
		p := KubeDNSPod{Name: it.Metadata.Name, IP: it.Status.PodIP, Terminating: it.Metadata.DeletionTimestamp != nil}
		for _, cond := range it.Status.Conditions {
			if cond.Type == "Ready" {
				p.Ready = cond.Status == "True"
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// ScaleKubeDNS scales CoreDNS to n replicas and waits until it has settled.
func ScaleKubeDNS(ctx context.Context, c *cluster.Cluster, n int) error {
	if _, err := c.Kubectl(ctx, nil, "-n", kubeDNSNamespace, "scale", kubeDNSDeployment, fmt.Sprint("--replicas=", n)); err != nil {
		return err
	}
	return waitKubeDNSSettled(ctx, c, n)
}

// RestartKubeDNS rolls CoreDNS (`kubectl rollout restart`) and waits until
// it has settled on n replicas.
func RestartKubeDNS(ctx context.Context, c *cluster.Cluster, n int) error {
	if _, err := c.Kubectl(ctx, nil, "-n", kubeDNSNamespace, "rollout", "restart", kubeDNSDeployment); err != nil {
		return err
	}
	return waitKubeDNSSettled(ctx, c, n)
}

// waitKubeDNSSettled waits for the rollout (rollout status waits until the
// Deployment has seen its latest change), then until exactly n pods are
// left, all ready, none terminating: the replaced ones have finished their
// lameduck and exited.
func waitKubeDNSSettled(ctx context.Context, c *cluster.Cluster, n int) error {
	if _, err := c.Kubectl(ctx, nil, "-n", kubeDNSNamespace, "rollout", "status", kubeDNSDeployment, "--timeout=2m"); err != nil {
		return err
	}
	return poll(ctx, 2*time.Minute, func() error {
		pods, err := KubeDNSPods(ctx, c)
		if err != nil {
			return err
		}
		settled := len(pods) == n
		for _, p := range pods {
			settled = settled && p.Ready && !p.Terminating
		}
		if !settled {
			return fmt.Errorf("kube-dns pods %+v, want %d ready", pods, n)
		}
		return nil
	})
}

// ForceDeleteKubeDNSPod deletes a CoreDNS pod the way `kubectl delete
// --force --grace-period=0` does (the API object goes at once; the kubelet
// kills the container after a short grace) and waits until the pod's
// CoreDNS no longer answers, then until kube-dns has settled on n replicas.
func ForceDeleteKubeDNSPod(ctx context.Context, c *cluster.Cluster, pod KubeDNSPod, n int) error {
	if _, err := c.Kubectl(ctx, nil, "-n", kubeDNSNamespace, "delete", "pod", pod.Name, "--force", "--grace-period=0"); err != nil {
		return err
	}
	url := "http://" + net.JoinHostPort(pod.IP, kubeDNSMetricsPort) + "/metrics"
	if err := poll(ctx, time.Minute, func() error {
		if err := c.NodeCommand(ctx, "curl", "-sf", "--max-time", "1", "-o", "/dev/null", url).Run(); err == nil {
			return errors.New("its CoreDNS still answers " + url)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("force-deleted pod %s: %w", pod.Name, err)
	}
	return waitKubeDNSSettled(ctx, c, n)
}

// KubeDNSTCPRequests returns, per pod name, the queries the pod's CoreDNS
// has received over TCP (coredns_dns_requests_total{proto="tcp"}, every
// server block, zone and type), scraped at its :9153 from the node: the
// node cache's misses, since pods send their own queries over UDP. Pods
// without an address yet are left out.
func KubeDNSTCPRequests(ctx context.Context, c *cluster.Cluster, pods []KubeDNSPod) (map[string]float64, error) {
	counts := map[string]float64{}
	for _, p := range pods {
		if p.IP == "" {
			continue
		}
		lines, err := scrapeMetrics(ctx, c, "http://"+net.JoinHostPort(p.IP, kubeDNSMetricsPort)+"/metrics", "coredns_dns_requests_total{")
		if err != nil {
			return nil, fmt.Errorf("kube-dns pod %s: %w", p.Name, err)
		}
		var tcp []string
		for _, l := range lines {
			if strings.Contains(l, `proto="tcp"`) {
				tcp = append(tcp, l)
			}
		}
		if counts[p.Name], err = sumSamples(tcp); err != nil {
			return nil, fmt.Errorf("kube-dns pod %s: %w", p.Name, err)
		}
	}
	return counts, nil
}

// RequestShares is each pod's part of the requests counted between two
// samples of KubeDNSTCPRequests, and their total. A pod missing from
// before counts from zero (it started since); one missing from after is
// left out.
func RequestShares(before, after map[string]float64) (shares map[string]float64, total float64) {
	deltas := map[string]float64{}
	for pod, n := range after {
		deltas[pod] = n - before[pod]
		total += deltas[pod]
	}
	shares = map[string]float64{}
	for pod, d := range deltas {
		if total > 0 {
			shares[pod] = d / total
		} else {
			shares[pod] = 0
		}
	}
	return shares, total
}

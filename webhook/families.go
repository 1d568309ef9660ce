package webhook

import (
	"fmt"
	"github.com/localdns/localdns/internal/contract"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// IP family selection (--ip-families).
const (
	// IPFamiliesAuto follows the kube-dns Service: the families of its
	// ClusterIPs (spec.clusterIPs, in the order of spec.ipFamilies).
	IPFamiliesAuto = "auto"
	IPFamiliesIPv4 = "ipv4"
	IPFamiliesIPv6 = "ipv6"
	// IPFamiliesDual gives pods both families, the kube-dns Service's
	// primary family first: for dual-stack clusters whose kube-dns Service
	// is single-stack (kubeadm creates it so).
	IPFamiliesDual = "dual"
)

// The node cache's default addresses. DefaultLocalIPv6 is in
// fd6c:6f63:616c::/48, a unique local prefix (RFC 4193) whose 40-bit global
// ID is the ASCII of "local" (6c 6f 63 61 6c). The node cache holds it as a
// /128 on each node, so it can only collide with a network that picked the
// same global ID.
const (
	DefaultLocalIP   = contract.NodeCacheIPv4
	DefaultLocalIPv6 = contract.NodeCacheIPv6
)

// Loopback addresses the stub serves on.
const (
	loopbackIPv4 = "127.0.0.1"
	loopbackIPv6 = "::1"
)

// targets are the addresses a pod's DNS goes to.
type targets struct {
	families  []corev1.IPFamily // the pod's families, primary first
	nodeCache []string          // the node cache's address of each family, in that order
	// fallback is the kube-dns ClusterIP of the first family that has one,
	// invalid when none does.
	fallback netip.Addr
}

// dnsTargets picks the pod's families, from --ip-families or (auto) from the
// kube-dns ClusterIPs, and the addresses of each. With nothing known, auto
// means IPv4, as before localdns knew IPv6.
func dnsTargets(cfg Config, kubeDNS []netip.Addr) targets {
	var kubeDNSFamilies []corev1.IPFamily
	for _, ip := range kubeDNS {
		kubeDNSFamilies = append(kubeDNSFamilies, familyOf(ip))
	}
	var t targets
	switch cfg.IPFamilies {
	case IPFamiliesIPv4:
		t.families = []corev1.IPFamily{corev1.IPv4Protocol}
	case IPFamiliesIPv6:
		t.families = []corev1.IPFamily{corev1.IPv6Protocol}
	case IPFamiliesDual:
		t.families = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
		if len(kubeDNSFamilies) > 0 && kubeDNSFamilies[0] == corev1.IPv6Protocol {
			t.families = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
		}
	default:
		t.families = kubeDNSFamilies
		if len(t.families) == 0 {
			t.families = []corev1.IPFamily{corev1.IPv4Protocol}
		}
	}
	for _, f := range t.families {
		t.nodeCache = append(t.nodeCache, localIPOf(cfg, f))
		for _, ip := range kubeDNS {
			if !t.fallback.IsValid() && familyOf(ip) == f {
				t.fallback = ip
			}
		}
	}
	return t
}

// primary is the pod's primary family: the stub's resolv.conf entry, node
// cache and fallback are of this family.
func (t targets) primary() corev1.IPFamily { return t.families[0] }

// missingFallback explains why a pod that wants the fallback has none.
func (t targets) missingFallback(kubeDNS []netip.Addr) string {
	if len(kubeDNS) == 0 {
		return "localdns: the kube-dns ClusterIP for the fallback is not known; pod left unchanged"
	}
	return fmt.Sprintf("localdns: kube-dns has no %s ClusterIP for the fallback (it has %s); pod left unchanged",
		strings.Join(familyNames(t.families), " or "), joinAddrs(kubeDNS))
}

func familyOf(ip netip.Addr) corev1.IPFamily {
	if ip.Is4() {
		return corev1.IPv4Protocol
	}
	return corev1.IPv6Protocol
}

func localIPOf(cfg Config, f corev1.IPFamily) string {
	if f == corev1.IPv6Protocol {
		return cfg.LocalIPv6
	}
	return cfg.LocalIP
}

func loopbackOf(f corev1.IPFamily) string {
	if f == corev1.IPv6Protocol {
		return loopbackIPv6
	}
	return loopbackIPv4
}

func familyNames(families []corev1.IPFamily) []string {
	out := make([]string, len(families))
	for i, f := range families {
		out[i] = string(f)
	}
	return out
}

func joinAddrs(addrs []netip.Addr) string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return strings.Join(out, ", ")
}

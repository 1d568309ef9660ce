package localdns

import (
	"strings"

	"github.com/localdns/localdns/e2e/cluster"
	"github.com/localdns/localdns/internal/contract"
)

// LocalIPv6 is the node cache's IPv6 address on every node (the webhook's
// --local-ipv6 default, the ipv6 and dual-stack overlays' --listen).
const LocalIPv6 = contract.NodeCacheIPv6

// NodeCacheIP is the node cache's address of family f.
func NodeCacheIP(f cluster.Family) string {
	if f.IsIPv6() {
		return LocalIPv6
	}
	return LocalIP
}

// NodeCacheIPs are the node cache's addresses of families, in their order.
func NodeCacheIPs(families []cluster.Family) []string {
	ips := make([]string, len(families))
	for i, f := range families {
		ips[i] = NodeCacheIP(f)
	}
	return ips
}

// loopbackOf is the stub's address in a pod whose primary family is f.
func loopbackOf(f cluster.Family) string {
	if f.IsIPv6() {
		return "::1"
	}
	return "127.0.0.1"
}

// OverlayOf is the kustomization for a cluster of the given IP families
// (cluster.IPv4, IPv6 or DualStack), relative to the repository: the one
// docs/deploy.md names for that kind of cluster.
func OverlayOf(ipFamilies string) string {
	switch ipFamilies {
	case cluster.IPv6:
		return "manifests/overlays/ipv6"
	case cluster.DualStack:
		return "manifests/overlays/dual-stack"
	}
	return Overlay
}

// isRuleOf reports whether a NodeState rule was listed by the iptables of
// family f (iptables-*-save or ip6tables-*-save).
func isRuleOf(f cluster.Family) func(rule string) bool {
	tool := "iptables-"
	if f.IsIPv6() {
		tool = "ip6tables-"
	}
	return func(rule string) bool { return strings.HasPrefix(rule, tool) }
}

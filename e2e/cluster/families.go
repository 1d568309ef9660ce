package cluster

import (
	"fmt"
	"net/netip"
	"strings"
)

// IP families a cluster can serve (Config.IPFamilies).
const (
	// IPv4 is a single-stack IPv4 cluster (the default).
	IPv4 = "ipv4"
	// IPv6 is a single-stack IPv6 cluster: pods, Services, the node's
	// InternalIP and the fake upstream have IPv6 addresses only.
	IPv6 = "ipv6"
	// DualStack is a dual-stack cluster, IPv4 primary (as kubeadm and most
	// dual-stack clusters have it): pods get an address of each family, the
	// kube-dns Service a ClusterIP of each (RequireDualStack).
	DualStack = "dual"
)

// Family holds one IP family's fixed addresses in the node namespace. They
// exist only inside it (IPv4 in 10.0.0.0/8, IPv6 in the unique-local
// fd00::/8), so they cannot collide with the machine's own networks.
type Family struct {
	// Name is the family as Kubernetes spells it (spec.ipFamilies).
	Name string
	// NodeIP is the node's InternalIP, on the node bridge.
	NodeIP netip.Addr
	// UpstreamIP is where the fake upstream resolver listens; the kubelet's
	// resolv.conf and CoreDNS's forward plugin name only such addresses.
	UpstreamIP netip.Addr
	// NodePrefix is the node bridge's subnet.
	NodePrefix netip.Prefix
	// PodCIDR is the CNI bridge's subnet, and the controller-manager's
	// cluster CIDR: its one node gets all of it.
	PodCIDR netip.Prefix
	// ServiceCIDR is the Service ClusterIP range, routed on the node bridge.
	ServiceCIDR netip.Prefix
	// APIServiceIP is the ClusterIP of default/kubernetes (primary family only).
	APIServiceIP netip.Addr
	// KubeDNSIP is the ClusterIP of kube-system/kube-dns.
	KubeDNSIP netip.Addr
	// largeAnswerBase's successors 1..LargeAnswerRecords are
	// LargeAnswerName's records of this family (inside the node, never
	// routed anywhere).
	largeAnswerBase netip.Addr
}

// IPv4Family and IPv6Family are the node's addresses of each family.
var (
	IPv4Family = Family{
		Name:            "IPv4",
		NodeIP:          netip.MustParseAddr("10.100.0.2"),
		UpstreamIP:      netip.MustParseAddr("10.100.0.53"),
		NodePrefix:      netip.MustParsePrefix("10.100.0.0/24"),
		PodCIDR:         netip.MustParsePrefix("10.244.0.0/24"),
		ServiceCIDR:     netip.MustParsePrefix("10.96.0.0/16"),
		APIServiceIP:    netip.MustParseAddr("10.96.0.1"),
		KubeDNSIP:       netip.MustParseAddr("10.96.0.10"),
		largeAnswerBase: netip.MustParseAddr("10.100.1.0"),
	}
	// IPv6Family mirrors IPv4Family's layout; its Service range is a /112
	// (the API server takes at most 20 bits of host for IPv6 ranges on
	// older versions; 16 like the IPv4 /16).
	IPv6Family = Family{
		Name:            "IPv6",
		NodeIP:          netip.MustParseAddr("fd00:10:100::2"),
		UpstreamIP:      netip.MustParseAddr("fd00:10:100::53"),
		NodePrefix:      netip.MustParsePrefix("fd00:10:100::/64"),
		PodCIDR:         netip.MustParsePrefix("fd00:10:244::/64"),
		ServiceCIDR:     netip.MustParsePrefix("fd00:10:96::/112"),
		APIServiceIP:    netip.MustParseAddr("fd00:10:96::1"),
		KubeDNSIP:       netip.MustParseAddr("fd00:10:96::a"),
		largeAnswerBase: netip.MustParseAddr("fd00:10:101::"),
	}
)

// familiesOf returns the families of an IPFamilies value, primary first.
func familiesOf(ipFamilies string) ([]Family, error) {
	switch ipFamilies {
	case IPv4:
		return []Family{IPv4Family}, nil
	case IPv6:
		return []Family{IPv6Family}, nil
	case DualStack:
		return []Family{IPv4Family, IPv6Family}, nil
	}
	return nil, fmt.Errorf("IP families %q: want %s, %s or %s", ipFamilies, IPv4, IPv6, DualStack)
}

// IsIPv6 reports whether f is the IPv6 family.
func (f Family) IsIPv6() bool { return f.NodeIP.Is6() }

// defaultRoute is f's default route, as CNI routes name it.
func (f Family) defaultRoute() string {
	if f.IsIPv6() {
		return "::/0"
	}
	return "0.0.0.0/0"
}

// iptables is f's iptables command (the node's default backend; both
// proxy modes leave the raw table to others).
func (f Family) iptables() string {
	if f.IsIPv6() {
		return "ip6tables"
	}
	return "iptables"
}

// largeAnswerIPs are the addresses of LargeAnswerName of f.
func (f Family) largeAnswerIPs() []string {
	ips := make([]string, LargeAnswerRecords)
	a := f.largeAnswerBase
	for i := range ips {
		a = a.Next()
		ips[i] = a.String()
	}
	return ips
}

// Families are the cluster's IP families, primary first.
func (c *Cluster) Families() []Family { return c.families }

// Primary is the cluster's primary IP family: the API server advertises
// its address, and the kubernetes Service and the kubelet's clusterDNS
// have this family only.
func (c *Cluster) Primary() Family { return c.families[0] }

// IPFamilies is the cluster's Config.IPFamilies (IPv4, IPv6 or DualStack).
func (c *Cluster) IPFamilies() string { return c.cfg.IPFamilies }

// KubeDNSIPs are the kube-dns Service's ClusterIPs, primary first.
func (c *Cluster) KubeDNSIPs() []netip.Addr {
	return collect(c.families, func(f Family) netip.Addr { return f.KubeDNSIP })
}

func collect[T any](families []Family, field func(Family) T) []T {
	out := make([]T, len(families))
	for i, f := range families {
		out[i] = field(f)
	}
	return out
}

// joinAddrs is "a, b" for progress lines.
func joinAddrs(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

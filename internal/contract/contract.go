// Package contract holds the values the localdns binaries must agree on: the
// node cache's addresses, which the webhook writes into pods' resolv.conf and
// the stub is pointed at, and the cluster domain they all default to. One
// home each, so that a change reaches every part. It imports nothing.
package contract

const (
	// NodeCacheIPv4 is the node cache's address on every node: link-local,
	// so it never leaves the node, and one no cloud or CNI uses.
	NodeCacheIPv4 = "169.254.20.10"
	// NodeCacheIPv6 is its address in IPv6 and dual-stack clusters, a /128 in
	// a /48 of the unique-local range fd00::/8 whose 40-bit global ID spells
	// "loc" "al" in ASCII (6c 6f 63 61 6c): it can only collide with a network
	// that chose the same global ID, which RFC 4193 has sites draw at random.
	NodeCacheIPv6 = "fd6c:6f63:616c::10"
	// ClusterDomain is kubelet's default --cluster-domain.
	ClusterDomain = "cluster.local"
	// DNSPort is the port of a DNS address given without one.
	DNSPort = 53
)

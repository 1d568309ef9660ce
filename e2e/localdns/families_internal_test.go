package localdns

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/localdns/localdns/e2e/cluster"
)

// The families of the three kinds of cluster, primary first.
var (
	ipv4 = []cluster.Family{cluster.IPv4Family}
	ipv6 = []cluster.Family{cluster.IPv6Family}
	dual = []cluster.Family{cluster.IPv4Family, cluster.IPv6Family}
)

func TestNodeStateHasSetupPerFamily(t *testing.T) {
	const (
		addr4 = "1: lo    inet 169.254.20.10/32 scope global lo\\       valid_lft forever preferred_lft forever"
		addr6 = "1: lo    inet6 fd6c:6f63:616c::10/128 scope global \\       valid_lft forever preferred_lft forever"
		rule4 = "iptables-nft-save: -A PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment \"localdns: ...\" -j NOTRACK"
		rule6 = "ip6tables-nft-save: -A PREROUTING -d fd6c:6f63:616c::10/128 -p udp -m udp --dport 53 -m comment --comment \"localdns: ...\" -j NOTRACK"
	)
	tests := []struct {
		name  string
		state NodeState
		want  bool
	}{
		{"IPv4", NodeState{Addresses: addr4, Rules: []string{rule4}, families: ipv4}, true},
		{"IPv4 without rules", NodeState{Addresses: addr4, families: ipv4}, false},
		{"IPv6", NodeState{Addresses: addr6, Rules: []string{rule6}, families: ipv6}, true},
		{"IPv6 with IPv4 rules only", NodeState{Addresses: addr6, Rules: []string{rule4}, families: ipv6}, false},
		{"IPv6 cluster, IPv4 address", NodeState{Addresses: addr4, Rules: []string{rule6}, families: ipv6}, false},
		{"dual-stack", NodeState{Addresses: addr4 + "\n" + addr6, Rules: []string{rule4, rule6}, families: dual}, true},
		{"dual-stack, IPv6 address missing", NodeState{Addresses: addr4, Rules: []string{rule4, rule6}, families: dual}, false},
		{"no families known", NodeState{Addresses: addr4, Rules: []string{rule4}}, false},
	}
	for _, tt := range tests {
		if got := tt.state.HasSetup(); got != tt.want {
			t.Errorf("%s: HasSetup() = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestOverlayOf(t *testing.T) {
	for families, want := range map[string]string{
		cluster.IPv4: "manifests/overlays/default", cluster.IPv6: "manifests/overlays/ipv6", cluster.DualStack: "manifests/overlays/dual-stack",
	} {
		got := OverlayOf(families)
		if got != want {
			t.Errorf("OverlayOf(%s) = %s, want %s", families, got, want)
		}
		if _, err := os.Stat(filepath.Join("..", "..", got, "kustomization.yaml")); err != nil {
			t.Errorf("OverlayOf(%s): %v", families, err)
		}
	}
}

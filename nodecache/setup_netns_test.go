package nodecache

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/localdns/localdns/internal/systest"
)

// TestSetupInNetns drives Setup against the real kernel and iptables in a
// fresh namespace, for each backend: install, adopt without changes, repair
// after a flush and a deleted address, remove (leaving foreign rules), and
// remove again.
func TestSetupInNetns(t *testing.T) {
	systest.RequireRoot(t)
	listen := []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53"), netip.MustParseAddrPort("[fd00::a]:53")}
	for _, mode := range []IptablesMode{IptablesNFT, IptablesLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			ns := systest.NewNetns(t, "setup")
			iptables := map[string]string{family4: "iptables-" + string(mode), family6: "ip6tables-" + string(mode)}
			// A rule that is not ours must survive cleanup.
			systest.NetnsRun(t, ns, iptables[family4], "-t", "filter", "-A", "INPUT", "-p", "udp", "--dport", "5353",
				"-m", "comment", "--comment", "someone else", "-j", "ACCEPT")

			reg := prometheus.NewRegistry()
			var setup *Setup
			var err error
			cfg := SetupConfig{Interface: true, Rules: true, InterfaceName: "ldtest0", IptablesMode: mode}
			systest.InNetns(t, ns, func() {
				setup, err = NewSetup(cfg, listen, reg, "localdns_test", discard())
				if err == nil {
					err = applyAll(context.Background(), setup)
				}
			})
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			assertSetup(t, ns, iptables, true)

			// A second pass adopts everything and changes nothing.
			systest.InNetns(t, ns, func() { setup.Reconcile(context.Background()) })
			assertCounter(t, setup.repairs, "rules", 0)
			assertCounter(t, setup.repairs, "interface", 0)
			assertSetup(t, ns, iptables, true)

			// Someone flushes the raw table and deletes an address.
			systest.NetnsRun(t, ns, iptables[family4], "-t", "raw", "-F")
			dev := holder(t, ns, "169.254.20.10/32")
			systest.NetnsRun(t, ns, "ip", "addr", "del", "169.254.20.10/32", "dev", dev)
			systest.InNetns(t, ns, func() { setup.Reconcile(context.Background()) })
			assertCounter(t, setup.repairs, "rules", 8) // the IPv4 raw rules
			assertCounter(t, setup.repairs, "interface", 1)
			assertCounter(t, setup.errors, "rules", 0)
			assertSetup(t, ns, iptables, true)

			for range 2 { // the second removal finds nothing and is fine
				systest.InNetns(t, ns, func() { err = setup.Remove(context.Background()) })
				if err != nil {
					t.Fatalf("Remove: %v", err)
				}
				assertSetup(t, ns, iptables, false)
			}
			if filter := systest.NetnsRun(t, ns, iptables[family4], "-t", "filter", "-S"); !strings.Contains(filter, `"someone else"`) {
				t.Errorf("cleanup removed a foreign rule:\n%s", filter)
			}
		})
	}
}

// holder returns the interface holding the address, "" when none does.
func holder(t *testing.T, ns, prefix string) string {
	t.Helper()
	for line := range strings.Lines(systest.NetnsRun(t, ns, "ip", "-o", "addr", "show")) {
		f := strings.Fields(line)
		if len(f) >= 4 && f[3] == prefix {
			return f[1]
		}
	}
	return ""
}

// assertSetup checks that every address and rule is there exactly once, or
// that none is.
func assertSetup(t *testing.T, ns string, iptables map[string]string, want bool) {
	t.Helper()
	for _, prefix := range []string{"169.254.20.10/32", "fd00::a/128"} {
		if got := holder(t, ns, prefix) != ""; got != want {
			t.Errorf("address %s present=%v, want %v:\n%s", prefix, got, want, systest.NetnsRun(t, ns, "ip", "-o", "addr"))
		}
	}
	for _, family := range []string{family4, family6} {
		for _, table := range []string{"raw", "filter"} {
			listed := systest.NetnsRun(t, ns, iptables[family], "-t", table, "-S")
			n := strings.Count(listed, `--comment "localdns:`)
			wantN := 0
			if want {
				wantN = 8 // 2 chains x 2 protocols x 2 directions
			}
			if n != wantN {
				t.Errorf("%s -t %s: %d localdns rules, want %d:\n%s", iptables[family], table, n, wantN, listed)
			}
		}
	}
	if link := systest.NetnsRun(t, ns, "ip", "-o", "link", "show"); want && !strings.Contains(link, "ldtest0") && holder(t, ns, "169.254.20.10/32") != "lo" {
		t.Errorf("neither the dummy interface nor the lo fallback holds the IPs:\n%s", link)
	}
	if !want && strings.Contains(systest.NetnsRun(t, ns, "ip", "-o", "link", "show"), "ldtest0") {
		t.Errorf("interface ldtest0 still present after removal")
	}
}

func assertCounter(t *testing.T, vec *prometheus.CounterVec, part string, want float64) {
	t.Helper()
	var m dto.Metric
	if err := vec.WithLabelValues(part).Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got != want {
		t.Errorf("counter %s = %v, want %v", part, got, want)
	}
}

package nodecache

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// listedRules prints rules the way `iptables -S` does, so the fake iptables
// can show them as present.
func listedRules(rules []rule) string {
	var b strings.Builder
	for _, rl := range rules {
		b.WriteString("-A " + rl.chain)
		for _, a := range rl.args {
			if strings.Contains(a, " ") {
				a = `"` + a + `"`
			}
			b.WriteString(" " + a)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// TestReconcileCounts checks what Prepare, Publish and Reconcile count: the first
// installation is not a repair, a pass over a healthy node changes nothing,
// rules that disappeared are repairs, a failing pass is an error.
func TestReconcileCounts(t *testing.T) {
	listen := []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53")}
	f := &fakeIptables{outputs: map[string]string{}}
	reg := prometheus.NewRegistry()
	s, err := newSetup(SetupConfig{Rules: true, IptablesMode: IptablesNFT}, listen, f.run, reg, "localdns_test", discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := applyAll(ctx, s); err != nil {
		t.Fatal(err)
	}
	assertCounter(t, s.repairs, "rules", 0)
	if n := len(f.with("-I")); n != 16 {
		t.Fatalf("Apply inserted %d rules, want 16", n)
	}

	// Healthy: both tables list every rule.
	byTable := map[string][]rule{}
	for _, rl := range rulesFor(listen) {
		byTable[rl.table] = append(byTable[rl.table], rl)
	}
	f.outputs["iptables-nft -w 5 -t raw -S"] = listedRules(byTable["raw"])
	f.outputs["iptables-nft -w 5 -t filter -S"] = listedRules(byTable["filter"])
	f.calls = nil
	s.Reconcile(ctx)
	assertCounter(t, s.repairs, "rules", 0)
	if n := len(f.calls); n != 2 {
		t.Errorf("a healthy pass ran %d commands, want 2 listings:\n%s", n, strings.Join(f.calls, "\n"))
	}

	// The raw table was flushed.
	f.outputs["iptables-nft -w 5 -t raw -S"] = "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n"
	s.Reconcile(ctx)
	assertCounter(t, s.repairs, "rules", 8)
	assertCounter(t, s.errors, "rules", 0)

	// iptables fails.
	f.missing = map[string]bool{"iptables-nft": true}
	s.Reconcile(ctx)
	assertCounter(t, s.errors, "rules", 1)
	assertCounter(t, s.repairs, "rules", 8)

	// Both series exist for scraping, and Apply's metrics are registered.
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range families {
		names = append(names, mf.GetName())
	}
	if got := strings.Join(names, " "); got != "localdns_test_setup_errors_total localdns_test_setup_repairs_total" {
		t.Errorf("registered metrics: %s", got)
	}
}

// TestRunReconcilesUntilCancelled checks the loop: it reconciles on every
// tick and returns when its context ends.
func TestRunReconcilesUntilCancelled(t *testing.T) {
	var passes atomic.Int32
	enough := make(chan struct{})
	s := &Setup{
		logger:  discard(),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r"}, []string{"part"}),
		errors:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "e"}, []string{"part"}),
		parts: []setupPart{{name: "fake", ensure: func(context.Context) ([]string, error) {
			if passes.Add(1) == 3 {
				close(enough)
			}
			return nil, errors.New("still broken")
		}}},
	}
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan struct{})
	go func() {
		s.Run(ctx, time.Millisecond)
		close(returned)
	}()
	<-enough
	cancel()
	<-returned
	assertCounter(t, s.errors, "fake", float64(passes.Load()))
}

// applyAll runs both phases of the setup, as serve does around binding.
func applyAll(ctx context.Context, s *Setup) error {
	return errors.Join(s.Prepare(ctx), s.Publish(ctx))
}

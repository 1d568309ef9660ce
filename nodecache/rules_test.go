package nodecache

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

func TestRulesFor(t *testing.T) {
	rules := rulesFor([]netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53"), netip.MustParseAddrPort("[fd00::a]:5353")})
	// 4 chains x 2 protocols x 2 directions per endpoint.
	if len(rules) != 2*16 {
		t.Fatalf("got %d rules, want 32", len(rules))
	}
	seen := map[string]bool{}
	for _, rl := range rules {
		key := rl.family + " " + rl.table + " " + rl.chain + " " + rl.comment
		if seen[key] {
			t.Errorf("duplicate rule %s", key)
		}
		seen[key] = true
		if !strings.HasPrefix(rl.comment, commentPrefix) {
			t.Errorf("comment %q lacks the %q prefix", rl.comment, commentPrefix)
		}
	}
	tests := []struct {
		family, table, chain string
		args                 string
	}{
		{family4, "raw", "PREROUTING", `-d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment localdns: notrack udp to 169.254.20.10:53 -j NOTRACK`},
		{family4, "raw", "OUTPUT", `-s 169.254.20.10/32 -p tcp -m tcp --sport 53 -m comment --comment localdns: notrack tcp from 169.254.20.10:53 -j NOTRACK`},
		{family4, "raw", "OUTPUT", `-d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment localdns: notrack udp to 169.254.20.10:53 -j NOTRACK`},
		{family4, "filter", "INPUT", `-d 169.254.20.10/32 -p tcp -m tcp --dport 53 -m comment --comment localdns: accept tcp to 169.254.20.10:53 -j ACCEPT`},
		{family4, "filter", "OUTPUT", `-s 169.254.20.10/32 -p udp -m udp --sport 53 -m comment --comment localdns: accept udp from 169.254.20.10:53 -j ACCEPT`},
		{family6, "raw", "PREROUTING", `-d fd00::a/128 -p udp -m udp --dport 5353 -m comment --comment localdns: notrack udp to [fd00::a]:5353 -j NOTRACK`},
		{family6, "filter", "INPUT", `-s fd00::a/128 -p tcp -m tcp --sport 5353 -m comment --comment localdns: accept tcp from [fd00::a]:5353 -j ACCEPT`},
	}
	for _, tc := range tests {
		found := false
		for _, rl := range rules {
			if rl.family == tc.family && rl.table == tc.table && rl.chain == tc.chain && strings.Join(rl.args, " ") == tc.args {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s %s %s rule %q", tc.family, tc.table, tc.chain, tc.args)
		}
	}
}

func TestSplitWords(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{`-A INPUT -j ACCEPT`, []string{"-A", "INPUT", "-j", "ACCEPT"}, false},
		{`-A X -m comment --comment "localdns: a b" -j CT --notrack`, []string{"-A", "X", "-m", "comment", "--comment", "localdns: a b", "-j", "CT", "--notrack"}, false},
		{`--comment "say \"hi\" \\ there"`, []string{"--comment", `say "hi" \ there`}, false},
		{`--comment ""`, []string{"--comment", ""}, false},
		{"  spaced\tout  ", []string{"spaced", "out"}, false},
		{`--comment "open`, nil, true},
	}
	for _, tc := range tests {
		got, err := splitWords(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("splitWords(%q) error %v, wantErr %v", tc.in, err, tc.wantErr)
			continue
		}
		if !tc.wantErr && !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitWords(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestChooseBackend(t *testing.T) {
	rules := func(n int) string {
		var b strings.Builder
		b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n")
		for i := range n {
			fmt.Fprintf(&b, "-A INPUT -s 10.0.0.%d/32 -j ACCEPT\n", i)
		}
		return b.String() + "COMMIT\n"
	}
	hint := "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
	canary := "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"
	tests := []struct {
		name        string
		nft, legacy string
		want        backend
	}{
		{"fresh node", "", "", backendNFT},
		{"kubelet hint in nft wins over more legacy rules", hint, rules(50), backendNFT},
		{"kubelet canary in legacy", rules(3), canary, backendLegacy},
		{"more legacy rules", rules(2), rules(12), backendLegacy},
		{"more nft rules", rules(12), rules(2), backendNFT},
		{"tie goes to nft", rules(5), rules(5), backendNFT},
		{"a chain named like the hint but longer does not count", "*mangle\n:KUBE-IPTABLES-HINTS - [0:0]\n", rules(1), backendLegacy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := chooseBackend(tc.nft, tc.legacy)
			if got != tc.want {
				t.Errorf("chooseBackend = %s (%s), want %s", got, reason, tc.want)
			}
		})
	}
}

// fakeIptables answers like iptables for a fixed listing and records the
// commands it was given.
type fakeIptables struct {
	outputs map[string]string // command line prefix -> stdout
	missing map[string]bool   // binaries that do not exist
	exists  map[string]bool   // "CHAIN comment" that -C reports present
	calls   []string
}

func (f *fakeIptables) run(_ context.Context, name string, args ...string) ([]byte, error) {
	line := name + " " + strings.Join(args, " ")
	f.calls = append(f.calls, line)
	if f.missing[name] {
		return nil, fmt.Errorf("%s: %w", name, &exec.Error{Name: name, Err: exec.ErrNotFound})
	}
	if i := indexOf(args, "-C"); i >= 0 {
		if f.exists[args[i+1]+" "+args[len(args)-3]] {
			return nil, nil
		}
		// Exit status 1, as iptables -C reports a missing rule.
		return nil, exec.Command("false").Run()
	}
	for prefix, out := range f.outputs {
		if strings.HasPrefix(line, prefix) {
			return []byte(out), nil
		}
	}
	return nil, nil
}

func indexOf(ss []string, s string) int {
	for i, v := range ss {
		if v == s {
			return i
		}
	}
	return -1
}

func (f *fakeIptables) with(verb string) []string {
	var out []string
	for _, c := range f.calls {
		if indexOf(strings.Fields(c), verb) >= 0 {
			out = append(out, c)
		}
	}
	return out
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestEnsureInsertsOnlyMissingRules(t *testing.T) {
	ep := netip.MustParseAddrPort("169.254.20.10:53")
	f := &fakeIptables{
		outputs: map[string]string{
			// The raw table already holds one rule of ours (as iptables-nft prints it)
			// and someone else's; the filter table is empty.
			"iptables-nft -w 5 -t raw -S": "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n" +
				`-A PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment "localdns: notrack udp to 169.254.20.10:53" -j CT --notrack` + "\n" +
				`-A PREROUTING -p udp -m comment --comment "someone else" -j CT --notrack` + "\n",
		},
		// One rule is missing from the listing but -C finds it (another writer raced us).
		exists: map[string]bool{"INPUT localdns: accept tcp to 169.254.20.10:53": true},
	}
	r := newNodeRules(IptablesNFT, []netip.AddrPort{ep}, f.run, discard())
	changes, err := r.ensure(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 14 {
		t.Errorf("%d changes, want 14 (16 rules, one listed, one found by -C):\n%s", len(changes), strings.Join(changes, "\n"))
	}
	inserts := f.with("-I")
	if len(inserts) != 14 {
		t.Fatalf("%d inserts, want 14", len(inserts))
	}
	for _, c := range inserts {
		if !strings.HasPrefix(c, "iptables-nft -w 5 -t ") || strings.Contains(c, "localdns: notrack udp to 169.254.20.10:53 -j NOTRACK") && strings.Contains(c, "PREROUTING") {
			t.Errorf("unexpected insert %q", c)
		}
	}
	if n := len(f.with("-S")); n != 2 {
		t.Errorf("%d listings, want one per table (2)", n)
	}
	if n := len(f.with("-C")); n != 15 {
		t.Errorf("%d checks, want 15 (every rule not listed)", n)
	}
	if strings.Contains(strings.Join(f.calls, "\n"), "ip6tables") {
		t.Errorf("IPv4-only listen touched ip6tables:\n%s", strings.Join(f.calls, "\n"))
	}
}

func TestEnsureDetectsBackendOnce(t *testing.T) {
	f := &fakeIptables{outputs: map[string]string{
		"iptables-legacy-save": "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n",
	}}
	r := newNodeRules(IptablesAuto, []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53")}, f.run, discard())
	for range 2 {
		if _, err := r.ensure(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if r.backend != backendLegacy {
		t.Errorf("backend %s, want legacy", r.backend)
	}
	saves := 0
	for _, c := range f.calls {
		if strings.Contains(c, "-save") {
			saves++
		} else if !strings.HasPrefix(c, "iptables-legacy ") {
			t.Errorf("command %q does not use the detected backend", c)
		}
	}
	if saves != 4 {
		t.Errorf("%d iptables-save runs, want 4 (2 backends x 2 families, once)", saves)
	}
}

func TestRemoveDeletesOnlyOurs(t *testing.T) {
	save := `# Generated by iptables-nft-save v1.8.9
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment "localdns: notrack udp to 169.254.20.10:53" -j CT --notrack
-A PREROUTING -p udp -m comment --comment "kube-proxy: not ours" -j CT --notrack
COMMIT
*filter
:INPUT ACCEPT [0:0]
-A INPUT -s 169.254.20.11/32 -p tcp -m tcp --sport 53 -m comment --comment "localdns: accept tcp from 169.254.20.11:53" -j ACCEPT
-A INPUT -j ACCEPT
COMMIT
`
	f := &fakeIptables{
		outputs: map[string]string{"iptables-nft-save": save},
		missing: map[string]bool{"iptables-legacy-save": true, "ip6tables-legacy-save": true},
	}
	r := newNodeRules(IptablesAuto, nil, f.run, discard())
	changes, err := r.remove(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`iptables-nft -w 5 -t raw -D PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment localdns: notrack udp to 169.254.20.10:53 -j CT --notrack`,
		`iptables-nft -w 5 -t filter -D INPUT -s 169.254.20.11/32 -p tcp -m tcp --sport 53 -m comment --comment localdns: accept tcp from 169.254.20.11:53 -j ACCEPT`,
	}
	if got := f.with("-D"); !reflect.DeepEqual(got, want) {
		t.Errorf("deletes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(changes) != 2 {
		t.Errorf("changes %q, want 2", changes)
	}
}

func TestRemoveExplicitModeLooksInOneBackend(t *testing.T) {
	f := &fakeIptables{}
	r := newNodeRules(IptablesLegacy, nil, f.run, discard())
	if _, err := r.remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{"iptables-legacy-save ", "ip6tables-legacy-save "}
	if !reflect.DeepEqual(f.calls, want) {
		t.Errorf("calls %q, want %q", f.calls, want)
	}
}

package nodecache

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
)

// commentPrefix starts the comment of every rule localdns installs; cleanup
// removes exactly the rules that carry it.
const commentPrefix = "localdns:"

// xtablesWait is passed to -w: how long (seconds) to wait for the xtables
// lock that kube-proxy and kubelet also take on legacy backends.
const xtablesWait = "5"

// backend is an iptables implementation; the binaries are named after it
// (iptables-nft, ip6tables-legacy-save, ...).
type backend string

const (
	backendNFT    backend = "nft"
	backendLegacy backend = "legacy"
)

// families are the iptables front-ends, one per IP family.
const (
	family4 = "iptables"
	family6 = "ip6tables"
)

// runner runs a command and returns its standard output. Commands run in the
// network namespace of the calling thread.
type runner func(ctx context.Context, name string, args ...string) ([]byte, error)

// execRunner runs the command; a failure's error carries its stderr and
// still unwraps to *exec.ExitError.
func execRunner(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// rule is one iptables rule of ours.
type rule struct {
	family  string   // family4 or family6
	table   string   // "raw" or "filter"
	chain   string   // built-in chain
	args    []string // matches, comment and target, as given to -C/-I
	comment string   // unique per (family, table, chain)
}

// rulesFor lists every rule for the listen endpoints. For each endpoint and
// protocol (UDP, TCP) and each direction (to it: --dport; from it: --sport):
// raw PREROUTING and OUTPUT skip conntrack, so DNS never takes a conntrack
// entry (the race this product exists to avoid, and table exhaustion under
// load); filter INPUT and OUTPUT accept, because untracked packets match no
// "ESTABLISHED,RELATED" rule of a restrictive firewall.
func rulesFor(endpoints []netip.AddrPort) []rule {
	type chainTarget struct {
		table, chain, verb string
		target             []string
	}
	chains := []chainTarget{
		{"raw", "PREROUTING", "notrack", []string{"-j", "NOTRACK"}},
		{"raw", "OUTPUT", "notrack", []string{"-j", "NOTRACK"}},
		{"filter", "INPUT", "accept", []string{"-j", "ACCEPT"}},
		{"filter", "OUTPUT", "accept", []string{"-j", "ACCEPT"}},
	}
	var rules []rule
	for _, ep := range endpoints {
		family := family4
		if ep.Addr().Is6() {
			family = family6
		}
		host := netip.PrefixFrom(ep.Addr(), ep.Addr().BitLen()).String()
		port := strconv.Itoa(int(ep.Port()))
		for _, c := range chains {
			for _, proto := range []string{"udp", "tcp"} {
				for _, dir := range []struct{ word, addrFlag, portFlag string }{
					{"to", "-d", "--dport"},
					{"from", "-s", "--sport"},
				} {
					comment := fmt.Sprintf("%s %s %s %s %s", commentPrefix, c.verb, proto, dir.word, ep)
					args := []string{dir.addrFlag, host, "-p", proto, "-m", proto, dir.portFlag, port,
						"-m", "comment", "--comment", comment}
					rules = append(rules, rule{
						family:  family,
						table:   c.table,
						chain:   c.chain,
						args:    append(args, c.target...),
						comment: comment,
					})
				}
			}
		}
	}
	return rules
}

// nodeRules installs and removes the rules through the node's iptables
// backend, by exec'ing the same binaries kube-proxy uses, so our rules live
// in the tables kube-proxy and the administrator see.
type nodeRules struct {
	mode   IptablesMode
	rules  []rule
	run    runner
	logger *slog.Logger

	backend backend // resolved on first ensure
}

func newNodeRules(mode IptablesMode, endpoints []netip.AddrPort, run runner, logger *slog.Logger) *nodeRules {
	return &nodeRules{mode: mode, rules: rulesFor(endpoints), run: run, logger: logger}
}

// ensure inserts every missing rule at the top of its chain. It lists each
// table once and checks (-C) and inserts (-I) only rules whose comment is
// absent, so a healthy node costs one listing per table.
func (r *nodeRules) ensure(ctx context.Context) ([]string, error) {
	if r.backend == "" {
		r.backend = r.resolveBackend(ctx)
	}
	var changes []string
	var errs []error
	for _, group := range groupByTable(r.rules) {
		bin := binary(group[0].family, r.backend)
		listed, err := r.run(ctx, bin, "-w", xtablesWait, "-t", group[0].table, "-S")
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s table: %w", group[0].table, err))
			continue
		}
		present := commentsIn(listed)
		for _, rl := range group {
			if present[rl.chain+" "+rl.comment] {
				continue
			}
			exists, err := r.check(ctx, bin, rl)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if exists {
				continue
			}
			insert := append([]string{"-w", xtablesWait, "-t", rl.table, "-I", rl.chain, "1"}, rl.args...)
			if _, err := r.run(ctx, bin, insert...); err != nil {
				errs = append(errs, fmt.Errorf("insert rule %q: %w", rl.comment, err))
				continue
			}
			changes = append(changes, fmt.Sprintf("inserted %s %s %s rule %q", bin, rl.table, rl.chain, rl.comment))
		}
	}
	return changes, errors.Join(errs...)
}

// groupByTable splits rules by (family, table), keeping their order.
func groupByTable(rules []rule) [][]rule {
	index := map[string]int{}
	var groups [][]rule
	for _, rl := range rules {
		key := rl.family + "/" + rl.table
		i, ok := index[key]
		if !ok {
			i = len(groups)
			index[key] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], rl)
	}
	return groups
}

// check runs -C: exit status 0 means the rule exists, 1 that it does not.
func (r *nodeRules) check(ctx context.Context, bin string, rl rule) (bool, error) {
	_, err := r.run(ctx, bin, append([]string{"-w", xtablesWait, "-t", rl.table, "-C", rl.chain}, rl.args...)...)
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		return false, nil
	default:
		return false, fmt.Errorf("check rule %q: %w", rl.comment, err)
	}
}

func (r *nodeRules) resolveBackend(ctx context.Context) backend {
	switch r.mode {
	case IptablesNFT:
		return backendNFT
	case IptablesLegacy:
		return backendLegacy
	}
	nft := r.saveAll(ctx, backendNFT)
	legacy := r.saveAll(ctx, backendLegacy)
	b, reason := chooseBackend(nft, legacy)
	r.logger.Info("iptables backend detected", "backend", string(b), "reason", reason)
	return b
}

// saveAll returns the IPv4 and IPv6 iptables-save output of a backend; a
// missing binary or a failure reads as no rules, as in kube-proxy's
// iptables-wrapper. Without -t, iptables-legacy-save only reads tables that
// already exist, so detection never instantiates legacy tables.
func (r *nodeRules) saveAll(ctx context.Context, b backend) string {
	var all strings.Builder
	for _, family := range []string{family4, family6} {
		out, err := r.run(ctx, binary(family, b)+"-save")
		if err != nil {
			r.logger.Debug("iptables-save failed; counting it as empty", "backend", string(b), "err", err)
			continue
		}
		all.Write(out)
	}
	return all.String()
}

// kubeletHintChains are the chains kubelet (1.17+) creates in the mangle
// table of the backend it uses; kube-proxy's iptables-wrapper trusts them first.
var kubeletHintChains = []string{":KUBE-IPTABLES-HINT ", ":KUBE-KUBELET-CANARY "}

// chooseBackend picks the backend the node's kube-proxy uses, the way
// kube-proxy's image decides (iptables-wrapper): the backend holding
// kubelet's hint chain; else the one with more rules; nft on a tie (a fresh
// node), since it is the default of every current distribution.
func chooseBackend(nftSave, legacySave string) (backend, string) {
	if hasHintChain(nftSave) {
		return backendNFT, "kubelet's hint chain is in nft"
	}
	if hasHintChain(legacySave) {
		return backendLegacy, "kubelet's hint chain is in legacy"
	}
	nft, legacy := countRules(nftSave), countRules(legacySave)
	if legacy > nft {
		return backendLegacy, fmt.Sprintf("legacy holds more rules (%d) than nft (%d)", legacy, nft)
	}
	return backendNFT, fmt.Sprintf("nft holds at least as many rules (%d) as legacy (%d)", nft, legacy)
}

func hasHintChain(save string) bool {
	for line := range strings.Lines(save) {
		for _, hint := range kubeletHintChains {
			if strings.HasPrefix(line, hint) {
				return true
			}
		}
	}
	return false
}

func countRules(save string) int {
	n := 0
	for line := range strings.Lines(save) {
		if strings.HasPrefix(line, "-") {
			n++
		}
	}
	return n
}

// remove deletes every rule whose comment starts with "localdns:", in every
// table, for both IP families. In auto mode it looks in both backends,
// because what auto detects now may differ from what it detected at install.
func (r *nodeRules) remove(ctx context.Context) ([]string, error) {
	var backends []backend
	switch r.mode {
	case IptablesNFT:
		backends = []backend{backendNFT}
	case IptablesLegacy:
		backends = []backend{backendLegacy}
	default:
		backends = []backend{backendNFT, backendLegacy}
	}
	var changes []string
	var errs []error
	for _, b := range backends {
		for _, family := range []string{family4, family6} {
			bin := binary(family, b)
			save, err := r.run(ctx, bin+"-save")
			if errors.Is(err, exec.ErrNotFound) {
				continue // that backend is not installed: nothing of ours can be there
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("list rules: %w", err))
				continue
			}
			for _, rl := range ourRules(save) {
				del := append([]string{"-w", xtablesWait, "-t", rl.table, "-D", rl.chain}, rl.args...)
				if _, err := r.run(ctx, bin, del...); err != nil {
					errs = append(errs, fmt.Errorf("delete rule %q: %w", rl.comment, err))
					continue
				}
				changes = append(changes, fmt.Sprintf("deleted %s %s %s rule %q", bin, rl.table, rl.chain, rl.comment))
			}
		}
	}
	return changes, errors.Join(errs...)
}

func binary(family string, b backend) string { return family + "-" + string(b) }

// ourRules finds our rules in iptables-save output: "*table" starts a
// table, "-A CHAIN args..." is a rule.
func ourRules(save []byte) []rule {
	var rules []rule
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if t, ok := strings.CutPrefix(line, "*"); ok {
			table = t
			continue
		}
		chain, args, comment, ok := parseRuleLine(line)
		if ok && strings.HasPrefix(comment, commentPrefix) {
			rules = append(rules, rule{table: table, chain: chain, args: args, comment: comment})
		}
	}
	return rules
}

// commentsIn returns "CHAIN comment" for each of our rules in `iptables -S`
// output.
func commentsIn(listed []byte) map[string]bool {
	found := map[string]bool{}
	for line := range strings.Lines(string(listed)) {
		chain, _, comment, ok := parseRuleLine(strings.TrimRight(line, "\n"))
		if ok && strings.HasPrefix(comment, commentPrefix) {
			found[chain+" "+comment] = true
		}
	}
	return found
}

// parseRuleLine splits an "-A CHAIN args..." line as iptables-save and
// iptables -S print it and returns the chain, the arguments after it and
// the value of --comment, if any.
func parseRuleLine(line string) (chain string, args []string, comment string, ok bool) {
	words, err := splitWords(line)
	if err != nil || len(words) < 2 || words[0] != "-A" {
		return "", nil, "", false
	}
	args = words[2:]
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--comment" {
			comment = args[i+1]
		}
	}
	return words[1], args, comment, true
}

// splitWords splits on blanks, honouring double quotes and backslash
// escapes inside them, the quoting iptables-save uses for comments.
func splitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord, inQuote := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuote && c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case c == '"':
			inQuote = !inQuote
			inWord = true
		case !inQuote && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// Package corednstest runs the real CoreDNS in tests: the binary that
// e2e/hack/provision-coredns.sh builds (`make deps`), as a process on a
// random 127/8 address and port, with a Corefile the test writes. A test can
// swap the Corefile — through CoreDNS's reload plugin, as a ConfigMap change
// reaches kube-dns, or by restarting it on the same address — and stop it
// with SIGTERM, which waits out a `health { lameduck }`.
//
// It is imported only by tests. Without the binary Start skips the test;
// under `make test` LOCALDNS_REQUIRE_COREDNS=1 turns that skip into a
// failure, so CI can never pass by silently skipping the CoreDNS tests.
package corednstest

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/dnstest"
	"github.com/localdns/localdns/internal/systest"
	"github.com/miekg/dns"
)

// Version is the CoreDNS release e2e/hack/provision-coredns.sh builds.
const Version = "v1.15.0"

// ReadyName is the name Start and Restart ask until CoreDNS answers. Any
// reply counts, REFUSED included, so a Corefile need not serve it; it must
// only not drop it (an `erratic { drop }` on the root zone would).
const ReadyName = "ready.corednstest.invalid."

// ErrNoBinary means the coredns binary was not found.
var ErrNoBinary = errors.New("coredns " + Version + " not provisioned (run e2e/hack/provision-coredns.sh or make deps)")

// Required reports whether a missing binary must fail the test run.
func Required() bool { return os.Getenv("LOCALDNS_REQUIRE_COREDNS") == "1" }

// Binary is the path of the provisioned coredns, in the provisioning script's
// cache (LOCALDNS_CACHE, default ~/.cache/localdns).
func Binary() (string, error) {
	cache := os.Getenv("LOCALDNS_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrNoBinary, err)
		}
		cache = filepath.Join(home, ".cache", "localdns")
	}
	path := filepath.Join(cache, "coredns", Version, "coredns")
	if st, err := os.Stat(path); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%w: no executable %s", ErrNoBinary, path)
	}
	return path, nil
}

// Corefile returns the Corefile for CoreDNS listening on addr: its server
// blocks use addr's port and `bind` addr's IP.
type Corefile func(addr netip.AddrPort) string

// Server is a CoreDNS process serving UDP and TCP at one loopback address.
type Server struct {
	t        testing.TB
	bin      string
	corefile string // path
	addr     netip.AddrPort
	proc     *systest.Process // nil while stopped
}

// Start runs CoreDNS with the Corefile written for a free 127/8 address and
// returns once it answers there over UDP and TCP. The test's cleanup kills it.
func Start(t testing.TB, corefile Corefile) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if Required() {
			t.Fatalf("LOCALDNS_REQUIRE_COREDNS=1: %v", err)
		}
		t.Skip(err)
	}
	pc, l := dnstest.ListenBoth(t)
	addr := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	l.Close()
	s := &Server{t: t, bin: bin, corefile: filepath.Join(t.TempDir(), "Corefile"), addr: addr}
	s.start(corefile)
	return s
}

// Addr is the address CoreDNS serves UDP and TCP on.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Logs is CoreDNS's output so far, for failure messages.
func (s *Server) Logs() string {
	if s.proc == nil {
		return "\n(coredns is stopped)"
	}
	return s.proc.Logs()
}

func (s *Server) start(corefile Corefile) {
	s.t.Helper()
	s.write(corefile)
	s.proc = systest.Start(s.t, "coredns", s.bin, "-conf", s.corefile, "-pidfile", "")
	systest.WaitFor(s.t, "coredns to answer on "+s.addr.String(), func() (bool, string) {
		for _, network := range []string{"udp", "tcp"} {
			if err := s.answers(network); err != nil {
				return false, err.Error() + s.proc.Logs()
			}
		}
		return true, ""
	})
}

// answers asks ReadyName once; any reply will do.
func (s *Server) answers(network string) error {
	q := new(dns.Msg)
	q.SetQuestion(ReadyName, dns.TypeA)
	c := &dns.Client{Net: network, Timeout: 500 * time.Millisecond}
	_, _, err := c.Exchange(q, s.addr.String())
	return err
}

// write replaces the Corefile in one rename, so that CoreDNS's reload plugin
// never reads half of it.
func (s *Server) write(corefile Corefile) {
	s.t.Helper()
	tmp := s.corefile + ".new"
	if err := os.WriteFile(tmp, []byte(corefile(s.addr)), 0o644); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(tmp, s.corefile); err != nil {
		s.t.Fatal(err)
	}
}

// configurationLine is what CoreDNS's reload plugin logs each time a
// configuration starts (with the configuration's hash).
const configurationLine = "Running configuration SHA512 = "

// Reload swaps the Corefile in place and returns once CoreDNS runs it, the
// way a ConfigMap change reaches kube-dns: the reload plugin notices the
// changed file. Both Corefiles must use the reload plugin; `reload 2s` keeps
// the wait short. (SIGUSR1 is no substitute: it unhooks the reload plugin,
// whose hook registers only once per process, so the new configuration could
// not be told from the old.)
func (s *Server) Reload(corefile Corefile) {
	s.t.Helper()
	if s.proc == nil {
		s.t.Fatal("Reload: coredns is stopped")
	}
	before := strings.Count(s.proc.Logs(), configurationLine)
	if before == 0 {
		s.t.Fatalf("Reload: the running Corefile does not use the reload plugin%s", s.proc.Logs())
	}
	s.write(corefile)
	systest.WaitFor(s.t, "coredns to run the new Corefile", func() (bool, string) {
		logs := s.proc.Logs()
		if strings.Contains(logs, "Corefile changed but reload failed") {
			s.t.Fatalf("Reload: coredns rejected the new Corefile%s", logs)
		}
		return strings.Count(logs, configurationLine) > before, logs
	})
}

// Restart stops CoreDNS (SIGTERM, its lameduck honoured), then starts it with
// corefile on the same address and returns once it answers.
func (s *Server) Restart(corefile Corefile) {
	s.t.Helper()
	s.Stop()
	s.start(corefile)
}

// Stop sends SIGTERM and returns once CoreDNS has exited: after its
// lameduck, if the Corefile sets one, and once it has closed its sockets.
// Idempotent.
func (s *Server) Stop() {
	s.t.Helper()
	if s.proc == nil {
		return
	}
	if code := s.proc.Terminate(s.t); code != 0 {
		s.t.Errorf("coredns exited with status %d after SIGTERM%s", code, s.proc.Logs())
	}
	s.proc = nil
}

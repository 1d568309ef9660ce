package clients

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/e2e/dnsload"
	"golang.org/x/sys/unix"
)

// listenUDPInNetns opens a UDP socket inside the network namespace bound at
// nsPath. The socket stays there after the thread moves on; the thread
// itself is never unlocked, so the runtime discards it with its namespace.
func listenUDPInNetns(nsPath, addr string) (net.PacketConn, error) {
	type result struct {
		pc  net.PacketConn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := os.Open(nsPath)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		pc, err := net.ListenPacket("udp", addr)
		ch <- result{pc, err}
	}()
	r := <-ch
	return r.pc, r.err
}

// TestClientsAgainstLocalServer runs the glibc, musl and Go clients in a
// network namespace of its own (no route out) whose /etc/resolv.conf (bind
// mounted in a private mount namespace) names only a DNS server this test
// serves inside it.
func TestClientsAgainstLocalServer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network and mount namespaces")
	}
	bins, err := Build("../..", t.TempDir())
	if err != nil {
		t.Fatalf("build (needs gcc and musl-tools): %v", err)
	}

	ns := fmt.Sprintf("ldns-gai-%d", os.Getpid())
	nsPath := "/var/run/netns/" + ns
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete: %v: %s", err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	pc, err := listenUDPInNetns(nsPath, "127.0.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	// svc.test and every name under it answer; the A questions are
	// recorded, to see the unique names.
	var mu sync.Mutex
	asked := map[string]bool{}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := q.Question[0].Name
		if strings.HasPrefix(name, "slow.") {
			time.Sleep(slowAnswer)
		}
		switch {
		case name != "svc.test." && !strings.HasSuffix(name, ".svc.test."):
			m.Rcode = dns.RcodeNameError
		case q.Question[0].Qtype == dns.TypeA:
			mu.Lock()
			asked[name] = true
			mu.Unlock()
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
				A:   net.IPv4(10, 1, 2, 3),
			})
		}
		_ = w.WriteMsg(m)
	})
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: mux, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })

	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// A host with a verb other than the one mark is refused before any lookup.
	for _, bin := range []string{bins.Glibc, bins.Musl} {
		for _, host := range []string{"%s.test", "%d.%d.test", "%d%%.test"} {
			err := exec.Command(bin, "-h", host, "-d", "1").Run()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
				t.Errorf("%s -h %s: %v, want exit status 2", filepath.Base(bin), host, err)
			}
		}
	}

	const lookups = 200
	// -d is only a ceiling: the lookup count stops each run.
	gaiload := func(bin, host string) []string {
		return []string{bin, "-h", host, "-c", "4", "-d", "60", "-m", fmt.Sprint(lookups), "-l", "1000"}
	}
	goClient := func(host string) []string {
		return []string{bins.Go, "-host", host, "-c", "4", "-d", "60s", "-max-lookups", fmt.Sprint(lookups), "-slow", "1s", "-json"}
	}
	tests := []struct {
		name       string
		argv       []string
		host       string
		wantErrors int64
	}{
		{"glibc", gaiload(bins.Glibc, "svc.test"), "svc.test", 0},
		{"musl", gaiload(bins.Musl, "svc.test"), "svc.test", 0},
		{"go", goClient("svc.test"), "svc.test", 0},
		{"glibc", gaiload(bins.Glibc, "missing.test"), "missing.test", lookups},
		{"musl", gaiload(bins.Musl, "missing.test"), "missing.test", lookups},
		{"go", goClient("missing.test"), "missing.test", lookups},
		{"glibc", gaiload(bins.Glibc, "glibc-%d.svc.test"), "glibc-%d.svc.test", 0},
		{"musl", gaiload(bins.Musl, "musl-%d.svc.test"), "musl-%d.svc.test", 0},
		{"go", goClient("go-%d.svc.test"), "go-%d.svc.test", 0},
	}
	// run runs a client in the namespace, with the resolv.conf above.
	run := func(t *testing.T, clientArgv []string) dnsload.Result {
		t.Helper()
		argv := append([]string{"--net=" + nsPath, "--", "unshare", "--mount", "--",
			"sh", "-c", `mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolv}, clientArgv...)
		out, err := exec.Command("nsenter", argv...).Output()
		if err != nil {
			t.Fatalf("%s: %v: %s", filepath.Base(clientArgv[0]), err, exitStderr(err))
		}
		res, err := ParseResult(out)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	for _, tt := range tests {
		t.Run(tt.name+"/"+tt.host, func(t *testing.T) {
			res := run(t, tt.argv)
			if res.Lookups != lookups || res.Errors != tt.wantErrors {
				t.Errorf("lookups=%d errors=%d (%s), want %d and %d", res.Lookups, res.Errors, res.FirstError, lookups, tt.wantErrors)
			}
			if res.Min > res.Mean || res.Mean > res.Max || res.P99 > res.Max {
				t.Errorf("latencies out of order: %s", res)
			}
			if since := time.Since(time.Unix(0, res.StartUnixNano)); since < res.Elapsed || since > time.Minute {
				t.Errorf("the run started %s ago by its start_unix_ns, want within the test and before its %s", since, res.Elapsed)
			}
			if res.First < res.Min || res.First > res.Elapsed {
				t.Errorf("first answers after %s, want within [min %s, elapsed %s]", res.First, res.Min, res.Elapsed)
			}
			if res.Host != tt.host || res.Concurrency != 4 {
				t.Errorf("result names host %q concurrency %d", res.Host, res.Concurrency)
			}
			// Every error of a run here is NXDOMAIN: one kind.
			if tt.wantErrors > 0 && (len(res.ErrorKinds) != 1 || sum(res.ErrorKinds) != tt.wantErrors) {
				t.Errorf("errors by kind %v, want one kind counting %d", res.ErrorKinds, tt.wantErrors)
			}
			if prefix, suffix, unique := strings.Cut(tt.host, "%d"); unique {
				mu.Lock()
				defer mu.Unlock()
				for i := 1; i <= lookups; i++ {
					if name := fmt.Sprint(prefix, i, suffix, "."); !asked[name] {
						t.Errorf("unique names: %s never asked", name)
					}
				}
			}
		})
	}
	checkRateAndSlow(t, run, bins)
	checkSelfStarved(t, run, bins)
}

// slowAnswer delays the local server's answers for names starting "slow.".
const slowAnswer = 20 * time.Millisecond

// checkRateAndSlow: the C client's -r paces its lookups over all threads,
// as the Go client's -rate does, and it reports when its slow lookups
// started, as the Go client does.
func checkRateAndSlow(t *testing.T, run func(*testing.T, []string) dnsload.Result, bins Binaries) {
	for _, bin := range []string{bins.Glibc, bins.Musl} {
		t.Run(filepath.Base(bin)+"/rate", func(t *testing.T) {
			res := run(t, []string{bin, "-h", "svc.test", "-c", "4", "-d", "1", "-m", "100000", "-r", "20"})
			if res.Lookups < 1 || res.Lookups > 21 || res.Errors != 0 {
				t.Errorf("-r 20 for 1 s: %d lookups, %d errors; want 1..21 lookups, none failing", res.Lookups, res.Errors)
			}
		})
		t.Run(filepath.Base(bin)+"/slow", func(t *testing.T) {
			res := run(t, []string{bin, "-h", "slow.svc.test", "-c", "2", "-d", "60", "-m", "10", "-l", fmt.Sprint(slowAnswer.Milliseconds())})
			if res.SlowCount != 10 || len(res.SlowAt) != 10 || !slices.IsSorted(res.SlowAt) || res.SlowAt[9] > res.Elapsed {
				t.Errorf("10 slow lookups: slow %d, started at %v (elapsed %s); want 10 start times, sorted, within the run", res.SlowCount, res.SlowAt, res.Elapsed)
			}
		})
	}
}

// checkSelfStarved: a C client whose cgroup may use 1 ms of CPU a second
// (cgroup v1 cpu.cfs_quota_us; a throttled thread waits runnable, as on a
// starved node) has lookups of 1 s or more, and counts some of them
// self-starved, never more than there are: its names are answered at
// once, so starvation explains every one, but a thread blocked on a lock
// that a throttled sibling holds (musl's allocator has one) sleeps, and
// its own wait for a CPU does not show it. The count errs on the side of
// calling DNS slow.
func checkSelfStarved(t *testing.T, run func(*testing.T, []string) dnsload.Result, bins Binaries) {
	const cpuRoot = "/sys/fs/cgroup/cpu" // cgroup v1, as e2e/cluster's node uses
	if _, err := os.Stat(filepath.Join(cpuRoot, "cpu.cfs_quota_us")); err != nil {
		t.Skipf("no cgroup v1 cpu controller to throttle a client with: %v", err)
	}
	for _, bin := range []string{bins.Glibc, bins.Musl} {
		t.Run(filepath.Base(bin)+"/self-starved", func(t *testing.T) {
			cg := filepath.Join(cpuRoot, fmt.Sprintf("localdns-clients-test-%d", os.Getpid()))
			if err := os.Mkdir(cg, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.Remove(cg) }) // empty once the client has exited
			for file, v := range map[string]string{"cpu.cfs_period_us": "1000000", "cpu.cfs_quota_us": "1000"} {
				if err := os.WriteFile(filepath.Join(cg, file), []byte(v), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			res := run(t, []string{"sh", "-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(cg, "cgroup.procs"),
				bin, "-h", "svc.test", "-c", "8", "-d", "5", "-m", "1000000"})
			if res.Over1s == 0 || res.SelfStarved == 0 || res.SelfStarved > res.Over1s {
				t.Errorf("%s throttled: >=1s %d, self-starved %d; want some, of them some self-starved (%s)", filepath.Base(bin), res.Over1s, res.SelfStarved, res)
			}
			if res.StarvedErrors > res.Errors {
				t.Errorf("%s throttled: %d errors counted self-starved of %d (%s)", filepath.Base(bin), res.StarvedErrors, res.Errors, res)
			}
		})
	}
}

func sum(counts map[string]int64) int64 {
	var n int64
	for _, c := range counts {
		n += c
	}
	return n
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

func TestLoadArgs(t *testing.T) {
	l := Load{Host: "svc.ns", Concurrency: 3, Duration: 2 * time.Second, Slow: time.Second, MaxLookups: 10, Rate: 500}
	goArgs, err := l.args(Go)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(goArgs, " "), "-host svc.ns -c 3 -d 2s -slow 1s -max-lookups 10 -rate 500 -json"; got != want {
		t.Errorf("Go args %q, want %q", got, want)
	}
	l.OwnResolvers = true
	if goArgs, err = l.args(Go); err != nil || !slices.Contains(goArgs, "-own-resolvers") {
		t.Errorf("Go args with OwnResolvers: %q, %v; want -own-resolvers among them", goArgs, err)
	}
	glibcArgs, err := l.args(Glibc)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(glibcArgs, " "), "-h svc.ns -c 3 -d 2 -l 1000 -m 10 -r 500"; got != want {
		t.Errorf("glibc args %q, want %q", got, want)
	}
	l.Rate = 2.5
	if _, err := l.args(Glibc); err == nil {
		t.Error("glibc client with a fractional rate: no error")
	}
	l.Rate = 0
	cArgs, err := l.args(Musl)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(cArgs, " "), "-h svc.ns -c 3 -d 2 -l 1000 -m 10"; got != want {
		t.Errorf("musl args %q, want %q", got, want)
	}
}

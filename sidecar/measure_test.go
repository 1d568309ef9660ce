package sidecar

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/localdns/localdns/internal/systest"
)

// BenchmarkStubDNSPerf measures the stub as it ships, for the report: the
// static stripped binary's size, its RSS idle and at its peak under a bounded
// dnsperf load (1000 QPS for 10 s over UDP on loopback, 4 clients), with the
// fake kube-dns as its node cache, and the CPU time it used. "hits" asks 200
// names, which fit the 1000-entry cache; "misses" cycles through 4000, so
// nearly every query goes upstream. Each once with metrics off (the pod
// default) and on. Run it alone:
//
//	go test -run '^$' -bench StubDNSPerf -benchtime 1x ./sidecar/
func BenchmarkStubDNSPerf(b *testing.B) {
	if _, err := exec.LookPath("dnsperf"); err != nil {
		b.Skip("dnsperf is not installed (hack/install-deps.sh installs it)")
	}
	bin := systest.BuildBinaries(b, "github.com/localdns/localdns/cmd/localdns-stub", "github.com/localdns/localdns/hack/fakedns")
	info, err := os.Stat(bin["localdns-stub"])
	if err != nil {
		b.Fatal(err)
	}
	for _, workload := range []struct {
		name     string
		services int
	}{{"hits", 100}, {"misses", 2000}} {
		queries := filepath.Join(b.TempDir(), workload.name)
		var q strings.Builder
		for i := range workload.services {
			fmt.Fprintf(&q, "svc-%d.default.svc.cluster.local A\nsvc-%d.default.svc.cluster.local AAAA\n", i, i)
		}
		if err := os.WriteFile(queries, []byte(q.String()), 0o644); err != nil {
			b.Fatal(err)
		}
		for _, metrics := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/metrics=%v", workload.name, metrics), func(b *testing.B) {
				upstream := unusedAddr(b).String()
				systest.Start(b, "fakedns", bin["fakedns"], "--listen", upstream, "--services", strconv.Itoa(workload.services))
				listen := unusedAddr(b)
				args := []string{bin["localdns-stub"], "--listen", listen.String(), "--node-cache", upstream}
				if metrics {
					args = append(args, "--metrics-addr", unusedAddr(b).String())
				}
				stub := systest.Start(b, "localdns-stub", args...)
				systest.WaitFor(b, "the stub to answer", func() (bool, string) {
					out, err := exec.Command(bin["localdns-stub"], "probe", "--listen", listen.String()).CombinedOutput()
					return err == nil, string(out) + stub.Logs()
				})
				pid := stub.Pid()
				idleRSS := procStatusKiB(b, pid, "VmRSS")
				for b.Loop() {
					out, err := exec.Command("dnsperf", "-s", listen.Addr().String(), "-p", strconv.Itoa(int(listen.Port())),
						"-d", queries, "-c", "4", "-Q", "1000", "-l", "10").CombinedOutput()
					if err != nil {
						b.Fatalf("dnsperf: %v\n%s", err, out)
					}
					b.ReportMetric(float64(info.Size())/1e6, "binary_MB")
					b.ReportMetric(idleRSS/1024, "rss_idle_MiB")
					b.ReportMetric(procStatusKiB(b, pid, "VmHWM")/1024, "rss_peak_MiB")
					b.ReportMetric(dnsperfStat(b, out, `Queries per second:\s+([\d.]+)`), "qps")
					b.ReportMetric(dnsperfStat(b, out, `Average Latency \(s\):\s+([\d.]+)`)*1e6, "avg_latency_us")
					b.ReportMetric(dnsperfStat(b, out, `Queries lost:\s+(\d+)`), "lost")
					b.ReportMetric(cpuSeconds(b, pid), "cpu_s")
				}
				if code := stub.Terminate(b); code != 0 {
					b.Errorf("stub exit status %d%s", code, stub.Logs())
				}
			})
		}
	}
}

// procStatusKiB reads one kB field of /proc/<pid>/status (VmRSS, VmHWM).
func procStatusKiB(b *testing.B, pid int, field string) float64 {
	b.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + field + `:\s+(\d+) kB$`).FindSubmatch(status)
	if m == nil {
		b.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// cpuSeconds is the process's user+system time from /proc/<pid>/stat.
func cpuSeconds(b *testing.B, pid int) float64 {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) start at ") ".
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	const clockTicks = 100 // USER_HZ on Linux
	return (utime + stime) / clockTicks
}

func dnsperfStat(b *testing.B, out []byte, pattern string) float64 {
	b.Helper()
	m := regexp.MustCompile(pattern).FindSubmatch(out)
	if m == nil {
		b.Fatalf("dnsperf output lacks %s:\n%s", pattern, out)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

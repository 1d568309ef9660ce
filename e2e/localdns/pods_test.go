package localdns

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/localdns/localdns/e2e/cluster"
)

func TestCheckResolvConf(t *testing.T) {
	const (
		search  = "search ns1.svc.cluster.local svc.cluster.local cluster.local\n"
		options = "options ndots:5 timeout:1 attempts:2 single-request-reopen\n"
	)
	tests := []struct {
		name, text string
		families   []cluster.Family
		mode       string
		wantErr    string
	}{
		{"node cache view", search + "nameserver 169.254.20.10\nnameserver 10.96.0.10\n" + options, ipv4, ModeNodeCache, ""},
		{"options in the kubelet's map order", "nameserver 169.254.20.10\nnameserver 10.96.0.10\n" + search + "options single-request-reopen attempts:2 ndots:5 timeout:1\n", ipv4, ModeNodeCache, ""},
		{"stub view", "nameserver 127.0.0.1\nnameserver 169.254.20.10\n" + search + options, ipv4, ModeStub, ""},
		{"stub view is not the node cache's", "nameserver 127.0.0.1\nnameserver 169.254.20.10\n" + search + options, ipv4, ModeNodeCache, "nameservers [127.0.0.1 169.254.20.10]"},
		{"nameserver order matters", "nameserver 10.96.0.10\nnameserver 169.254.20.10\n" + search + options, ipv4, ModeNodeCache, "nameservers [10.96.0.10"},
		{"plain cluster DNS", "nameserver 10.96.0.10\n" + search + "options ndots:5\n", ipv4, ModeNodeCache, "options [ndots:5]"},
		{"another namespace's search path", "nameserver 169.254.20.10\nnameserver 10.96.0.10\nsearch ns2.svc.cluster.local svc.cluster.local cluster.local\n" + options, ipv4, ModeNodeCache, "search [ns2.svc"},
		{"IPv6 node cache view", "nameserver fd6c:6f63:616c::10\nnameserver fd00:10:96::a\n" + search + options, ipv6, ModeNodeCache, ""},
		{"IPv6 stub view", "nameserver ::1\nnameserver fd6c:6f63:616c::10\n" + search + options, ipv6, ModeStub, ""},
		{"IPv4 view in an IPv6 cluster", "nameserver 169.254.20.10\nnameserver 10.96.0.10\n" + search + options, ipv6, ModeNodeCache, "want [fd6c:6f63:616c::10 fd00:10:96::a]"},
		{"dual-stack node cache view", "nameserver 169.254.20.10\nnameserver fd6c:6f63:616c::10\nnameserver 10.96.0.10\n" + search + options, dual, ModeNodeCache, ""},
		{"dual-stack stub view: the primary family", "nameserver 127.0.0.1\nnameserver 169.254.20.10\n" + search + options, dual, ModeStub, ""},
		{"dual-stack without the IPv6 node cache", "nameserver 169.254.20.10\nnameserver 10.96.0.10\n" + search + options, dual, ModeNodeCache, "want [169.254.20.10 fd6c:6f63:616c::10 10.96.0.10]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckResolvConf(tt.text, tt.families, "ns1", tt.mode)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestCheckInjected(t *testing.T) {
	const stubPod = `{"metadata":{"name":"p","annotations":{"localdns.io/injected":"stub"}},
"spec":{"dnsPolicy":"None","dnsConfig":{"nameservers":["127.0.0.1","169.254.20.10"],
"searches":["ns1.svc.cluster.local","svc.cluster.local","cluster.local"],
"options":[{"name":"ndots","value":"5"},{"name":"timeout","value":"1"},{"name":"attempts","value":"2"},{"name":"single-request-reopen"}]},
"initContainers":[{"name":"localdns-stub","image":"localdns/stub:dev","restartPolicy":"Always","startupProbe":{"exec":{"command":["/localdns-stub","probe"]}}}]}}`
	tests := []struct {
		name    string
		edit    func(string) string
		mode    string
		wantErr string
	}{
		{"stub pod", func(s string) string { return s }, ModeStub, ""},
		{"not a native sidecar", func(s string) string { return strings.Replace(s, `"restartPolicy":"Always",`, "", 1) }, ModeStub, "want Always"},
		{"no startup probe", func(s string) string {
			return strings.Replace(s, `,"startupProbe":{"exec":{"command":["/localdns-stub","probe"]}}`, "", 1)
		}, ModeStub, "no exec startup probe"},
		{"unmarked", func(s string) string { return strings.Replace(s, `"localdns.io/injected":"stub"`, `"x":"y"`, 1) }, ModeStub, "annotation localdns.io/injected"},
		{"wrong mode", func(s string) string { return s }, ModeNodeCache, `annotation localdns.io/injected="stub", want "nodecache"`},
		{"no dnsConfig", func(s string) string {
			return strings.Replace(s, `"dnsPolicy":"None"`, `"dnsPolicy":"ClusterFirst"`, 1)
		}, ModeStub, "dnsPolicy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Pod
			if err := json.Unmarshal([]byte(tt.edit(stubPod)), &p); err != nil {
				t.Fatal(err)
			}
			err := CheckInjected(p, ipv4, "ns1", tt.mode)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseSNMP(t *testing.T) {
	text := "Icmp: InMsgs OutRateLimitHost OutDestUnreachs\nIcmp: 7 3 12\nUdp: InDatagrams InErrors RcvbufErrors\nUdp: 100 2 1\n"
	got, err := parseSNMP(text)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"Icmp.InMsgs": 7, "Icmp.OutRateLimitHost": 3, "Icmp.OutDestUnreachs": 12, "Udp.InDatagrams": 100, "Udp.InErrors": 2, "Udp.RcvbufErrors": 1}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d counters, want %d: %v", len(got), len(want), got)
	}
	for _, bad := range []string{"", "Udp: InErrors\nUdp: x\n"} {
		if _, err := parseSNMP(bad); err == nil {
			t.Errorf("parseSNMP(%q): no error", bad)
		}
	}
	before := map[string]int64{"Udp.InErrors": 2}
	if d := SNMPDelta(before, got, "Udp.InErrors", "Icmp.OutRateLimitHost"); d != "Udp.InErrors +0, Icmp.OutRateLimitHost +3" {
		t.Errorf("SNMPDelta = %q", d)
	}
}

func TestParseProc(t *testing.T) {
	stat := "4242 (localdns stub) S 1 4242 4242 0 -1 4194560 800 0 0 0 150 50 0 0 20 0 7 0 12345 1000000 3000 18446744073709551615"
	status := "Name:\tlocaldns-stub\nVmPeak:\t  1300000 kB\nVmHWM:\t    12288 kB\nVmRSS:\t    10000 kB\n"
	cpu, hwm, err := parseProc(stat, status)
	if err != nil {
		t.Fatal(err)
	}
	if cpu != 2*time.Second || hwm != 12288<<10 {
		t.Errorf("parseProc = %s, %d; want 2s (200 ticks), %d", cpu, hwm, 12288<<10)
	}
	for _, bad := range [][2]string{{"no name", status}, {stat, "VmRSS:\t1 kB\n"}, {"1 (x) S 1 2", status}} {
		if _, _, err := parseProc(bad[0], bad[1]); err == nil {
			t.Errorf("parseProc(%q, %q): no error", bad[0], bad[1])
		}
	}
	// This test process itself: it has used some CPU and memory.
	if _, hwm, err := readProc(os.Getpid()); err != nil || hwm <= 0 {
		t.Errorf("readProc(self) = %d, %v", hwm, err)
	}
	if u := (Usage{CPU: time.Second, Wall: 4 * time.Second}); u.CPUShare() != 0.25 {
		t.Errorf("CPUShare = %v, want 0.25", u.CPUShare())
	}
}

func TestRunQueueWaitsOfSelf(t *testing.T) {
	waits, err := RunQueueWaits(os.Getpid())
	if err != nil || len(waits) == 0 {
		t.Fatalf("RunQueueWaits(self) = %v, %v; want this process's threads", waits, err)
	}
	if _, ok := waits[os.Getpid()]; !ok {
		t.Errorf("RunQueueWaits(self) = %v: no main thread %d", waits, os.Getpid())
	}
	if _, err := RunQueueWaits(-1); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}

func TestWaitsBetween(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name           string
		prev, cur      map[int]time.Duration
		total, longest time.Duration
	}{
		{"same threads", map[int]time.Duration{1: 10 * ms, 2: 5 * ms}, map[int]time.Duration{1: 30 * ms, 2: 6 * ms}, 21 * ms, 20 * ms},
		{"a thread new since: all its wait", map[int]time.Duration{1: 10 * ms}, map[int]time.Duration{1: 10 * ms, 2: 900 * ms}, 900 * ms, 900 * ms},
		{"a thread gone since: left out", map[int]time.Duration{1: 10 * ms, 2: 5 * time.Second}, map[int]time.Duration{1: 12 * ms}, 2 * ms, 2 * ms},
		{"none waited", map[int]time.Duration{1: ms}, map[int]time.Duration{1: ms}, 0, 0},
	} {
		if total, longest := waitsBetween(tc.prev, tc.cur); total != tc.total || longest != tc.longest {
			t.Errorf("%s: waitsBetween = %s, %s; want %s, %s", tc.name, total, longest, tc.total, tc.longest)
		}
	}
}

func TestCPUTimeOfSelf(t *testing.T) {
	before, _, err := CPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		after, _, err := CPUTime(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if after > before {
			return
		}
	}
	t.Fatal("a busy process's CPU time did not grow")
}

package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestConfigDefaultsAndValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"zero takes defaults", Config{}, false},
		{"nftables", Config{ProxyMode: ProxyNFTables}, false},
		{"ipvs is not in this kernel", Config{ProxyMode: "ipvs"}, true},
		{"name with a slash", Config{Name: "a/b"}, true},
		{"name too long for interface and socket paths", Config{Name: "abcdefghijklmnopqrstuvwxyz"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.withDefaults()
			if (err != nil) != tt.wantErr {
				t.Fatalf("withDefaults() error = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (got.Name == "" || got.K8sBinDir == "" || got.Progress == nil) {
				t.Errorf("defaults not filled: %+v", got)
			}
		})
	}
}

func TestCheckBinariesNamesEveryMissingOne(t *testing.T) {
	cfg, err := Config{K8sBinDir: t.TempDir(), CoreDNSBinary: "/nonexistent/coredns"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.checkBinaries()
	if !errors.Is(err, ErrMissingBinaries) {
		t.Fatalf("checkBinaries() = %v, want ErrMissingBinaries", err)
	}
	for _, want := range []string{"/nonexistent/coredns", "kubelet", "kube-proxy"} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/plain/path", "/plain/path"},
		{`/with\040space`, "/with space"},
		{`/tab\011and\134backslash`, "/tab\tand\\backslash"},
		{`/trailing\04`, `/trailing\04`},
	}
	for _, tt := range tests {
		if got := unescapeMount(tt.in); got != tt.want {
			t.Errorf("unescapeMount(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestProcStartTimeOfSelf(t *testing.T) {
	got, err := procStartTime(os.Getpid())
	if err != nil || got == "" {
		t.Fatalf("procStartTime(self) = %q, %v", got, err)
	}
	if _, err := procStartTime(1 << 30); err == nil {
		t.Error("procStartTime of a pid that cannot exist succeeded")
	}
}

func TestImageSpecArgsAreStable(t *testing.T) {
	spec := ImageSpec{
		Ref:           "localdns.test/unit:1",
		Entrypoint:    []string{"/bin/busybox", "sleep", "1"},
		Files:         map[string]string{"/bin/busybox": "/host/busybox", "/a/first": "/host/a"},
		FilesWithLibs: map[string]string{"/gai": "/host/gai"},
		Symlinks:      map[string]string{"/bin/sh": "busybox", "/bin/cat": "busybox"},
	}
	want := []string{"-ref", "localdns.test/unit:1",
		"-entrypoint", "/bin/busybox", "-entrypoint", "sleep", "-entrypoint", "1",
		"-add", "/host/a:/a/first", "-add", "/host/busybox:/bin/busybox",
		"-add-with-libs", "/host/gai:/gai",
		"-symlink", "/bin/cat=busybox", "-symlink", "/bin/sh=busybox"}
	for range 3 { // map order varies; the flags (and so the cache key) must not
		if got := spec.args(); !reflect.DeepEqual(got, want) {
			t.Fatalf("args() =\n%q\nwant\n%q", got, want)
		}
	}
}

// TestWaitForStopsWhenADaemonDied records a process that has exited and
// checks a wait that would never succeed returns at once, naming it.
func TestWaitForStopsWhenADaemonDied(t *testing.T) {
	c, err := newCluster(Config{BaseDir: t.TempDir(), RepoDir: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(c.dir("pids"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Our own pid with a start time it never had: alive() must say no.
	rec := fmt.Sprintf("1 kubelet %d 1\n", os.Getpid())
	if err := os.WriteFile(filepath.Join(c.dir("pids"), "01-kubelet"), []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	calls := 0
	err = c.waitFor(context.Background(), "never", func(context.Context) error {
		calls++
		return errors.New("not yet")
	})
	if !errors.Is(err, errDaemonExited) || !strings.Contains(err.Error(), "kubelet") {
		t.Fatalf("waitFor() = %v, want errDaemonExited naming kubelet", err)
	}
	if calls != 0 {
		t.Errorf("check ran %d times after the daemon died", calls)
	}
}

// TestKubeDNSAndUpstreamRender checks the lines the scenarios rely on: the
// CoreDNS template's own {{ .Name }} survives Go's templating, every slow
// zone gets its delay, the unanswered zone drops every query, the big zone
// answers every name with its records, and kube-dns keeps the stock plugins.
func TestKubeDNSAndUpstreamRender(t *testing.T) {
	c, err := newCluster(Config{BaseDir: t.TempDir(), RepoDir: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		tmpl string
		want []string
	}{
		{"coredns.yaml.tmpl", []string{
			"health {\n            lameduck 5s\n        }", "ready\n", "prometheus :9153\n", "loop\n", "reload\n", "cache 30\n",
			"forward . " + UpstreamIP.String() + " {\n            max_concurrent 1000\n        }",
			NoCacheZone + `:53 {`, `answer "{{ .Name }} 0 IN A ` + NoCacheA + `"`,
		}},
		{"upstream.Corefile.tmpl", []string{
			"slow100.ext.test:53 {\n    bind 10.100.0.53\n    erratic {\n        delay 1 100ms\n    }\n}",
			"slow300.ext.test:53 {\n    bind 10.100.0.53\n    erratic {\n        delay 1 300ms\n    }\n}",
			UnansweredZone + ":53 {\n    bind 10.100.0.53\n    erratic {\n        drop 1\n    }\n}",
			BigZone + ":53 {\n    bind 10.100.0.53\n    file " + c.runDir + "/big.zone\n}",
		}},
		{"big.zone.tmpl", []string{
			"$ORIGIN " + BigZone + ".\n$TTL 30\n", "* IN A 10.101.0.1\n", "* IN A 10.101.0.250\n",
			"* IN AAAA 2001:db8:b16::1\n", fmt.Sprintf("* IN AAAA 2001:db8:b16::%x", BigZoneRecords),
		}},
	}
	for _, tt := range tests {
		out, err := render(tt.tmpl, c.templateData())
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range tt.want {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s lacks %q:\n%s", tt.tmpl, want, out)
			}
		}
	}
}

package cluster

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lineLogger sends the progress output to the test log.
type lineLogger struct{ t *testing.T }

func (l lineLogger) Write(p []byte) (int, error) {
	l.t.Helper()
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestClusterBootsResolvesAndTearsDown boots the real cluster once per
// kube-proxy mode, proves a pod resolves through the kube-dns ClusterIP
// (and the forward to the fake upstream), and checks the teardown left
// nothing behind. It needs root, the provisioned binaries and about a
// minute per mode, so it runs only with LOCALDNS_E2E=1.
func TestClusterBootsResolvesAndTearsDown(t *testing.T) {
	if os.Getenv("LOCALDNS_E2E") != "1" {
		t.Skip("set LOCALDNS_E2E=1 to boot a real single-node cluster")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, containerd, kubelet")
	}
	// Ctrl-C cancels the context; the cleanups still tear down.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	for _, mode := range []string{ProxyIPTables, ProxyNFTables} {
		t.Run(mode, func(t *testing.T) {
			cfg := DefaultConfig()
			// A fixed name, so a crashed earlier run's leftovers are found.
			cfg.Name = "localdns-e2e-test"
			cfg.ProxyMode = mode
			cfg.Progress = lineLogger{t}

			start := time.Now()
			c, err := Up(ctx, cfg)
			if err != nil {
				t.Fatalf("boot: %v", err)
			}
			t.Logf("boot (%s) took %s", mode, time.Since(start).Round(100*time.Millisecond))
			t.Cleanup(func() { assertTornDown(t, c) })

			var out string
			if err := c.Step("pod resolves through kube-dns "+KubeDNSIP.String(), func() error {
				out, err = c.CheckDNS(ctx)
				return err
			}); err != nil {
				t.Fatalf("%v\nlogs in %s", err, c.LogsDir())
			}
			for _, want := range []string{
				"nameserver " + KubeDNSIP.String(),                      // kubelet's clusterDNS
				"search default.svc." + ClusterDomain,                   // kubelet's search path
				"Address: " + APIServiceIP.String(),                     // kubernetes.default via the ClusterIP
				"Name:\tupstream.test\nAddress: " + UpstreamIP.String(), // forwarded to the fake upstream
			} {
				if !strings.Contains(out, want) {
					t.Errorf("dns check output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// assertTornDown runs Down and checks that nothing of the cluster remains.
func assertTornDown(t *testing.T, c *Cluster) {
	t.Helper()
	daemons, err := readDaemons(c.dir("pids"))
	if err != nil || len(daemons) == 0 {
		t.Errorf("no daemons recorded (%v)", err)
	}
	start := time.Now()
	if err := c.Down(); err != nil {
		t.Errorf("teardown: %v", err)
	}
	t.Logf("teardown took %s", time.Since(start).Round(100*time.Millisecond))
	if _, err := os.Stat(c.NetnsPath()); !os.IsNotExist(err) {
		t.Errorf("node namespace %s still exists (stat: %v)", c.NetnsPath(), err)
	}
	if _, err := os.Stat(c.runDir); !os.IsNotExist(err) {
		t.Errorf("run directory %s still exists (stat: %v)", c.runDir, err)
	}
	if mounts, err := mountsUnder(c.runDir); err != nil || len(mounts) > 0 {
		t.Errorf("mounts left under %s: %v (%v)", c.runDir, mounts, err)
	}
	for _, d := range daemons {
		if d.alive() {
			t.Errorf("%s (pid %d) still runs", d.name, d.pid)
		}
	}
	logs, err := filepath.Glob(filepath.Join(c.LogsDir(), "*.log"))
	if err != nil || len(logs) == 0 {
		t.Errorf("daemon logs missing in %s (%v)", c.LogsDir(), err)
	}
}

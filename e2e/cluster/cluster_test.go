package cluster_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/localdns/localdns/e2e/clients"
	"github.com/localdns/localdns/e2e/cluster"
	"github.com/localdns/localdns/e2e/e2etest"
)

// TestMain repeats the failures at the end of the long verbose output.
func TestMain(m *testing.M) { os.Exit(e2etest.Main(m)) }

// TestClusterBootsResolvesAndTearsDown boots the real cluster once per
// kube-proxy mode, proves a pod resolves through the kube-dns ClusterIP
// (and the forward to the fake upstream), runs the glibc, musl and Go load
// clients as pods through kube-dns, and checks that the teardown left
// nothing behind. It needs root, the provisioned binaries and about a
// minute per mode, so it runs only with LOCALDNS_E2E=1.
func TestClusterBootsResolvesAndTearsDown(t *testing.T) {
	ctx, repo := e2etest.Start(t)
	bins, err := clients.Build(repo, t.TempDir())
	if err != nil {
		e2etest.Fatalf(t, "build load clients: %v", err)
	}

	newConfig := func(t *testing.T, mode string) cluster.Config {
		cfg := cluster.DefaultConfig()
		// A fixed name, so a crashed earlier run's leftovers are found.
		cfg.Name = "localdns-e2e-test"
		cfg.ProxyMode = mode
		cfg.Progress = e2etest.LogWriter(t)
		return cfg
	}
	// Whatever a failed or filtered subtest left, nothing outlives the test.
	t.Cleanup(func() {
		c, err := cluster.Attach(newConfig(t, cluster.ProxyIPTables))
		if err == nil {
			err = c.Down()
		}
		if err != nil {
			e2etest.Errorf(t, "final teardown: %v", err)
		}
	})

	// The first run ends in a crash drill: every daemon SIGKILLed, pods,
	// mounts and namespaces left behind. The second run's boot must clean
	// that up (it fails if anything remains) and its Down must leave
	// nothing.
	for _, run := range []struct {
		mode  string
		crash bool
	}{{cluster.ProxyIPTables, true}, {cluster.ProxyNFTables, false}} {
		mode := run.mode
		t.Run(mode, func(t *testing.T) {
			start := time.Now()
			c, err := cluster.Up(ctx, newConfig(t, mode))
			if err != nil {
				e2etest.Fatalf(t, "boot: %v", err)
			}
			t.Logf("boot (%s) took %s", mode, time.Since(start).Round(100*time.Millisecond))
			t.Cleanup(func() {
				if run.crash {
					if err := c.KillDaemons(); err != nil {
						e2etest.Errorf(t, "crash drill: %v", err)
					}
					t.Log("crash drill: daemons SIGKILLed, the rest left for the next boot to clean")
					return
				}
				start := time.Now()
				if err := c.Down(); err != nil {
					e2etest.Errorf(t, "teardown: %v", err)
				}
				t.Logf("teardown took %s", time.Since(start).Round(100*time.Millisecond))
			})

			var out string
			if err := c.Step("pod resolves through kube-dns "+cluster.KubeDNSIP.String(), func() error {
				out, err = c.CheckDNS(ctx)
				return err
			}); err != nil {
				e2etest.Fatalf(t, "%v\nlogs in %s", err, c.LogsDir())
			}
			for _, want := range []string{
				"nameserver " + cluster.KubeDNSIP.String(),                                      // kubelet's clusterDNS
				"search default.svc." + cluster.ClusterDomain,                                   // kubelet's search path
				"Address: " + cluster.APIServiceIP.String(),                                     // kubernetes.default via the ClusterIP
				"Name:\tupstream.test\nAddress: " + cluster.UpstreamIP.String(),                 // forwarded to the fake upstream
				"Name:\tcheck." + cluster.SlowZones[0].Name + "\nAddress: " + cluster.SlowZoneA, // a slow external zone
				"Name:\tcheck." + cluster.NoCacheZone + "\nAddress: " + cluster.NoCacheA,        // kube-dns's TTL 0 zone
			} {
				if !strings.Contains(out, want) {
					e2etest.Errorf(t, "dns check output lacks %q:\n%s", want, out)
				}
			}

			if err := c.Step("import load client images", func() error {
				return c.BuildAndImport(ctx, bins.Images()...)
			}); err != nil {
				e2etest.Fatalf(t, "%v", err)
			}
			// A short load through the search path (ndots:5 makes
			// kubernetes.default try kubernetes.default.default.svc first).
			// No latency is asserted: without the drop emulation this only
			// proves each client resolves in a pod through kube-dns.
			load := clients.Load{Host: "kubernetes.default", Concurrency: 10, Duration: 3 * time.Second,
				Slow: time.Second, MaxLookups: 100_000}
			for _, kind := range clients.Kinds {
				manifest, err := clients.PodManifest("default", "load-"+kind, kind, load, nil)
				if err != nil {
					e2etest.Fatalf(t, "%v", err)
				}
				var logs string
				if err := c.Step(fmt.Sprintf("%s client: %d x %s of %s", kind, load.Concurrency, load.Duration, load.Host), func() error {
					logs, err = c.RunPod(ctx, "default", "load-"+kind, manifest)
					return err
				}); err != nil {
					e2etest.Fatalf(t, "%v\nlogs in %s", err, c.LogsDir())
				}
				res, err := clients.ParseResult([]byte(logs))
				if err != nil {
					e2etest.Fatalf(t, "%v", err)
				}
				t.Logf("%s: %s", kind, res)
				if res.Lookups == 0 || res.Errors != 0 {
					e2etest.Errorf(t, "%s client: %d lookups, %d errors (%s)", kind, res.Lookups, res.Errors, res.FirstError)
				}
			}

			// The race emulation works: with 0.5% of the UDP packets to the
			// ClusterIP dropped, glibc waits out its 5 s timeout. Each lookup
			// sends 4 packets (A and AAAA, two search names), so about 2% of
			// lookups stall; 20 threads for 8 s all but surely hit some.
			remove, err := c.DropKubeDNSUDP(ctx, 0.005)
			if err != nil {
				e2etest.Fatalf(t, "%v", err)
			}
			baseline := clients.Load{Host: "kubernetes.default", Concurrency: 20, Duration: 8 * time.Second,
				Slow: time.Second, MaxLookups: 100_000}
			manifest, err := clients.PodManifest("default", "baseline-glibc", clients.Glibc, baseline, nil)
			if err != nil {
				e2etest.Fatalf(t, "%v", err)
			}
			var logs string
			if err := c.Step("glibc client with 0.5% of UDP to kube-dns dropped", func() error {
				logs, err = c.RunPod(ctx, "default", "baseline-glibc", manifest)
				return err
			}); err != nil {
				e2etest.Fatalf(t, "%v", err)
			}
			res, err := clients.ParseResult([]byte(logs))
			if err != nil {
				e2etest.Fatalf(t, "%v", err)
			}
			t.Logf("glibc with drops: %s", res)
			if res.Over1s == 0 {
				e2etest.Errorf(t, "no lookup took 1 s or more with 0.5%% of the UDP packets dropped: the emulation does not work")
			}
			if err := remove(); err != nil {
				e2etest.Errorf(t, "%v", err)
			}
		})
	}
}

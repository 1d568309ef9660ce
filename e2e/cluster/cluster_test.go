package cluster_test

import (
	"fmt"
	"net/netip"
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
// kube-proxy mode, IPv6 single-stack in iptables mode and dual-stack in
// nftables mode (the localdns tests boot IPv4 in both modes), proves a pod
// has an address of each family and resolves through each kube-dns
// ClusterIP (and the forward to the fake upstream), runs the glibc, musl
// and Go load clients as pods through kube-dns, proves the race emulation
// bites through the primary family's ClusterIP, and checks that the
// teardown left nothing behind. It needs root, the provisioned binaries
// and about a minute per mode, so it runs only with LOCALDNS_E2E=1.
func TestClusterBootsResolvesAndTearsDown(t *testing.T) {
	ctx, repo := e2etest.Start(t)
	bins, err := clients.Build(repo, t.TempDir())
	if err != nil {
		e2etest.Fatalf(t, "build load clients: %v", err)
	}

	newConfig := func(t *testing.T, mode, families string) cluster.Config {
		cfg := cluster.DefaultConfig()
		// A fixed name, so a crashed earlier run's leftovers are found.
		cfg.Name = "localdns-e2e-test"
		cfg.ProxyMode = mode
		cfg.IPFamilies = families
		cfg.Progress = e2etest.LogWriter(t)
		return cfg
	}
	// Whatever a failed or filtered subtest left, nothing outlives the test.
	t.Cleanup(func() {
		c, err := cluster.Attach(newConfig(t, cluster.ProxyIPTables, cluster.IPv4))
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
		mode, families string
		crash          bool
	}{{cluster.ProxyIPTables, cluster.IPv6, true}, {cluster.ProxyNFTables, cluster.DualStack, false}} {
		mode := run.mode
		t.Run(mode+"-"+run.families, func(t *testing.T) {
			start := time.Now()
			c, err := cluster.Up(ctx, newConfig(t, mode, run.families))
			if err != nil {
				e2etest.Fatalf(t, "boot: %v", err)
			}
			t.Logf("boot (%s, %s) took %s", mode, run.families, time.Since(start).Round(100*time.Millisecond))
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
			if err := c.Step(fmt.Sprintf("pod resolves through kube-dns %v", c.KubeDNSIPs()), func() error {
				out, err = c.CheckDNS(ctx)
				return err
			}); err != nil {
				e2etest.Fatalf(t, "%v\nlogs in %s", err, c.LogsDir())
			}
			primary := c.Primary()
			wants := []string{
				"nameserver " + primary.KubeDNSIP.String() + "\n",                        // kubelet's clusterDNS
				"search default.svc." + cluster.ClusterDomain,                            // kubelet's search path
				"Name:\tcheck." + cluster.SlowZones[0].Name,                              // a slow external zone
				"Name:\tcheck." + cluster.NoCacheZone + "\nAddress: " + cluster.NoCacheA, // kube-dns's TTL 0 zone
			}
			for _, f := range c.Families() {
				wants = append(wants,
					"Server:\t\t"+f.KubeDNSIP.String()+"\n",                      // asked through each ClusterIP
					"Name:\tupstream.test\nAddress: "+f.UpstreamIP.String()+"\n") // forwarded to the fake upstream
			}
			// kubernetes.default via each ClusterIP: the primary family's
			// Service address, once per ClusterIP.
			if n := strings.Count(out, "Address: "+primary.APIServiceIP.String()+"\n"); n != len(c.Families()) {
				e2etest.Errorf(t, "dns check: %d answers of %s, want one per kube-dns ClusterIP:\n%s", n, primary.APIServiceIP, out)
			}
			for _, want := range wants {
				if !strings.Contains(out, want) {
					e2etest.Errorf(t, "dns check output lacks %q:\n%s", want, out)
				}
			}
			if err := checkPodAddresses(out, c.Families()); err != nil {
				e2etest.Errorf(t, "%v", err)
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
			// ClusterIP dropped (the primary family's, in the pods'
			// resolv.conf), glibc waits out its 5 s timeout. Each lookup
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

// checkPodAddresses finds in the dns check's output (`ip -o addr show dev
// eth0`) one address of each family, in its pod CIDR, and none other.
func checkPodAddresses(out string, families []cluster.Family) error {
	var addrs []netip.Prefix
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || (f[2] != "inet" && f[2] != "inet6") {
			continue
		}
		p, err := netip.ParsePrefix(f[3])
		if err != nil {
			return fmt.Errorf("pod address %q: %w", f[3], err)
		}
		if !p.Addr().IsLinkLocalUnicast() {
			addrs = append(addrs, p)
		}
	}
	if len(addrs) != len(families) {
		return fmt.Errorf("pod has addresses %v, want one per family %v:\n%s", addrs, families, out)
	}
	for _, f := range families {
		found := false
		for _, a := range addrs {
			found = found || (f.PodCIDR.Contains(a.Addr()) && a.Bits() == f.PodCIDR.Bits())
		}
		if !found {
			return fmt.Errorf("pod has no %s address in %s: %v", f.Name, f.PodCIDR, addrs)
		}
	}
	return nil
}

package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Cluster is a booted (or attached) single-node cluster.
type Cluster struct {
	cfg      Config
	families []Family // primary first
	runDir   string   // removed on Down
	logsDir  string   // kept until the next Up, for post-mortems
	prog     *progress
	seq      int           // start order of daemons, names their pid records
	images   *imageBuilder // made on first use
}

func newCluster(cfg Config) (*Cluster, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	families, err := familiesOf(cfg.IPFamilies)
	if err != nil {
		return nil, err
	}
	return &Cluster{
		cfg:      cfg,
		families: families,
		runDir:   filepath.Join(cfg.BaseDir, cfg.Name),
		logsDir:  filepath.Join(cfg.BaseDir, cfg.Name+"-logs"),
		prog:     newProgress(cfg.Progress),
	}, nil
}

// Attach returns the cluster of that name that an earlier Up left running
// (the CLI's `up`, then `kubectl` or `down` from other processes), with the
// IP families it booted with, whatever cfg says. Its Down also cleans up
// after a crashed run.
func Attach(cfg Config) (*Cluster, error) {
	c, err := newCluster(cfg)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(c.dir(ipFamiliesFile))
	if errors.Is(err, os.ErrNotExist) {
		return c, nil // never booted this far: only a cleanup has anything to do
	}
	if err != nil {
		return nil, fmt.Errorf("read the cluster's IP families: %w", err)
	}
	c.cfg.IPFamilies = strings.TrimSpace(string(b))
	if c.families, err = familiesOf(c.cfg.IPFamilies); err != nil {
		return nil, fmt.Errorf("%s: %w", c.dir(ipFamiliesFile), err)
	}
	return c, nil
}

// ipFamiliesFile, in the run directory, records Config.IPFamilies for Attach.
const ipFamiliesFile = "ip-families"

// Up removes whatever an earlier run of the same name left, then boots the
// cluster and waits until the node is Ready and kube-dns serves. On failure
// (or when ctx ends) it tears everything down before returning.
func Up(ctx context.Context, cfg Config) (*Cluster, error) {
	c, err := newCluster(cfg)
	if err != nil {
		return nil, err
	}
	if err := c.boot(ctx); err != nil {
		c.prog.printf("boot failed; logs in %s", c.logsDir)
		return nil, errors.Join(err, c.Down())
	}
	c.prog.printf("cluster %s up (%s): node %s Ready, kube-dns %s serving; logs in %s",
		c.cfg.Name, c.cfg.IPFamilies, c.cfg.Name, joinAddrs(c.KubeDNSIPs()), c.logsDir)
	return c, nil
}

func (c *Cluster) boot(ctx context.Context) error {
	steps := []struct {
		what string
		fn   func() error
	}{
		{"check binaries", c.cfg.checkBinaries},
		{"clean up leftovers of earlier runs", c.cleanup},
		{"write PKI and configuration", c.writeConfig},
		{"create node network namespace " + c.cfg.Name, c.createNode},
		{"build images (pause, busybox, coredns)", c.buildImages},
		{"start etcd, kube-apiserver, containerd", c.startCore},
		{"import images into containerd", func() error { return c.importImages(ctx) }},
		{"wait for kube-apiserver /readyz", func() error { return c.waitAPIServer(ctx) }},
		{"start controller-manager, scheduler, kubelet, kube-proxy (" + c.cfg.ProxyMode + ", " + c.cfg.IPFamilies + "), fake upstream", c.startNode},
		{"apply CoreDNS as kube-dns", func() error { return c.applyKubeDNS(ctx) }},
		{"wait for node Ready", func() error { return c.waitNodeReady(ctx) }},
		{"wait for kube-dns (2 replicas) ready", func() error { return c.waitKubeDNS(ctx) }},
		{"node reaches pods through a ClusterIP (the API server's path to webhooks)", func() error { return c.checkNodeToService(ctx) }},
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("interrupted before %s: %w", s.what, err)
		}
		if err := c.prog.step(s.what, s.fn); err != nil {
			return err
		}
	}
	return nil
}

// Down deletes the pods through the API (so the kubelet stops their
// containers and CNI releases their addresses), then stops every process
// and removes every trace of the cluster. It is safe to call twice.
func (c *Cluster) Down() error {
	var errs []error
	if _, err := os.Stat(c.netnsPath()); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if _, err := c.Kubectl(ctx, nil, "get", "--raw", "/readyz"); err != nil {
			// A crashed run: the forced cleanup below removes the containers.
			c.prog.printf("API server not ready, containers left to the forced cleanup: %v", err)
		} else {
			errs = append(errs, c.prog.step("delete workloads and pods", func() error { return c.deletePods(ctx) }))
		}
		cancel()
	}
	errs = append(errs, c.prog.step("stop processes and remove namespace, mounts, files", c.cleanup))
	return errors.Join(errs...)
}

// cleanup stops what a run (this one or a crashed earlier one of the same
// name) left: recorded daemons, then anything else
// in the node's or the pods' namespaces (shims, containers), then mounts,
// pod and node namespaces, and the run directory.
func (c *Cluster) cleanup() error {
	var errs []error
	recs, err := readDaemons(c.dir("pids"))
	errs = append(errs, err)
	// The state is thrown away, so no daemon needs another to stop cleanly:
	// all at once, with a short grace, except etcd, which goes last (the
	// API server's shutdown writes to it).
	var first, last []daemonRecord
	for _, r := range recs {
		if r.name == "etcd" {
			last = append(last, r)
		} else {
			first = append(first, r)
		}
	}
	errs = append(errs, c.stopAll(first), c.stopAll(last))
	errs = append(errs, killNetns(c.netnsPath()), c.removeContainers())
	errs = append(errs, unmountAll(c.runDir), c.removeNode(), c.removeContainerLogLinks())
	removeEmptyContainerCgroups()
	c.removeDaemonsCgroup()
	if err := os.RemoveAll(c.runDir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", c.runDir, err))
	}
	return errors.Join(append(errs, c.remains(recs))...)
}

// stopAll stops the daemons concurrently, so the slowest alone sets the pace.
func (c *Cluster) stopAll(recs []daemonRecord) error {
	errs := make([]error, len(recs))
	var wg sync.WaitGroup
	for i, r := range recs {
		wg.Go(func() {
			start := time.Now()
			errs[i] = r.stop(5 * time.Second)
			if took := time.Since(start); took > 2*time.Second {
				c.prog.printf("     %s (pid %d) took %s to stop", r.name, r.pid, took.Round(100*time.Millisecond))
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// remains reports what of the cluster still exists after a cleanup.
func (c *Cluster) remains(daemons []daemonRecord) error {
	var left []error
	for _, d := range daemons {
		if d.alive() {
			left = append(left, fmt.Errorf("%s (pid %d) still runs", d.name, d.pid))
		}
	}
	for _, path := range []string{c.netnsPath(), c.runDir} {
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			left = append(left, fmt.Errorf("%s still exists", path))
		}
	}
	if mounts, err := mountsUnder(c.runDir); err != nil || len(mounts) > 0 {
		left = append(left, fmt.Errorf("mounts left under %s: %v (%v)", c.runDir, mounts, err))
	}
	if len(left) > 0 {
		return fmt.Errorf("cleanup incomplete: %w", errors.Join(left...))
	}
	return nil
}

// removeContainerLogLinks removes the kubelet's symlinks in
// /var/log/containers (a fixed path) that point into this run.
func (c *Cluster) removeContainerLogLinks() error {
	const dir = "/var/log/containers"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil // no kubelet ever wrote here
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, c.runDir+"/") {
			if err := os.Remove(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeEmptyContainerCgroups removes the k8s.io cgroups containerd makes
// as the parent of containers (the kubelet runs with cgroupsPerQOS off).
// rmdir removes a cgroup only when no process and no child is left in it,
// so a cgroup still in use by another containerd is never touched.
func removeEmptyContainerCgroups() {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/k8s.io")
	for _, d := range dirs {
		_ = syscall.Rmdir(d)
	}
}

// Name is the cluster's name: its network namespace and its node.
func (c *Cluster) Name() string { return c.cfg.Name }

// NetnsPath is the node namespace, for `nsenter --net=`.
func (c *Cluster) NetnsPath() string { return c.netnsPath() }

// LogsDir holds every daemon's log; it outlives Down until the next Up.
func (c *Cluster) LogsDir() string { return c.logsDir }

// Kubeconfig is the admin kubeconfig; its server is reachable only inside
// the node namespace.
func (c *Cluster) Kubeconfig() string { return filepath.Join(c.runDir, "admin.kubeconfig") }

// Printf writes one line of the cluster's progress output (a heading).
func (c *Cluster) Printf(format string, args ...any) { c.prog.printf(format, args...) }

// Step runs fn as one reported step of the cluster's progress output.
func (c *Cluster) Step(what string, fn func() error) error { return c.prog.step(what, fn) }

func (c *Cluster) netnsPath() string          { return filepath.Join("/var/run/netns", c.cfg.Name) }
func (c *Cluster) dir(name string) string     { return filepath.Join(c.runDir, name) }
func (c *Cluster) logPath(name string) string { return filepath.Join(c.logsDir, name+".log") }
func (c *Cluster) containerdSocket() string {
	return filepath.Join(c.runDir, "containerd", "containerd.sock")
}
func (c *Cluster) k8sBin(name string) string { return filepath.Join(c.cfg.K8sBinDir, name) }

// writeConfig makes the run and log directories, the PKI, kubeconfigs and
// every daemon's configuration.
func (c *Cluster) writeConfig() error {
	if err := os.RemoveAll(c.logsDir); err != nil {
		return fmt.Errorf("clear old logs: %w", err)
	}
	for _, d := range []string{c.logsDir, c.dir("pids"), c.dir("pki"), c.dir("etcd"), c.dir("containerd"),
		c.dir("runc"), c.dir("cni/net.d"), c.dir("cni/ipam"), c.dir("kubelet"),
		c.dir("pod-logs"), c.dir("volume-plugins"), c.dir("images")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("make %s: %w", d, err)
		}
	}
	pki := c.dir("pki")
	ca, err := newAuthority(c.cfg.Name)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(pki, "ca.crt"), ca.pem, 0o644); err != nil {
		return fmt.Errorf("write CA: %w", err)
	}
	// The controller-manager signs CertificateSigningRequests with it.
	if err := os.WriteFile(filepath.Join(pki, "ca.key"), ca.keyPEM, 0o600); err != nil {
		return fmt.Errorf("write CA key: %w", err)
	}
	if _, err := ca.issue(pki, "apiserver", certRequest{
		commonName: "kube-apiserver",
		server:     true,
		ips:        c.apiServerIPs(),
		dnsNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc." + ClusterDomain},
	}); err != nil {
		return err
	}
	if err := writeServiceAccountKeys(filepath.Join(pki, "sa.key"), filepath.Join(pki, "sa.pub")); err != nil {
		return err
	}
	// Client identities the default RBAC roles and the Node authorizer know.
	clients := []struct {
		file, user string
		orgs       []string
	}{
		{"admin", "localdns-e2e-admin", []string{"system:masters"}},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}},
		{"controller-manager", "system:kube-controller-manager", nil},
		{"scheduler", "system:kube-scheduler", nil},
		{"kube-proxy", "system:kube-proxy", nil},
		{"kubelet", "system:node:" + c.cfg.Name, []string{"system:nodes"}},
	}
	for _, cl := range clients {
		id, err := ca.issue(pki, cl.file, certRequest{commonName: cl.user, orgs: cl.orgs})
		if err != nil {
			return err
		}
		if cl.file == "apiserver-kubelet-client" {
			continue // a client certificate of the API server itself, no kubeconfig
		}
		if err := renderFile("kubeconfig.tmpl", c.dir(cl.file+".kubeconfig"), kubeconfigData{
			Name: c.cfg.Name, Server: c.apiServer(), User: cl.user,
			CAPEM: ca.pem, CertPEM: id.certPEM, KeyPEM: id.keyPEM,
		}); err != nil {
			return err
		}
	}
	data := c.templateData()
	for tmpl, out := range map[string]string{
		"containerd.toml.tmpl":   c.dir("containerd.toml"),
		"cni.conflist.tmpl":      c.dir("cni/net.d/10-pods.conflist"),
		"kubelet.yaml.tmpl":      c.dir("kubelet.yaml"),
		"kube-proxy.yaml.tmpl":   c.dir("kube-proxy.yaml"),
		"upstream.Corefile.tmpl": c.dir("upstream.Corefile"),
		"big.zone.tmpl":          c.dir("big.zone"),
	} {
		if err := renderFile(tmpl, out, data); err != nil {
			return err
		}
	}
	resolv := "# the e2e node's only resolver: the fake upstream inside the node\n"
	for _, f := range c.families {
		resolv += "nameserver " + f.UpstreamIP.String() + "\n"
	}
	if err := os.WriteFile(c.dir("resolv.conf"), []byte(resolv), 0o644); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	if err := os.WriteFile(c.dir(ipFamiliesFile), []byte(c.cfg.IPFamilies+"\n"), 0o644); err != nil {
		return fmt.Errorf("record IP families: %w", err)
	}
	return nil
}

// apiServerIPs are the API server certificate's addresses: the node's and
// the kubernetes Service's of every family, and loopback.
func (c *Cluster) apiServerIPs() []net.IP {
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, f := range c.families {
		ips = append(ips, net.IP(f.NodeIP.AsSlice()), net.IP(f.APIServiceIP.AsSlice()))
	}
	return ips
}

// apiServer is the API server's address for the node's clients: the node's
// primary IP, where it advertises itself.
func (c *Cluster) apiServer() string {
	return net.JoinHostPort(c.Primary().NodeIP.String(), "6443")
}

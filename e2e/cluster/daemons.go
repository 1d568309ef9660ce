package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// startCore starts the daemons that need nothing else running: etcd, the
// API server and containerd.
func (c *Cluster) startCore() error {
	if err := c.shareCPULikeANode(); err != nil {
		c.prog.printf("     CPU shared as the machine's scheduler likes, not as on a node: %v", err)
	}
	pki := c.dir("pki")
	local := "http://127.0.0.1:2379"
	if err := c.startDaemon("etcd", "/usr/bin/etcd",
		"--name="+c.cfg.Name, "--data-dir="+c.dir("etcd"),
		"--listen-client-urls="+local, "--advertise-client-urls="+local,
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster="+c.cfg.Name+"=http://127.0.0.1:2380",
		"--listen-metrics-urls=http://127.0.0.1:2381", "--log-level=warn"); err != nil {
		return err
	}
	if err := c.startDaemon("kube-apiserver", c.k8sBin("kube-apiserver"),
		"--etcd-servers="+local,
		// "::" takes IPv4 too (a dual-stack socket).
		"--advertise-address="+c.Primary().NodeIP.String(), "--bind-address=::", "--secure-port=6443",
		"--service-cluster-ip-range="+c.serviceCIDRs(),
		"--client-ca-file="+filepath.Join(pki, "ca.crt"),
		"--tls-cert-file="+filepath.Join(pki, "apiserver.crt"),
		"--tls-private-key-file="+filepath.Join(pki, "apiserver.key"),
		"--kubelet-client-certificate="+filepath.Join(pki, "apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+filepath.Join(pki, "apiserver-kubelet-client.key"),
		// Else it resolves the node's name through the machine's resolver.
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc."+ClusterDomain,
		"--service-account-key-file="+filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(pki, "sa.key"),
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true", "--profiling=false", "--v=1"); err != nil {
		return err
	}
	return c.startDaemon("containerd", "/usr/bin/containerd", "--config="+c.dir("containerd.toml"))
}

// startNode starts the daemons that need the API server, and the fake
// upstream resolver.
func (c *Cluster) startNode() error {
	pki := c.dir("pki")
	daemons := []struct {
		name string
		argv []string
	}{
		{"kube-controller-manager", append([]string{c.k8sBin("kube-controller-manager"),
			"--kubeconfig=" + c.dir("controller-manager.kubeconfig"),
			"--authentication-kubeconfig=" + c.dir("controller-manager.kubeconfig"),
			"--authorization-kubeconfig=" + c.dir("controller-manager.kubeconfig"),
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + filepath.Join(pki, "sa.key"),
			"--root-ca-file=" + filepath.Join(pki, "ca.crt"),
			"--cluster-signing-cert-file=" + filepath.Join(pki, "ca.crt"),
			"--cluster-signing-key-file=" + filepath.Join(pki, "ca.key"),
			"--leader-elect=false", "--bind-address=127.0.0.1", "--v=1"}, c.nodeIPAMFlags()...)},
		{"kube-scheduler", []string{c.k8sBin("kube-scheduler"),
			"--kubeconfig=" + c.dir("scheduler.kubeconfig"),
			"--authentication-kubeconfig=" + c.dir("scheduler.kubeconfig"),
			"--authorization-kubeconfig=" + c.dir("scheduler.kubeconfig"),
			"--leader-elect=false", "--bind-address=127.0.0.1", "--v=1"}},
		{"kubelet", []string{c.k8sBin("kubelet"),
			"--config=" + c.dir("kubelet.yaml"),
			"--kubeconfig=" + c.dir("kubelet.kubeconfig"),
			"--hostname-override=" + c.cfg.Name, "--node-ip=" + c.nodeIPs(),
			"--root-dir=" + c.dir("kubelet"), "--v=1"}},
		{"kube-proxy", []string{c.k8sBin("kube-proxy"), "--config=" + c.dir("kube-proxy.yaml"), "--v=1"}},
		{upstreamDaemon, []string{c.cfg.CoreDNSBinary, "-conf", c.dir("upstream.Corefile")}},
	}
	for _, d := range daemons {
		if err := c.startDaemon(d.name, d.argv...); err != nil {
			return err
		}
	}
	return nil
}

// serviceCIDRs is the API server's --service-cluster-ip-range: the Service
// CIDR of each family, primary first.
func (c *Cluster) serviceCIDRs() string {
	return joinFamilies(c.families, func(f Family) string { return f.ServiceCIDR.String() })
}

// nodeIPs is the kubelet's --node-ip: the node's address of each family.
func (c *Cluster) nodeIPs() string {
	return joinFamilies(c.families, func(f Family) string { return f.NodeIP.String() })
}

// nodeIPAMFlags make the controller-manager allocate the node its pod
// CIDRs (spec.podCIDRs), as kubeadm clusters do: the cluster CIDR of each
// family is the one node's whole range (the node mask is its length), the
// range the CNI's host-local IPAM hands out. Each family's mask flag is
// given alone: the controller-manager refuses a family's flag in a cluster
// without that family.
func (c *Cluster) nodeIPAMFlags() []string {
	flags := []string{"--allocate-node-cidrs=true",
		"--cluster-cidr=" + joinFamilies(c.families, func(f Family) string { return f.PodCIDR.String() }),
		"--service-cluster-ip-range=" + c.serviceCIDRs()}
	for _, f := range c.families {
		flags = append(flags, fmt.Sprintf("--node-cidr-mask-size-%s=%d", strings.ToLower(f.Name), f.PodCIDR.Bits()))
	}
	return flags
}

func joinFamilies(families []Family, field func(Family) string) string {
	return strings.Join(collect(families, field), ",")
}

// buildImages builds (or takes from the cache) the pause, busybox and
// CoreDNS images and links them into the run directory for import.
func (c *Cluster) buildImages() error {
	applets, err := exec.Command(c.cfg.BusyboxBinary, "--list").Output()
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	links := map[string]string{}
	for _, a := range strings.Fields(string(applets)) {
		if a != "busybox" {
			links["/bin/"+a] = "busybox"
		}
	}
	busybox := map[string]string{"/bin/busybox": c.cfg.BusyboxBinary}
	specs := []ImageSpec{
		// The pod sandbox only holds the namespaces, and a container that
		// only idles (the uninstall's cleanup DaemonSet) runs it too: as the
		// real pause does, it sleeps and exits at once on SIGTERM. A process
		// that is PID 1 of its namespace ignores what it does not handle:
		// a bare sleep would wait out the pod's 30 s grace period.
		{Ref: PauseImage, Entrypoint: []string{"/bin/busybox", "sh", "-c", pauseScript}, Files: busybox},
		{Ref: BusyboxImage, Entrypoint: []string{"/bin/sh"}, Files: busybox, Symlinks: links},
		{Ref: CoreDNSImage, Entrypoint: []string{"/coredns"}, Files: map[string]string{"/coredns": c.cfg.CoreDNSBinary}},
	}
	b, err := c.imageBuilder()
	if err != nil {
		return err
	}
	for i, s := range specs {
		tarball, err := b.build(s)
		if err != nil {
			return err
		}
		if err := os.Symlink(tarball, filepath.Join(c.dir("images"), fmt.Sprintf("%d.tar", i))); err != nil {
			return fmt.Errorf("link image %s: %w", s.Ref, err)
		}
	}
	return b.prune()
}

// pauseScript idles until SIGTERM or SIGINT, then exits 0.
const pauseScript = "trap 'exit 0' TERM INT; /bin/busybox sleep 2147483647 & wait"

// imageBuilder compiles hack/imagebuild once per cluster.
func (c *Cluster) imageBuilder() (*imageBuilder, error) {
	if c.images == nil {
		b, err := newImageBuilder(c.cfg.RepoDir, c.runDir, filepath.Join(c.cfg.BaseDir, "image-cache"))
		if err != nil {
			return nil, err
		}
		c.images = b
	}
	return c.images, nil
}

// BuildAndImport builds images (cached across runs) and imports them into
// the node's containerd: the load clients, later the product's images.
func (c *Cluster) BuildAndImport(ctx context.Context, specs ...ImageSpec) error {
	b, err := c.imageBuilder()
	if err != nil {
		return err
	}
	for _, s := range specs {
		tarball, err := b.build(s)
		if err != nil {
			return err
		}
		if err := c.ImportImages(ctx, tarball); err != nil {
			return err
		}
	}
	return nil
}

// ctr runs containerd's client against the node's containerd.
func (c *Cluster) ctr(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{"--address", c.containerdSocket(), "--namespace", "k8s.io"}, args...)
	out, err := exec.CommandContext(ctx, "/usr/bin/ctr", argv...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// importImages waits for containerd, then imports every built image and
// any extra tarballs (the product's images, later).
func (c *Cluster) importImages(ctx context.Context) error {
	if err := c.waitFor(ctx, "containerd", func(ctx context.Context) error {
		_, err := c.ctr(ctx, "version")
		return err
	}); err != nil {
		return err
	}
	tars, err := filepath.Glob(filepath.Join(c.dir("images"), "*.tar"))
	if err != nil {
		return err
	}
	return c.ImportImages(ctx, tars...)
}

// ImportImages imports docker-archive or OCI tarballs into the node's
// containerd (namespace k8s.io, where the kubelet looks).
func (c *Cluster) ImportImages(ctx context.Context, tars ...string) error {
	for _, t := range tars {
		if _, err := c.ctr(ctx, "images", "import", t); err != nil {
			return err
		}
	}
	return nil
}

// TagImage gives an imported image a second name in the node's containerd
// (an image the manifests name, like the kubelet's usual pause image).
func (c *Cluster) TagImage(ctx context.Context, src, dst string) error {
	_, err := c.ctr(ctx, "images", "tag", "--force", src, dst)
	return err
}

// PodResolvConf returns the resolv.conf that the kubelet had containerd
// write for the pod with that UID: its sandbox's file, which every
// container of the pod mounts as /etc/resolv.conf. It outlives the
// containers, so a finished pod's can still be read.
func (c *Cluster) PodResolvConf(ctx context.Context, podUID string) (string, error) {
	out, err := c.ctr(ctx, "containers", "list", "-q",
		`labels."io.cri-containerd.kind"==sandbox,labels."io.kubernetes.pod.uid"==`+podUID)
	if err != nil {
		return "", err
	}
	ids := strings.Fields(out)
	if len(ids) != 1 {
		return "", fmt.Errorf("pod %s has %d sandboxes, want 1", podUID, len(ids))
	}
	b, err := os.ReadFile(filepath.Join(c.dir("containerd"), "root", "io.containerd.grpc.v1.cri", "sandboxes", ids[0], "resolv.conf"))
	if err != nil {
		return "", fmt.Errorf("read pod %s's resolv.conf: %w", podUID, err)
	}
	return string(b), nil
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/localdns/localdns/internal/systest"
)

// containerd is a real containerd (the version the e2e node runs), started
// by a test with its own root, state and socket under a temporary
// directory, and stopped at the test's end.
type containerd struct {
	t    *testing.T
	ctx  context.Context
	work string
	sock string
	logs *bytes.Buffer
}

// startContainerd starts containerd with only the content store, the image
// service and the overlayfs snapshotter (to unpack): the CRI plugin would
// start networking and must stay off.
func startContainerd(t *testing.T) *containerd {
	t.Helper()
	systest.RequireRoot(t)
	work := t.TempDir()
	c := &containerd{t: t, work: work, sock: filepath.Join(work, "containerd.sock"), logs: &bytes.Buffer{}}
	conf := filepath.Join(work, "config.toml")
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %[3]q
[ttrpc]
  address = "%[3]s.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q
`, filepath.Join(work, "root"), filepath.Join(work, "state"), c.sock, filepath.Join(work, "opt"))), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	daemon := exec.Command("containerd", "--config", conf)
	daemon.Stdout, daemon.Stderr = c.logs, c.logs
	if err := daemon.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()
	t.Cleanup(func() {
		_ = daemon.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = daemon.Process.Kill()
			<-exited
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	c.ctx = ctx
	// containerd's readiness signal is its socket answering; poll it
	// with the client itself, bounded by ctx.
	for {
		if err := exec.CommandContext(ctx, "ctr", "--address", c.sock, "version").Run(); err == nil {
			return c
		}
		select {
		case err := <-exited:
			t.Fatalf("containerd exited: %v\n%s", err, c.logs.String())
		case <-ctx.Done():
			t.Fatalf("containerd did not answer: %v\n%s", ctx.Err(), c.logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ctr runs the containerd client in the kubelet's namespace, failing the
// test when it fails; it returns the output.
func (c *containerd) ctr(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(c.ctx, "ctr", append([]string{"--address", c.sock, "--namespace", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s\ncontainerd log:\n%s", strings.Join(args, " "), err, out, c.logs.String())
	}
	return string(out)
}

// importProductImages imports every product image tarball, as the e2e
// install does.
func (c *containerd) importProductImages(t *testing.T) {
	t.Helper()
	dir := buildProductImages(t)
	for _, p := range productImages(productConfig{tag: "test", repository: "localdns"}) {
		c.ctr(t, "images", "import", filepath.Join(dir, p.file))
	}
}

// TestContainerdImports imports every image into a real containerd and
// checks each is listed under its name, complete and unpacked.
func TestContainerdImports(t *testing.T) {
	c := startContainerd(t)
	c.importProductImages(t)
	images := productImages(productConfig{tag: "test", repository: "localdns"})
	listed := strings.Fields(c.ctr(t, "images", "ls", "-q"))
	for _, p := range images {
		if want := "docker.io/" + p.spec.ref.String(); !slices.Contains(listed, want) {
			t.Errorf("containerd lists %q, want %s among them", listed, want)
		}
	}
	if out := c.ctr(t, "images", "check"); strings.Count(out, "complete") != len(images) {
		t.Errorf("images not complete and unpacked:\n%s", out)
	}

	// Run the node cache image's iptables under runc with exactly the
	// capabilities the DaemonSet grants, a read-only root and the default
	// seccomp profile, in the container's own network namespace: proof that
	// those capabilities are enough for both backends.
	caps := daemonSetCapabilities(t)
	for i, backend := range []string{"nft", "legacy"} {
		t.Run("iptables-"+backend+" with the DaemonSet's capabilities", func(t *testing.T) {
			lock := filepath.Join(c.work, "xtables.lock")
			if err := os.WriteFile(lock, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"run", "--rm", "--read-only", "--seccomp",
				"--mount", "type=bind,src=" + lock + ",dst=/run/xtables.lock,options=rbind:rw"}
			for _, c := range runcDefaultCapabilities {
				if !slices.Contains(caps, c) {
					args = append(args, "--cap-drop", "CAP_"+c)
				}
			}
			for _, c := range caps {
				args = append(args, "--cap-add", "CAP_"+c)
			}
			args = append(args, "docker.io/localdns/nodecache:test", fmt.Sprintf("localdns-imagebuild-test-%d-%d", os.Getpid(), i), // runc's state directory is shared with any other containerd
				"/usr/sbin/iptables-"+backend, "-w", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "53", "-j", "NOTRACK")
			c.ctr(t, args...)
		})
	}
}

// runcDefaultCapabilities is the set ctr run grants by default (containerd's
// default spec); the test drops those the DaemonSet does not add.
var runcDefaultCapabilities = []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
	"SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}

// daemonSetCapabilities reads the capabilities the node cache DaemonSet adds
// (after dropping ALL) from the manifests.
func daemonSetCapabilities(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("../../manifests/base/nodecache.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.Unmarshal(raw, &ds); err != nil {
		t.Fatal(err)
	}
	sc := ds.Spec.Template.Spec.Containers[0].SecurityContext
	if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Fatalf("the DaemonSet's container must drop ALL capabilities: %+v", sc)
	}
	var caps []string
	for _, c := range sc.Capabilities.Add {
		caps = append(caps, string(c))
	}
	return caps
}

// ociCapabilities are a container process's capability sets in its OCI
// runtime spec (inheritable and ambient stay empty, as Kubernetes leaves
// them).
type ociCapabilities struct {
	Bounding  []string `json:"bounding"`
	Effective []string `json:"effective"`
	Permitted []string `json:"permitted"`
}

// TestStubFileCapabilityUnderRunc runs the stub images under runc as uid
// 65532 with no_new_privs and the capability sets a runtime gives the stub
// container the webhook injects (drop ALL, add NET_BIND_SERVICE,
// allowPrivilegeEscalation false), with the kernel's default
// ip_unprivileged_port_start (1024), on the rootfs containerd unpacked from
// the image tarballs: the file capability binds 127.0.0.1:53, its absence
// does not, and the cases where the file capability cannot help fail as
// docs/deploy.md says.
func TestStubFileCapabilityUnderRunc(t *testing.T) {
	c := startContainerd(t)
	c.importProductImages(t)
	netBind := []string{"CAP_NET_BIND_SERVICE"}
	tests := []struct {
		name  string
		image string
		caps  ociCapabilities
		// want is "serves", or the error the stub or runc fails with.
		want string
	}{
		// containerd's CRI: drop ALL empties the three sets, add puts the
		// capability in each, whatever the user (internal/cri/opts
		// WithCapabilities, pkg/oci WithAddedCapabilities).
		{name: "file capability, containerd's sets", image: "stub-filecap", caps: ociCapabilities{netBind, netBind, netBind}, want: "serves"},
		{name: "no file capability, containerd's sets", image: "stub", caps: ociCapabilities{netBind, netBind, netBind}, want: "permission denied"},
		// The capability outside the bounding set (drop ALL, nothing
		// added): the kernel refuses to execute a binary whose file
		// capability it cannot grant in full.
		{name: "file capability, capability not added", image: "stub-filecap", caps: ociCapabilities{}, want: "operation not permitted"},
		// Docker (and so cri-dockerd) empties the permitted and effective
		// sets of a non-root user; no_new_privs then keeps execve from
		// raising them.
		{name: "file capability, Docker's non-root sets", image: "stub-filecap", caps: ociCapabilities{Bounding: netBind}, want: "permission denied"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rootfs := c.mountImage(t, "docker.io/localdns/"+tt.image+":test")
			assertFileCapability(t, filepath.Join(rootfs, "localdns-stub"), tt.image == "stub-filecap")
			r := newRuncContainer(t, fmt.Sprintf("localdns-imagebuild-filecap-%d-%d", os.Getpid(), i), rootfs, tt.caps)
			if tt.want != "serves" {
				out, err := r.run()
				if err == nil || !strings.Contains(out, tt.want) {
					t.Fatalf("runc run: %v, want a failure with %q:\n%s", err, tt.want, out)
				}
				t.Logf("runc run: %v: %s", err, out)
				return
			}
			stub := r.start()
			systest.WaitFor(t, "the stub's probe to pass inside the container", func() (bool, string) {
				out, err := r.exec("/localdns-stub", "probe", "--listen", "127.0.0.1:53")
				return err == nil, out + stub.Logs()
			})
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.pid()))
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"Uid:\t65532\t65532\t65532\t65532", "CapEff:\t0000000000000400", "NoNewPrivs:\t1"} {
				if !strings.Contains(string(status), want) {
					t.Errorf("/proc/<stub>/status lacks %q:\n%s", want, status)
				}
			}
			if code := stub.Terminate(t); code != 0 {
				t.Errorf("exit status %d after SIGTERM, want 0%s", code, stub.Logs())
			}
		})
	}
}

// mountImage mounts a writable snapshot of the image's unpacked rootfs
// (the layer as containerd unpacked it), as a container's rootfs is, and
// returns its path; unmounted and removed at cleanup.
func (c *containerd) mountImage(t *testing.T, ref string) string {
	t.Helper()
	target := t.TempDir()
	c.ctr(t, "images", "mount", "--rw", ref, target)
	t.Cleanup(func() { c.ctr(t, "images", "unmount", "--rm", target) })
	return target
}

// assertFileCapability checks the file's security.capability attribute as
// containerd set it when unpacking.
func assertFileCapability(t *testing.T, file string, want bool) {
	t.Helper()
	buf := make([]byte, 64)
	n, err := unix.Getxattr(file, xattrCapability, buf)
	switch {
	case want && err != nil:
		t.Fatalf("%s has no file capability: %v", file, err)
	case want && !bytes.Equal(buf[:n], netBindServiceXattr):
		t.Fatalf("%s: file capability % x, want % x", file, buf[:n], netBindServiceXattr)
	case !want && err != unix.ENODATA:
		t.Fatalf("%s: file capability % x (%v), want none", file, buf[:max(n, 0)], err)
	}
}

// runcContainer is an OCI bundle run by runc with a state directory of its
// own; it is deleted at cleanup whatever state it is in.
type runcContainer struct {
	t         *testing.T
	id        string
	stateRoot string
	bundle    string
}

// newRuncContainer writes a bundle for the stub on rootfs: runc's default
// spec (own namespaces, network included with only loopback; masked and
// read-only /proc paths), as uid and gid 65532 without supplementary
// groups, no_new_privs, a read-only root, the given capability sets.
func newRuncContainer(t *testing.T, id, rootfs string, caps ociCapabilities) *runcContainer {
	t.Helper()
	r := &runcContainer{t: t, id: id, stateRoot: t.TempDir(), bundle: t.TempDir()}
	systest.Run(t, "runc", "spec", "--bundle", r.bundle)
	specFile := filepath.Join(r.bundle, "config.json")
	raw, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	process := spec["process"].(map[string]any)
	process["terminal"] = false
	process["user"] = map[string]any{"uid": 65532, "gid": 65532}
	// As the webhook injects it, less --fallback and --cluster-domain;
	// nothing answers at the node cache address: the stub answers SERVFAIL,
	// which is an answer to its probe.
	process["args"] = []string{"/localdns-stub", "--listen", "127.0.0.1:53", "--node-cache", "127.0.0.2:53"}
	process["capabilities"] = caps
	process["noNewPrivileges"] = true
	spec["root"] = map[string]any{"path": rootfs, "readonly": true}
	if raw, err = json.Marshal(spec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(specFile, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = exec.Command("runc", "--root", r.stateRoot, "delete", "--force", r.id).Run()
	})
	return r
}

func (r *runcContainer) runArgs() []string {
	return []string{"runc", "--root", r.stateRoot, "run", "--bundle", r.bundle, r.id}
}

// run runs the container to its end (bounded), returning its output.
func (r *runcContainer) run() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := r.runArgs()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	return string(out), err
}

// start starts the container in the foreground of a runc process, which
// passes signals on to the container's process.
func (r *runcContainer) start() *systest.Process {
	return systest.Start(r.t, "runc run "+r.id, r.runArgs()...)
}

// exec runs a command in the running container (its user, capabilities
// and namespaces).
func (r *runcContainer) exec(argv ...string) (string, error) {
	out, err := exec.Command("runc", append([]string{"--root", r.stateRoot, "exec", r.id}, argv...)...).CombinedOutput()
	return string(out), err
}

// pid is the container's process on the host.
func (r *runcContainer) pid() int {
	r.t.Helper()
	var state struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(systest.Run(r.t, "runc", "--root", r.stateRoot, "state", r.id)), &state); err != nil {
		r.t.Fatal(err)
	}
	return state.Pid
}

package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func TestParseLdd(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    []string
		wantErr bool
	}{
		{
			name: "glibc binary",
			out: "\tlinux-vdso.so.1 (0x00007ffd)\n" +
				"\tlibxtables.so.12 => /lib/x86_64-linux-gnu/libxtables.so.12 (0x00007f1f)\n" +
				"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1f)\n" +
				"\t/lib64/ld-linux-x86-64.so.2 (0x00007f1f)\n",
			want: []string{"/lib/x86_64-linux-gnu/libxtables.so.12", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"},
		},
		{name: "static", out: "\tstatically linked\n", want: nil},
		{name: "missing library", out: "\tlibgone.so.1 => not found\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLdd(tt.out)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNormalizeRef(t *testing.T) {
	tests := []struct {
		ref, want string
		wantErr   bool
	}{
		{ref: "localdns/stub:dev", want: "docker.io/localdns/stub:dev"},
		{ref: "busybox", want: "docker.io/library/busybox:latest"},
		{ref: "registry.k8s.io/pause:3.10", want: "registry.k8s.io/pause:3.10"},
		{ref: "localhost:5000/x/y:1", want: "localhost:5000/x/y:1"},
		{ref: "localhost/x", want: "localhost/x:latest"},
		{ref: "", wantErr: true},
		{ref: "Upper/case:dev", wantErr: true},
		{ref: "a/b:bad tag", wantErr: true},
	}
	for _, tt := range tests {
		got, err := normalizeRef(tt.ref)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("normalizeRef(%q) = %q, %v; want %q, error %v", tt.ref, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseFlags(t *testing.T) {
	ok := []string{"-o", "x.tar", "-ref", "a/b:c", "-entrypoint", "/b"}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "minimal", args: ok},
		{name: "everything", args: append(slices.Clone(ok), "-user", "1:1", "-add", "/etc/hosts:/etc/hosts",
			"-add-with-libs", "/bin/true:/bin/true", "-symlink", "/x=/b", "-env", "A=B", "-etc-passwd")},
		{name: "product", args: []string{"-product", "-tag", "v1.2.3"}},
		{name: "no output", args: []string{"-ref", "a/b:c", "-entrypoint", "/b"}, wantErr: "-o is required"},
		{name: "no entrypoint", args: []string{"-o", "x.tar", "-ref", "a/b:c"}, wantErr: "-entrypoint is required"},
		{name: "relative destination", args: append(slices.Clone(ok), "-add", "a:b"), wantErr: "DST must be absolute"},
		{name: "bad symlink", args: append(slices.Clone(ok), "-symlink", "/x"), wantErr: "want DST=TARGET"},
		{name: "bad env", args: append(slices.Clone(ok), "-env", "=v"), wantErr: "want K=V"},
		{name: "bad platform", args: append(slices.Clone(ok), "-platform", "linux"), wantErr: "want os/arch"},
		{name: "bad tag", args: []string{"-product", "-tag", "a:b"}, wantErr: "plain tag"},
		{name: "stray argument", args: append(slices.Clone(ok), "extra"), wantErr: "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.args, io.Discard)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestBuildLayerFollowsSourceLinks adds a host symbolic link (as Debian's
// /usr/sbin/iptables is) and a directory holding one: the top-level source
// is followed, links inside the directory stay links.
func TestBuildLayerFollowsSourceLinks(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(dir, "tree"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "tree", "prog"), []byte("program"), 0o755))
	must(os.Symlink("prog", filepath.Join(dir, "tree", "alias")))
	must(os.Symlink(filepath.Join(dir, "tree", "prog"), filepath.Join(dir, "link")))
	l, err := buildLayer(imageSpec{copies: []copySpec{
		{src: filepath.Join(dir, "link"), dst: "/usr/bin/prog"},
		{src: filepath.Join(dir, "tree"), dst: "/opt/tree"},
	}})
	must(err)
	tests := []struct {
		path     string
		typeflag byte
		linkname string
	}{
		{"/usr/bin/prog", tar.TypeReg, ""},
		{"/usr/bin", tar.TypeDir, ""},
		{"/opt/tree/prog", tar.TypeReg, ""},
		{"/opt/tree/alias", tar.TypeSymlink, "prog"},
	}
	for _, tt := range tests {
		e, ok := l.entries[tt.path]
		if !ok || e.typeflag != tt.typeflag || e.linkname != tt.linkname {
			t.Errorf("%s: %+v, want type %c link %q", tt.path, e, tt.typeflag, tt.linkname)
		}
	}
	if err := l.put("/usr/bin/prog", &entry{typeflag: tar.TypeReg, data: []byte("other")}); err == nil {
		t.Error("adding a different file at the same path succeeded")
	}
}

// image is a parsed image tarball.
type image struct {
	size     int64
	index    index
	docker   []dockerManifest
	config   imageConfig
	layerGz  int64
	layerTar int64                  // uncompressed
	files    map[string]*tar.Header // layer paths, absolute
	contents map[string][]byte      // regular files of the layer
}

// readImage parses an image tarball and checks that it is internally
// consistent: every blob's digest matches its content, the index, Docker
// manifest and OCI manifest name the same config and layer.
func readImage(t *testing.T, p string) image {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatalf("image tarball missing: %v", err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		entries[hdr.Name] = b
	}
	for name, b := range entries {
		if hexDigest, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && hexDigest != "" {
			sum := sha256.Sum256(b)
			if hex.EncodeToString(sum[:]) != hexDigest {
				t.Fatalf("%s: blob %s does not match its digest", p, name)
			}
		}
	}
	blobOf := func(d descriptor) []byte {
		b, ok := entries["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok || int64(len(b)) != d.Size {
			t.Fatalf("%s: blob %s missing or of the wrong size", p, d.Digest)
		}
		return b
	}
	img := image{size: st.Size(), files: map[string]*tar.Header{}, contents: map[string][]byte{}}
	mustUnmarshal(t, entries["index.json"], &img.index)
	mustUnmarshal(t, entries["manifest.json"], &img.docker)
	if string(entries["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Fatalf("%s: oci-layout = %q", p, entries["oci-layout"])
	}
	if len(img.index.Manifests) != 1 || len(img.docker) != 1 {
		t.Fatalf("%s: want one manifest, index has %d, manifest.json %d", p, len(img.index.Manifests), len(img.docker))
	}
	var m manifest
	mustUnmarshal(t, blobOf(img.index.Manifests[0]), &m)
	mustUnmarshal(t, blobOf(m.Config), &img.config)
	if len(m.Layers) != 1 {
		t.Fatalf("%s: %d layers, want 1", p, len(m.Layers))
	}
	if d := img.docker[0]; d.Config != "blobs/sha256/"+strings.TrimPrefix(m.Config.Digest, "sha256:") ||
		!slices.Equal(d.Layers, []string{"blobs/sha256/" + strings.TrimPrefix(m.Layers[0].Digest, "sha256:")}) {
		t.Fatalf("%s: manifest.json %+v disagrees with the OCI manifest %+v", p, d, m)
	}
	gz := blobOf(m.Layers[0])
	img.layerGz = int64(len(gz))
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	layerTar, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	img.layerTar = int64(len(layerTar))
	sum := sha256.Sum256(layerTar)
	if want := "sha256:" + hex.EncodeToString(sum[:]); !slices.Equal(img.config.RootFS.DiffIDs, []string{want}) {
		t.Fatalf("%s: diff_ids %q, want [%s]", p, img.config.RootFS.DiffIDs, want)
	}
	lr := tar.NewReader(bytes.NewReader(layerTar))
	for {
		hdr, err := lr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := path.Clean("/" + hdr.Name)
		img.files[name] = hdr
		if hdr.Typeflag == tar.TypeReg {
			if img.contents[name], err = io.ReadAll(lr); err != nil {
				t.Fatal(err)
			}
		}
	}
	return img
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("unmarshal %T: %v", v, err)
	}
}

// resolve follows symbolic links inside the image and returns the final
// path, failing when a link dangles.
func (img image) resolve(t *testing.T, p string) string {
	t.Helper()
	for range 40 {
		hdr, ok := img.files[p]
		if !ok {
			t.Fatalf("%s is not in the image", p)
		}
		if hdr.Typeflag != tar.TypeSymlink {
			return p
		}
		if path.IsAbs(hdr.Linkname) {
			p = hdr.Linkname
		} else {
			p = path.Join(path.Dir(p), hdr.Linkname)
		}
	}
	t.Fatalf("%s: symbolic link loop", p)
	return ""
}

// scratch holds what the tests build once and share; TestMain removes it.
var scratch string

func TestMain(m *testing.M) {
	var err error
	if scratch, err = os.MkdirTemp("", "imagebuild-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(scratch)
	os.Exit(code)
}

// buildBinaries compiles the three binaries the way the Makefile does, once
// per test run.
var buildBinaries = sync.OnceValues(func() (string, error) {
	root, err := filepath.Abs("../..")
	if err != nil {
		return "", err
	}
	binDir := filepath.Join(scratch, "bin")
	for _, name := range []string{"localdns-nodecache", "localdns-webhook", "localdns-stub"} {
		cmd := exec.Command("go", "build", "-trimpath",
			"-ldflags", "-s -w -X github.com/localdns/localdns/internal/version.Version=test",
			"-o", filepath.Join(binDir, name), "./cmd/"+name)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build %s: %w\n%s", name, err, out)
		}
	}
	return binDir, nil
})

// buildImagesInto builds the product images into dir, as `make images` does.
func buildImagesInto(dir string) error {
	binDir, err := buildBinaries()
	if err != nil {
		return err
	}
	return run(config{product: &productConfig{binDir: binDir, outDir: dir, tag: "test"}}, io.Discard)
}

// productImagesDir is where the tests read the product images from, built
// once per run.
var productImagesDir = sync.OnceValues(func() (string, error) {
	dir := filepath.Join(scratch, "images")
	return dir, buildImagesInto(dir)
})

func buildProductImages(t *testing.T) string {
	t.Helper()
	dir, err := productImagesDir()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestProductImages builds the three images and checks what the manifests
// and the node rely on: names, entrypoints, users, the iptables tools of the
// node cache image, sizes, and that a rebuild is byte-identical.
func TestProductImages(t *testing.T) {
	dir := buildProductImages(t)
	tests := []struct {
		file, ref, entrypoint, user string
		maxBytes                    int64
	}{
		{file: "nodecache.tar", ref: "docker.io/localdns/nodecache:test", entrypoint: "/localdns-nodecache", user: "0:0", maxBytes: 40 << 20},
		{file: "webhook.tar", ref: "docker.io/localdns/webhook:test", entrypoint: "/localdns-webhook", user: nonroot, maxBytes: 40 << 20},
		// The design's budget for the image injected into every musl pod.
		{file: "stub.tar", ref: "docker.io/localdns/stub:test", entrypoint: "/localdns-stub", user: nonroot, maxBytes: 10_000_000},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			img := readImage(t, filepath.Join(dir, tt.file))
			t.Logf("%s: tarball %d bytes, layer %d bytes compressed, %d uncompressed", tt.file, img.size, img.layerGz, img.layerTar)
			if img.size > tt.maxBytes {
				t.Errorf("tarball is %d bytes, budget %d", img.size, tt.maxBytes)
			}
			if got := img.index.Manifests[0].Annotations[annotationCtrName]; got != tt.ref {
				t.Errorf("containerd name %q, want %q", got, tt.ref)
			}
			if got, want := img.docker[0].RepoTags, []string{familiarRef(tt.ref)}; !slices.Equal(got, want) {
				t.Errorf("RepoTags %q, want %q", got, want)
			}
			c := img.config.Config
			if !slices.Equal(c.Entrypoint, []string{tt.entrypoint}) {
				t.Errorf("entrypoint %q, want [%s]", c.Entrypoint, tt.entrypoint)
			}
			if c.User != tt.user {
				t.Errorf("user %q, want %q", c.User, tt.user)
			}
			if img.config.OS != "linux" || img.config.Architecture == "" || !slices.Contains(c.Env, defaultPath) {
				t.Errorf("config %+v: want linux, an architecture and the default PATH", img.config)
			}
			if hdr := img.files[tt.entrypoint]; hdr == nil || hdr.Typeflag != tar.TypeReg || hdr.Mode&0o111 == 0 {
				t.Fatalf("entrypoint %s is not an executable file in the image", tt.entrypoint)
			}
			if tt.user == nonroot && !bytes.Contains(img.contents["/etc/passwd"], []byte("nonroot:x:65532:65532:")) {
				t.Errorf("/etc/passwd does not name nonroot 65532: %q", img.contents["/etc/passwd"])
			}
			for name, hdr := range img.files {
				if hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(epoch) {
					t.Errorf("%s: owner %d:%d, mtime %v; want root-owned at the epoch", name, hdr.Uid, hdr.Gid, hdr.ModTime)
				}
			}
		})
	}

	t.Run("nodecache has both iptables backends", func(t *testing.T) {
		img := readImage(t, filepath.Join(dir, "nodecache.tar"))
		for _, l := range iptablesLinks() {
			img.resolve(t, l.dst)
		}
		for _, multi := range []string{"/usr/sbin/xtables-nft-multi", "/usr/sbin/xtables-legacy-multi"} {
			libs, err := lddClosure(multi)
			if err != nil {
				t.Fatal(err)
			}
			for _, lib := range libs {
				img.resolve(t, lib)
			}
		}
		for _, plugin := range []string{"libxt_udp.so", "libxt_tcp.so", "libxt_CT.so", "libxt_NOTRACK.so", "libxt_comment.so", "libxt_standard.so"} {
			img.resolve(t, fmt.Sprintf("/usr/lib/%s/xtables/%s", multiarch[img.config.Architecture], plugin))
		}
	})

	t.Run("deterministic", func(t *testing.T) {
		again := t.TempDir()
		if err := buildImagesInto(again); err != nil {
			t.Fatal(err)
		}
		for _, file := range []string{"nodecache.tar", "webhook.tar", "stub.tar"} {
			a, errA := os.ReadFile(filepath.Join(dir, file))
			b, errB := os.ReadFile(filepath.Join(again, file))
			if err := errors.Join(errA, errB); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a, b) {
				t.Errorf("%s differs between two builds from the same binaries", file)
			}
		}
	})
}

// TestNodecacheIptablesRuns unpacks the node cache image and runs both of
// its iptables backends inside it (chroot) in a fresh network namespace of
// their own, adding the kind of NOTRACK rule the node cache installs: this
// proves the libraries and plugins the image carries are complete.
func TestNodecacheIptablesRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: chroot and a network namespace")
	}
	dir := buildProductImages(t)
	root := unpackImage(t, filepath.Join(dir, "nodecache.tar"))
	// The DaemonSet mounts the node's /run/xtables.lock here; legacy
	// iptables takes that lock.
	if err := os.MkdirAll(filepath.Join(root, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, family := range []string{"iptables", "ip6tables"} {
		for _, backend := range []string{"nft", "legacy"} {
			t.Run(family+"-"+backend, func(t *testing.T) {
				tool := fmt.Sprintf("/usr/sbin/%s-%s", family, backend)
				script := fmt.Sprintf(
					"chroot %[1]s %[2]s -w -t raw -A PREROUTING -p udp --dport 53 -m comment --comment localdns-test -j NOTRACK && "+
						"chroot %[1]s %[2]s-save -t raw", root, tool)
				// unshare -n: the rules live and die with a namespace of
				// their own, never touching the machine's.
				out, err := exec.Command("unshare", "-n", "sh", "-c", script).CombinedOutput()
				if err != nil {
					t.Fatalf("%s in the image: %v\n%s", tool, err, out)
				}
				if !bytes.Contains(out, []byte("--dport 53 -m comment --comment localdns-test -j NOTRACK")) {
					t.Fatalf("rule not listed by %s-save:\n%s", tool, out)
				}
			})
		}
	}
}

// unpackImage extracts the image's layer into a temporary directory.
func unpackImage(t *testing.T, tarball string) string {
	t.Helper()
	img := readImage(t, tarball)
	root := t.TempDir()
	for name, hdr := range img.files {
		target := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(target, 0o755)
		case tar.TypeSymlink:
			err = os.Symlink(hdr.Linkname, target)
		case tar.TypeReg:
			err = os.WriteFile(target, img.contents[name], os.FileMode(hdr.Mode))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestContainerdImports imports every image into a real containerd (the
// version the e2e node runs), started here with its own root, state and
// socket under a temporary directory, and stopped after.
func TestContainerdImports(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: containerd")
	}
	dir := buildProductImages(t)
	work := t.TempDir()
	sock := filepath.Join(work, "containerd.sock")
	conf := filepath.Join(work, "config.toml")
	// Only the content store, the image service and the overlayfs
	// snapshotter (to unpack) are needed; the CRI plugin would start
	// networking and must stay off.
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
`, filepath.Join(work, "root"), filepath.Join(work, "state"), sock, filepath.Join(work, "opt"))), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	daemon := exec.Command("containerd", "--config", conf)
	daemon.Stdout, daemon.Stderr = &logs, &logs
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctr := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", sock, "--namespace", "k8s.io"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ctr %s: %v\n%s\ncontainerd log:\n%s", strings.Join(args, " "), err, out, logs.String())
		}
		return string(out)
	}
	// containerd's readiness signal is its socket answering; poll it
	// with the client itself, bounded by ctx.
	for {
		if err := exec.CommandContext(ctx, "ctr", "--address", sock, "version").Run(); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("containerd exited: %v\n%s", err, logs.String())
		case <-ctx.Done():
			t.Fatalf("containerd did not answer: %v\n%s", ctx.Err(), logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, file := range []string{"nodecache.tar", "webhook.tar", "stub.tar"} {
		ctr("images", "import", filepath.Join(dir, file))
	}
	listed := strings.Fields(ctr("images", "ls", "-q"))
	for _, want := range []string{"docker.io/localdns/nodecache:test", "docker.io/localdns/webhook:test", "docker.io/localdns/stub:test"} {
		if !slices.Contains(listed, want) {
			t.Errorf("containerd lists %q, want %s among them", listed, want)
		}
	}
	if out := ctr("images", "check"); strings.Count(out, "complete") != 3 {
		t.Errorf("images not complete and unpacked:\n%s", out)
	}

	// Run the node cache image's iptables under runc with exactly the
	// capabilities the DaemonSet grants, a read-only root and the default
	// seccomp profile, in the container's own network namespace: proof that
	// those capabilities are enough for both backends.
	caps := daemonSetCapabilities(t)
	for i, backend := range []string{"nft", "legacy"} {
		t.Run("iptables-"+backend+" with the DaemonSet's capabilities", func(t *testing.T) {
			lock := filepath.Join(work, "xtables.lock")
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
			ctr(args...)
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

// TestDockerfileMatchesProductImages keeps the Dockerfile (for those with a
// container engine) and the daemonless images in step: a stage per image,
// with the same entrypoint and user.
func TestDockerfileMatchesProductImages(t *testing.T) {
	raw, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	type stage struct{ entrypoint, user string }
	stages := map[string]*stage{}
	var current *stage
	for _, line := range strings.Split(string(raw), "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) == 4 && fields[0] == "FROM" && strings.EqualFold(fields[2], "AS"):
			current = &stage{}
			stages[fields[3]] = current
		case current != nil && len(fields) == 2 && fields[0] == "USER":
			current.user = fields[1]
		case current != nil && len(fields) >= 2 && fields[0] == "ENTRYPOINT":
			var ep []string
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "ENTRYPOINT ")), &ep); err != nil || len(ep) != 1 {
				t.Fatalf("ENTRYPOINT %q: want the exec form with one element", line)
			}
			current.entrypoint = ep[0]
		}
	}
	for _, img := range productImages(productConfig{binDir: "bin", tag: "dev"}) {
		target := strings.TrimSuffix(img.file, ".tar")
		s, ok := stages[target]
		if !ok {
			t.Errorf("Dockerfile has no stage %q", target)
			continue
		}
		if s.entrypoint != img.spec.entrypoint[0] || s.user != img.spec.user {
			t.Errorf("stage %s: entrypoint %q user %q; the daemonless image has %q and %q",
				target, s.entrypoint, s.user, img.spec.entrypoint[0], img.spec.user)
		}
	}
}

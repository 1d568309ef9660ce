package main

import (
	"archive/tar"
	"bytes"
	"context"
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

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
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

func TestParseRef(t *testing.T) {
	tests := []struct {
		ref, wantName string // wantName: fully qualified
		wantErr       bool
	}{
		{ref: "localdns/stub:dev", wantName: "index.docker.io/localdns/stub:dev"},
		{ref: "busybox", wantName: "index.docker.io/library/busybox:latest"},
		{ref: "registry.k8s.io/pause:3.10", wantName: "registry.k8s.io/pause:3.10"},
		{ref: "localhost:5000/x/y:1", wantName: "localhost:5000/x/y:1"},
		{ref: "", wantErr: true},
		{ref: "Upper/case:dev", wantErr: true},
		{ref: "a/b:bad tag", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseRef(tt.ref)
		if (err != nil) != tt.wantErr || (err == nil && got.Name() != tt.wantName) {
			t.Errorf("parseRef(%q) = %q, %v; want %q, error %v", tt.ref, got.Name(), err, tt.wantName, tt.wantErr)
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
		{name: "product pushed", args: []string{"-product", "-push", "registry.example.com:5000/team/localdns"}},
		{name: "no output", args: []string{"-ref", "a/b:c", "-entrypoint", "/b"}, wantErr: "-o is required"},
		{name: "no entrypoint", args: []string{"-o", "x.tar", "-ref", "a/b:c"}, wantErr: "-entrypoint is required"},
		{name: "relative destination", args: append(slices.Clone(ok), "-add", "a:b"), wantErr: "DST must be absolute"},
		{name: "bad symlink", args: append(slices.Clone(ok), "-symlink", "/x"), wantErr: "want DST=TARGET"},
		{name: "bad env", args: append(slices.Clone(ok), "-env", "=v"), wantErr: "want K=V"},
		{name: "bad platform", args: append(slices.Clone(ok), "-platform", "linux"), wantErr: "want os/arch"},
		{name: "bad tag", args: []string{"-product", "-tag", "a:b"}, wantErr: "plain tag"},
		{name: "tag with a character a tag cannot have", args: []string{"-product", "-tag", "v1+x"}, wantErr: "plain tag"},
		{name: "push repository with a trailing slash", args: []string{"-product", "-push", "registry.example.com/localdns/"}},
		{name: "bad push repository", args: []string{"-product", "-push", "Registry/Localdns"}, wantErr: "want a repository"},
		{name: "push without product", args: append(slices.Clone(ok), "-push", "registry.example.com/localdns"), wantErr: "-push goes with -product"},
		{name: "bad reference", args: []string{"-o", "x.tar", "-ref", "a/b:bad tag", "-entrypoint", "/b"}, wantErr: "want a reference"},
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

// TestOneImage builds an image the way the e2e harness does (its client,
// pause and CoreDNS images): host files, a dynamically linked program with
// its libraries, symbolic links, environment, user; twice, to the same
// digest.
func TestOneImage(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tool"), []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	build := func(out string) image {
		t.Helper()
		cfg, err := parseFlags([]string{"-o", out, "-ref", "localdns.test/e2e/tool:1",
			"-entrypoint", "/tool", "-entrypoint", "--flag", "-user", "65532:65532", "-etc-passwd", "-env", "K=V",
			"-add", filepath.Join(dir, "tool") + ":/tool", "-add-with-libs", "/bin/true:/bin/true", "-symlink", "/bin/sh=true"}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if err := run(context.Background(), cfg, io.Discard); err != nil {
			t.Fatal(err)
		}
		return readImage(t, out)
	}
	img := build(filepath.Join(dir, "a.tar"))
	if again := build(filepath.Join(dir, "b.tar")); again.digest != img.digest {
		t.Errorf("digest %s, then %s, from the same inputs", img.digest, again.digest)
	}
	if !slices.Equal(img.repoTags, []string{"localdns.test/e2e/tool:1"}) {
		t.Errorf("RepoTags %q", img.repoTags)
	}
	c := img.config.Config
	if !slices.Equal(c.Entrypoint, []string{"/tool", "--flag"}) || c.User != "65532:65532" || !slices.Equal(c.Env, []string{defaultPath, "K=V"}) {
		t.Errorf("config %+v", c)
	}
	libs, err := lddClosure("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append(libs, "/tool", "/bin/true", "/bin/sh", "/etc/passwd", "/etc/group") {
		img.resolve(t, p)
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
	repoTags []string
	digest   v1.Hash
	config   *v1.ConfigFile
	layerGz  int64
	layerTar int64                  // uncompressed
	files    map[string]*tar.Header // layer paths, absolute
	contents map[string][]byte      // regular files of the layer
}

// readImage parses an image tarball and checks that it is internally
// consistent (go-containerregistry's validate: every blob matches its
// digest and size, the config's diff_ids match the layers).
func readImage(t *testing.T, p string) image {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatalf("image tarball missing: %v", err)
	}
	manifest, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(p) })
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if len(manifest) != 1 {
		t.Fatalf("%s: manifest.json has %d images, want 1", p, len(manifest))
	}
	img, err := tarball.ImageFromPath(p, nil)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	parsed := image{size: st.Size(), repoTags: manifest[0].RepoTags, files: map[string]*tar.Header{}, contents: map[string][]byte{}}
	if parsed.digest, err = img.Digest(); err != nil {
		t.Fatal(err)
	}
	if parsed.config, err = img.ConfigFile(); err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%s: %d layers, want 1", p, len(layers))
	}
	if parsed.layerGz, err = layers[0].Size(); err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	counted := &countingReader{r: rc}
	lr := tar.NewReader(counted)
	for {
		hdr, err := lr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := path.Clean("/" + hdr.Name)
		parsed.files[name] = hdr
		if hdr.Typeflag == tar.TypeReg {
			if parsed.contents[name], err = io.ReadAll(lr); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := io.Copy(io.Discard, counted); err != nil {
		t.Fatal(err)
	}
	parsed.layerTar = counted.n
	return parsed
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
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
	cfg, err := parseFlags([]string{"-product", "-bin-dir", binDir, "-out-dir", dir, "-tag", "test"}, io.Discard)
	if err != nil {
		return err
	}
	return run(context.Background(), cfg, io.Discard)
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

// netBindServiceXattr is what `setcap cap_net_bind_service=+ep FILE`
// writes (`getfattr -n security.capability -e hex`: 0x0100000200040000
// followed by zeros): revision 2 with the effective bit, bit 10 permitted.
var netBindServiceXattr = []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

func TestFileCapabilityXattr(t *testing.T) {
	tests := []struct {
		name    string
		caps    []capability
		want    []byte
		wantErr bool
	}{
		{name: "net_bind_service", caps: []capability{capNetBindService}, want: netBindServiceXattr},
		{name: "net_bind_service and net_admin (12)", caps: []capability{capNetBindService, 12},
			want: []byte{1, 0, 0, 2, 0, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		{name: "checkpoint_restore (40), in the second word", caps: []capability{40},
			want: []byte{1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}},
		{name: "no such capability", caps: []capability{64}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := fileCapabilityXattr(tt.caps...)
			if (err != nil) != tt.wantErr || !bytes.Equal(got, tt.want) {
				t.Fatalf("got % x, %v; want % x, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// TestProductImages builds the images and checks what the manifests and
// the node rely on: names, entrypoints, users, the stub variant's file
// capability, the iptables tools of the node cache image, sizes, and that a
// rebuild gives the same bytes and digests.
func TestProductImages(t *testing.T) {
	dir := buildProductImages(t)
	tests := []struct {
		file, repoTag, entrypoint, user string
		maxBytes                        int64
		capability                      []byte // the entrypoint's file capability
	}{
		{file: "nodecache.tar", repoTag: "localdns/nodecache:test", entrypoint: "/localdns-nodecache", user: "0:0", maxBytes: 40 << 20},
		{file: "webhook.tar", repoTag: "localdns/webhook:test", entrypoint: "/localdns-webhook", user: nonroot, maxBytes: 40 << 20},
		// The design's budget for the image injected into every musl pod.
		{file: "stub.tar", repoTag: "localdns/stub:test", entrypoint: "/localdns-stub", user: nonroot, maxBytes: 10_000_000},
		{file: "stub-filecap.tar", repoTag: "localdns/stub-filecap:test", entrypoint: "/localdns-stub", user: nonroot, maxBytes: 10_000_000,
			capability: netBindServiceXattr},
	}
	if got, want := len(productImages(productConfig{tag: "test", repository: "localdns"})), len(tests); got != want {
		t.Fatalf("%d product images, %d tested", got, want)
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			img := readImage(t, filepath.Join(dir, tt.file))
			t.Logf("%s: tarball %d bytes, layer %d bytes compressed, %d uncompressed, %s", tt.file, img.size, img.layerGz, img.layerTar, img.digest)
			if img.size > tt.maxBytes {
				t.Errorf("tarball is %d bytes, budget %d", img.size, tt.maxBytes)
			}
			if !slices.Equal(img.repoTags, []string{tt.repoTag}) {
				t.Errorf("RepoTags %q, want [%s]", img.repoTags, tt.repoTag)
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
			if !img.config.Created.Equal(epoch) || len(img.config.History) != 1 || !img.config.History[0].Created.Equal(epoch) {
				t.Errorf("created %v, history %+v: want the epoch", img.config.Created, img.config.History)
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
				want := ""
				if name == tt.entrypoint {
					want = string(tt.capability)
				}
				if got := hdr.PAXRecords[paxXattrPrefix+xattrCapability]; got != want {
					t.Errorf("%s: file capability % x, want % x", name, got, want)
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
		for _, tt := range tests {
			a, b := filepath.Join(dir, tt.file), filepath.Join(again, tt.file)
			if da, db := readImage(t, a).digest, readImage(t, b).digest; da != db {
				t.Errorf("%s: digest %s, then %s, from the same binaries", tt.file, da, db)
			}
			ba, errA := os.ReadFile(a)
			bb, errB := os.ReadFile(b)
			if err := errors.Join(errA, errB); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ba, bb) {
				t.Errorf("%s differs between two builds from the same binaries", tt.file)
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

// TestDockerfileMatchesProductImages keeps the Dockerfile (for those with a
// container engine) and the daemonless images in step: a stage per image,
// with the same entrypoint and user, and a setcap for the file capability.
func TestDockerfileMatchesProductImages(t *testing.T) {
	raw, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	type stage struct{ entrypoint, user, copyFrom string }
	stages := map[string]*stage{}
	var current *stage
	for _, line := range strings.Split(string(raw), "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) == 4 && fields[0] == "FROM" && strings.EqualFold(fields[2], "AS"):
			current = &stage{}
			stages[fields[3]] = current
		case current != nil && len(fields) == 4 && fields[0] == "COPY" && strings.HasPrefix(fields[1], "--from="):
			current.copyFrom = strings.TrimPrefix(fields[1], "--from=")
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
	for _, img := range productImages(productConfig{binDir: "bin", tag: "dev", repository: "localdns"}) {
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
		// The one capability the images set: cap_net_bind_service on the
		// stub, set by setcap in the stage its binary is copied from.
		for file := range img.spec.fileCapabilities {
			setcap := "setcap cap_net_bind_service=+ep /out" + file
			if !strings.Contains(string(raw), "FROM build AS "+s.copyFrom+"\n") || !strings.Contains(string(raw), setcap) {
				t.Errorf("stage %s: want its binary from a stage on build that runs %q", target, setcap)
			}
		}
	}
}

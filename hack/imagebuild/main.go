// Command imagebuild writes container image tarballs without a container
// engine: one gzip layer assembled from host files, an OCI image config and
// manifest, packed as an OCI image layout that also carries Docker's
// manifest.json, so `ctr images import`, `docker load` and `podman load` all
// accept it. Output is deterministic: fixed timestamps and ownership, sorted
// entries, so the same inputs give the same image digest.
//
// One image:
//
//	go run ./hack/imagebuild -o stub.tar -ref localdns/stub:dev \
//	  -entrypoint /localdns-stub -user 65532:65532 -etc-passwd \
//	  -add bin/localdns-stub:/localdns-stub
//
// The three localdns images (what `make images` runs):
//
//	go run ./hack/imagebuild -product -bin-dir bin -out-dir bin/images -tag dev
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "imagebuild: %v\n", err)
		os.Exit(2)
	}
	if err := run(cfg, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "imagebuild: %v\n", err)
		os.Exit(1)
	}
}

// config is either one image (out + image) or the product set (product).
type config struct {
	out     string
	image   imageSpec
	product *productConfig
}

type productConfig struct {
	binDir string
	outDir string
	tag    string
}

func run(cfg config, progress io.Writer) error {
	if cfg.product != nil {
		for _, img := range productImages(*cfg.product) {
			out := filepath.Join(cfg.product.outDir, img.file)
			if err := writeImage(out, img.spec); err != nil {
				return err
			}
			fmt.Fprintf(progress, "imagebuild: wrote %s (%s)\n", out, img.spec.ref)
		}
		return nil
	}
	return writeImage(cfg.out, cfg.image)
}

// listFlag collects every occurrence of a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func parseFlags(args []string, output io.Writer) (config, error) {
	fs := flag.NewFlagSet("imagebuild", flag.ContinueOnError)
	fs.SetOutput(output)
	var (
		out, ref, user, platformFlag string
		entrypoint, adds, addLibs    listFlag
		symlinks, envs               listFlag
		etcPasswd, product           bool
		binDir, outDir, tag          string
	)
	fs.StringVar(&out, "o", "", "output tarball `path`")
	fs.StringVar(&ref, "ref", "", "image `reference` to name it, e.g. localdns/stub:dev")
	fs.Var(&entrypoint, "entrypoint", "entrypoint element; repeat for arguments (first is the program)")
	fs.StringVar(&user, "user", "", "`uid:gid` the image runs as (empty: root)")
	fs.Var(&adds, "add", "`SRC:DST` copy a host file or directory (recursively; SRC itself is followed when a link) into the image; repeatable")
	fs.Var(&addLibs, "add-with-libs", "`SRC:DST` like -add, plus the shared libraries each ELF file needs (its ldd closure), at their host paths; repeatable")
	fs.Var(&symlinks, "symlink", "`DST=TARGET` create a symbolic link; repeatable")
	fs.Var(&envs, "env", "`K=V` environment variable; repeatable (PATH has a default)")
	fs.BoolVar(&etcPasswd, "etc-passwd", false, "add /etc/passwd and /etc/group naming root (0) and nonroot (65532)")
	fs.StringVar(&platformFlag, "platform", runtime.GOOS+"/"+runtime.GOARCH, "`os/arch` recorded in the image (must match the files added)")
	fs.BoolVar(&product, "product", false, "build the localdns images (nodecache, webhook, stub) from -bin-dir into -out-dir")
	fs.StringVar(&binDir, "bin-dir", "bin", "with -product: `directory` holding the static localdns-* binaries")
	fs.StringVar(&outDir, "out-dir", "bin/images", "with -product: `directory` for nodecache.tar, webhook.tar, stub.tar")
	fs.StringVar(&tag, "tag", "dev", "with -product: image tag")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if product {
		if tag == "" || strings.ContainsAny(tag, ":/@ ") {
			return config{}, fmt.Errorf("-tag %q: want a plain tag such as dev or v1.2.3", tag)
		}
		return config{product: &productConfig{binDir: binDir, outDir: outDir, tag: tag}}, nil
	}
	if out == "" {
		return config{}, errors.New("-o is required")
	}
	spec := imageSpec{user: user, entrypoint: entrypoint, etcPasswd: etcPasswd, env: envs}
	var err error
	if spec.ref, err = normalizeRef(ref); err != nil {
		return config{}, err
	}
	if spec.platform, err = parsePlatform(platformFlag); err != nil {
		return config{}, err
	}
	if len(entrypoint) == 0 {
		return config{}, errors.New("-entrypoint is required")
	}
	for _, a := range adds {
		c, err := parseCopy(a, false)
		if err != nil {
			return config{}, fmt.Errorf("-add: %w", err)
		}
		spec.copies = append(spec.copies, c)
	}
	for _, a := range addLibs {
		c, err := parseCopy(a, true)
		if err != nil {
			return config{}, fmt.Errorf("-add-with-libs: %w", err)
		}
		spec.copies = append(spec.copies, c)
	}
	for _, s := range symlinks {
		dst, target, ok := strings.Cut(s, "=")
		if !ok || dst == "" || target == "" {
			return config{}, fmt.Errorf("-symlink %q: want DST=TARGET", s)
		}
		spec.symlinks = append(spec.symlinks, symlinkSpec{dst: dst, target: target})
	}
	for _, e := range envs {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return config{}, fmt.Errorf("-env %q: want K=V", e)
		}
	}
	return config{out: out, image: spec}, nil
}

func parseCopy(s string, withLibs bool) (copySpec, error) {
	src, dst, ok := strings.Cut(s, ":")
	if !ok || src == "" || dst == "" {
		return copySpec{}, fmt.Errorf("%q: want SRC:DST", s)
	}
	if !strings.HasPrefix(dst, "/") {
		return copySpec{}, fmt.Errorf("%q: DST must be absolute", s)
	}
	return copySpec{src: src, dst: dst, withLibs: withLibs}, nil
}

func parsePlatform(s string) (platform, error) {
	os, arch, ok := strings.Cut(s, "/")
	if !ok || os == "" || arch == "" {
		return platform{}, fmt.Errorf("-platform %q: want os/arch", s)
	}
	return platform{OS: os, Architecture: arch}, nil
}

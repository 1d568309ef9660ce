// Command imagebuild makes container images without a container engine,
// with go-containerregistry: one gzip layer assembled from host files on an
// empty base, written as a `docker save` tarball (which `ctr images import`,
// `docker load` and `podman load` accept) or pushed to a registry. Output is
// deterministic: fixed timestamps and ownership, sorted entries, so the same
// inputs give the same image digest.
//
// One image:
//
//	go run ./hack/imagebuild -o stub.tar -ref localdns/stub:dev \
//	  -entrypoint /localdns-stub -user 65532:65532 -etc-passwd \
//	  -add bin/localdns-stub:/localdns-stub
//
// The localdns images (what `make images` runs):
//
//	go run ./hack/imagebuild -product -bin-dir bin -out-dir bin/images -tag dev
//
// The same, pushed (what `make push REGISTRY=registry.example.com/localdns` runs):
//
//	go run ./hack/imagebuild -product -bin-dir bin -tag dev -push registry.example.com/localdns
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stderr); err != nil {
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
	// repository the images are named under: localdns (Docker Hub's
	// familiar form) for tarballs, the -push repository when pushing.
	repository string
	push       bool
}

func run(ctx context.Context, cfg config, progress io.Writer) error {
	if cfg.product == nil {
		img, err := buildImage(cfg.image)
		if err != nil {
			return err
		}
		return writeTarball(cfg.out, cfg.image.ref, img)
	}
	for _, p := range productImages(*cfg.product) {
		img, err := buildImage(p.spec)
		if err != nil {
			return err
		}
		digest, err := img.Digest()
		if err != nil {
			return fmt.Errorf("image %s: %w", p.spec.ref, err)
		}
		if cfg.product.push {
			if err := pushImage(ctx, p.spec.ref, img); err != nil {
				return err
			}
			fmt.Fprintf(progress, "imagebuild: pushed %s@%s\n", p.spec.ref, digest)
			continue
		}
		out := filepath.Join(cfg.product.outDir, p.file)
		if err := writeTarball(out, p.spec.ref, img); err != nil {
			return err
		}
		fmt.Fprintf(progress, "imagebuild: wrote %s (%s@%s)\n", out, p.spec.ref, digest)
	}
	return nil
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
		binDir, outDir, tag, push    string
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
	fs.StringVar(&outDir, "out-dir", "bin/images", "with -product: `directory` for nodecache.tar, webhook.tar, stub.tar, stub-filecap.tar")
	fs.StringVar(&tag, "tag", "dev", "with -product: image tag")
	fs.StringVar(&push, "push", "", "with -product: push to `repository`/<image>:<tag> (e.g. registry.example.com/localdns) instead of writing tarballs")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if product {
		if _, err := name.NewTag("localdns/stub:" + tag); err != nil || tag == "" || strings.ContainsAny(tag, ":/@") {
			return config{}, fmt.Errorf("-tag %q: want a plain tag such as dev or v1.2.3", tag)
		}
		pc := &productConfig{binDir: binDir, outDir: outDir, tag: tag, repository: "localdns"}
		if push != "" {
			pc.repository, pc.push = strings.TrimSuffix(push, "/"), true
			if _, err := name.NewRepository(pc.repository); err != nil {
				return config{}, fmt.Errorf("-push %q: want a repository such as registry.example.com/localdns: %w", push, err)
			}
		}
		return config{product: pc}, nil
	}
	if push != "" {
		return config{}, errors.New("-push goes with -product")
	}
	if out == "" {
		return config{}, errors.New("-o is required")
	}
	spec := imageSpec{user: user, entrypoint: entrypoint, etcPasswd: etcPasswd, env: envs}
	var err error
	if spec.ref, err = parseRef(ref); err != nil {
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

func parsePlatform(s string) (v1.Platform, error) {
	p, err := v1.ParsePlatform(s)
	if err != nil || p.OS == "" || p.Architecture == "" {
		return v1.Platform{}, fmt.Errorf("-platform %q: want os/arch[/variant]", s)
	}
	return *p, nil
}

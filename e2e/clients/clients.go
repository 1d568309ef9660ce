// Package clients builds the load clients for client pods: the C client
// gaiload (csrc/gaiload.c) against glibc (dynamic, as glibc pods run it; its
// image carries the libraries) and against musl (static, as Alpine pods
// resolve), and the Go client e2e/cmd/dnsload (static). All print the JSON
// of e2e/dnsload's Result.
package clients

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/localdns/localdns/e2e/dnsload"
)

//go:embed csrc/gaiload.c
var gailoadSource []byte

// Binaries are the built clients.
type Binaries struct {
	Glibc string // gaiload, dynamic; needs the host's libc in its image (imagebuild -add-with-libs)
	Musl  string // gaiload, static
	Go    string // dnsload, static (CGO off: Go's own resolver)
}

// Build compiles the clients into dir: gaiload with gcc and musl-gcc
// (Debian packages gcc and musl-tools), dnsload from the localdns module
// at repoDir.
func Build(repoDir, dir string) (Binaries, error) {
	src := filepath.Join(dir, "gaiload.c")
	if err := os.WriteFile(src, gailoadSource, 0o644); err != nil {
		return Binaries{}, fmt.Errorf("write gaiload.c: %w", err)
	}
	b := Binaries{
		Glibc: filepath.Join(dir, "gaiload-glibc"),
		Musl:  filepath.Join(dir, "gaiload-musl"),
		Go:    filepath.Join(dir, "dnsload"),
	}
	goBuild := exec.Command("go", "build", "-trimpath", "-o", b.Go, "./e2e/cmd/dnsload")
	goBuild.Dir = repoDir
	goBuild.Env = append(os.Environ(), "CGO_ENABLED=0")
	for _, cmd := range []*exec.Cmd{
		exec.Command("gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", b.Glibc, src),
		exec.Command("musl-gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-static", "-pthread", "-o", b.Musl, src),
		goBuild,
	} {
		if out, err := cmd.CombinedOutput(); err != nil {
			return Binaries{}, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return b, nil
}

// ParseResult decodes gaiload's one line of JSON, which has the fields of
// the Go client's result.
func ParseResult(out []byte) (dnsload.Result, error) {
	var r dnsload.Result
	if err := json.Unmarshal(out, &r); err != nil {
		return dnsload.Result{}, fmt.Errorf("parse gaiload output %q: %w", out, err)
	}
	return r, nil
}

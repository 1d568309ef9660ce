// Package clients builds the C load client gaiload (csrc/gaiload.c) twice:
// against glibc (dynamic, as glibc pods run it; its image carries the
// libraries) and against musl (static, as Alpine pods resolve). Both print
// the JSON of e2e/dnsload's Result.
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
	Glibc string // dynamic; needs the host's libc in its image (imagebuild -add-with-libs)
	Musl  string // static
}

// Build compiles both clients into dir with gcc and musl-gcc (Debian
// packages gcc and musl-tools).
func Build(dir string) (Binaries, error) {
	src := filepath.Join(dir, "gaiload.c")
	if err := os.WriteFile(src, gailoadSource, 0o644); err != nil {
		return Binaries{}, fmt.Errorf("write gaiload.c: %w", err)
	}
	b := Binaries{Glibc: filepath.Join(dir, "gaiload-glibc"), Musl: filepath.Join(dir, "gaiload-musl")}
	for _, argv := range [][]string{
		{"gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", b.Glibc, src},
		{"musl-gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-static", "-pthread", "-o", b.Musl, src},
	} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return Binaries{}, fmt.Errorf("%s: %w: %s", argv[0], err, strings.TrimSpace(string(out)))
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

package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ImageSpec is a one-layer test image made of host files, built by the
// repository's hack/imagebuild (no registry is reachable).
type ImageSpec struct {
	Ref        string
	Entrypoint []string
	// Files maps a path in the image to the host file copied there.
	Files map[string]string
	// FilesWithLibs are like Files, plus the shared libraries each needs
	// (at their host paths): a dynamically linked glibc client.
	FilesWithLibs map[string]string
	// Symlinks maps a path in the image to its target.
	Symlinks map[string]string
}

// args are imagebuild's flags for spec, in a stable order.
func (s ImageSpec) args() []string {
	args := []string{"-ref", s.Ref}
	for _, e := range s.Entrypoint {
		args = append(args, "-entrypoint", e)
	}
	for _, dst := range sortedKeys(s.Files) {
		args = append(args, "-add", s.Files[dst]+":"+dst)
	}
	for _, dst := range sortedKeys(s.FilesWithLibs) {
		args = append(args, "-add-with-libs", s.FilesWithLibs[dst]+":"+dst)
	}
	for _, dst := range sortedKeys(s.Symlinks) {
		args = append(args, "-symlink", dst+"="+s.Symlinks[dst])
	}
	return args
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// imageBuilder builds images with hack/imagebuild and keeps them in a
// cache keyed by the builder binary, the flags and the input files' size
// and modification time: gzipping CoreDNS takes seconds, and a warm boot
// should not pay them again. Entries unused for a day are pruned.
type imageBuilder struct {
	tool     string
	cacheDir string
}

// newImageBuilder compiles hack/imagebuild of the repository at repoDir into dir.
func newImageBuilder(repoDir, dir, cacheDir string) (*imageBuilder, error) {
	tool := filepath.Join(dir, "imagebuild")
	cmd := exec.Command("go", "build", "-o", tool, "./hack/imagebuild")
	cmd.Dir = repoDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build hack/imagebuild in %s: %w: %s", repoDir, err, strings.TrimSpace(string(out)))
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("make image cache: %w", err)
	}
	return &imageBuilder{tool: tool, cacheDir: cacheDir}, nil
}

// build returns the path of spec's tarball, building it unless cached.
func (b *imageBuilder) build(spec ImageSpec) (string, error) {
	key, err := b.key(spec)
	if err != nil {
		return "", err
	}
	out := filepath.Join(b.cacheDir, key+".tar")
	if _, err := os.Stat(out); err == nil {
		now := time.Now()
		return out, os.Chtimes(out, now, now) // marks it used, for prune
	}
	tmp := out + ".tmp"
	args := append([]string{"-o", tmp}, spec.args()...)
	if res, err := exec.Command(b.tool, args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("imagebuild %s: %w: %s", spec.Ref, err, strings.TrimSpace(string(res)))
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", fmt.Errorf("cache image %s: %w", spec.Ref, err)
	}
	return out, nil
}

// prune removes cached images unused for a day.
func (b *imageBuilder) prune() error {
	entries, err := filepath.Glob(filepath.Join(b.cacheDir, "*.tar"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if st, err := os.Stat(e); err == nil && time.Since(st.ModTime()) > 24*time.Hour {
			if err := os.Remove(e); err != nil {
				return fmt.Errorf("prune image cache: %w", err)
			}
		}
	}
	return nil
}

func (b *imageBuilder) key(spec ImageSpec) (string, error) {
	h := sha256.New()
	tool, err := os.Open(b.tool)
	if err != nil {
		return "", fmt.Errorf("hash imagebuild: %w", err)
	}
	defer tool.Close()
	if _, err := io.Copy(h, tool); err != nil {
		return "", fmt.Errorf("hash imagebuild: %w", err)
	}
	fmt.Fprintln(h, strings.Join(spec.args(), "\x00"))
	for _, files := range []map[string]string{spec.Files, spec.FilesWithLibs} {
		for _, dst := range sortedKeys(files) {
			st, err := os.Stat(files[dst])
			if err != nil {
				return "", fmt.Errorf("image %s: %w", spec.Ref, err)
			}
			fmt.Fprintln(h, dst, st.Size(), st.ModTime().UnixNano())
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

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
)

// imageSpec is a one-layer test image made of host files, built by the
// repository's hack/imagebuild (no registry is reachable).
type imageSpec struct {
	ref        string
	entrypoint []string
	// files maps a path in the image to the host file copied there.
	files map[string]string
	// symlinks maps a path in the image to its target.
	symlinks map[string]string
}

// args are imagebuild's flags for spec, in a stable order.
func (s imageSpec) args() []string {
	args := []string{"-ref", s.ref}
	for _, e := range s.entrypoint {
		args = append(args, "-entrypoint", e)
	}
	for _, dst := range sortedKeys(s.files) {
		args = append(args, "-add", s.files[dst]+":"+dst)
	}
	for _, dst := range sortedKeys(s.symlinks) {
		args = append(args, "-symlink", dst+"="+s.symlinks[dst])
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
// should not pay them again.
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
func (b *imageBuilder) build(spec imageSpec) (string, error) {
	key, err := b.key(spec)
	if err != nil {
		return "", err
	}
	out := filepath.Join(b.cacheDir, key+".tar")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	tmp := out + ".tmp"
	args := append([]string{"-o", tmp}, spec.args()...)
	if res, err := exec.Command(b.tool, args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("imagebuild %s: %w: %s", spec.ref, err, strings.TrimSpace(string(res)))
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", fmt.Errorf("cache image %s: %w", spec.ref, err)
	}
	return out, nil
}

func (b *imageBuilder) key(spec imageSpec) (string, error) {
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
	for _, dst := range sortedKeys(spec.files) {
		st, err := os.Stat(spec.files[dst])
		if err != nil {
			return "", fmt.Errorf("image %s: %w", spec.ref, err)
		}
		fmt.Fprintln(h, dst, st.Size(), st.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

package main

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// TestPushToRegistry pushes the product images (`make push`) to an
// in-process registry on 127.0.0.1 and pulls them back: each is complete,
// under its name, with the digest of the tarball `make images` writes from
// the same binaries.
func TestPushToRegistry(t *testing.T) {
	// No credentials from this machine's Docker config: the registry is
	// anonymous.
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	repository := strings.TrimPrefix(srv.URL, "http://") + "/team/localdns"

	binDir, err := buildBinaries()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := parseFlags([]string{"-product", "-bin-dir", binDir, "-tag", "test", "-push", repository}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	if err := run(context.Background(), cfg, &progress); err != nil {
		t.Fatalf("push: %v\n%s", err, progress.String())
	}

	dir := buildProductImages(t)
	for _, p := range productImages(productConfig{tag: "test", repository: "localdns"}) {
		t.Run(p.file, func(t *testing.T) {
			image := strings.TrimSuffix(p.file, ".tar")
			ref, err := name.NewTag(repository + "/" + image + ":test")
			if err != nil {
				t.Fatal(err)
			}
			pulled, err := remote.Image(ref)
			if err != nil {
				t.Fatalf("pull %s: %v", ref, err)
			}
			if err := validate.Image(pulled); err != nil {
				t.Fatalf("%s as pulled: %v", ref, err)
			}
			digest, err := pulled.Digest()
			if err != nil {
				t.Fatal(err)
			}
			if want := readImage(t, filepath.Join(dir, p.file)).digest; digest != want {
				t.Errorf("%s: pushed digest %s, the tarball's image %s", ref, digest, want)
			}
			if line := "imagebuild: pushed " + ref.String() + "@" + digest.String(); !strings.Contains(progress.String(), line) {
				t.Errorf("progress lacks %q:\n%s", line, progress.String())
			}
		})
	}
}

package cluster

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestConfigDefaultsAndValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"zero takes defaults", Config{}, false},
		{"nftables", Config{ProxyMode: ProxyNFTables}, false},
		{"ipvs is not in this kernel", Config{ProxyMode: "ipvs"}, true},
		{"name with a slash", Config{Name: "a/b"}, true},
		{"name too long for interface and socket paths", Config{Name: "abcdefghijklmnopqrstuvwxyz"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.withDefaults()
			if (err != nil) != tt.wantErr {
				t.Fatalf("withDefaults() error = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (got.Name == "" || got.K8sBinDir == "" || got.Progress == nil) {
				t.Errorf("defaults not filled: %+v", got)
			}
		})
	}
}

func TestCheckBinariesNamesEveryMissingOne(t *testing.T) {
	cfg, err := Config{K8sBinDir: t.TempDir(), CoreDNSBinary: "/nonexistent/coredns"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.checkBinaries()
	if !errors.Is(err, ErrMissingBinaries) {
		t.Fatalf("checkBinaries() = %v, want ErrMissingBinaries", err)
	}
	for _, want := range []string{"/nonexistent/coredns", "kubelet", "kube-proxy"} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/plain/path", "/plain/path"},
		{`/with\040space`, "/with space"},
		{`/tab\011and\134backslash`, "/tab\tand\\backslash"},
		{`/trailing\04`, `/trailing\04`},
	}
	for _, tt := range tests {
		if got := unescapeMount(tt.in); got != tt.want {
			t.Errorf("unescapeMount(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestProcStartTimeOfSelf(t *testing.T) {
	got, err := procStartTime(os.Getpid())
	if err != nil || got == "" {
		t.Fatalf("procStartTime(self) = %q, %v", got, err)
	}
	if _, err := procStartTime(1 << 30); err == nil {
		t.Error("procStartTime of a pid that cannot exist succeeded")
	}
}

// TestDockerArchive checks the tarball is what `ctr images import` reads:
// manifest.json naming the tag, a config whose diff_id is the layer's
// digest, and a layer with parent directories before their files.
func TestDockerArchive(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "tool")
	if err := os.WriteFile(src, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "image.tar")
	spec := imageSpec{
		ref:        "localdns.test/unit:1",
		entrypoint: []string{"/usr/bin/tool"},
		files:      map[string]string{"/usr/bin/tool": src},
		symlinks:   map[string]string{"/bin/alias": "../usr/bin/tool"},
	}
	if err := writeDockerArchive(spec, out); err != nil {
		t.Fatal(err)
	}
	_, files := readTar(t, mustOpen(t, out))
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"].body, &manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest) != 1 || !reflect.DeepEqual(manifest[0].RepoTags, []string{spec.ref}) || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest = %+v", manifest)
	}
	var config struct {
		Config struct{ Entrypoint []string }
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(files[manifest[0].Config].body, &config); err != nil {
		t.Fatalf("config: %v", err)
	}
	layer := files[manifest[0].Layers[0]].body
	sum := sha256.Sum256(layer)
	if want := []string{"sha256:" + hex.EncodeToString(sum[:])}; !reflect.DeepEqual(config.RootFS.DiffIDs, want) {
		t.Errorf("diff_ids = %v, want %v", config.RootFS.DiffIDs, want)
	}
	if !reflect.DeepEqual(config.Config.Entrypoint, spec.entrypoint) {
		t.Errorf("entrypoint = %v, want %v", config.Config.Entrypoint, spec.entrypoint)
	}

	gotOrder, entries := readTar(t, bytes.NewReader(layer))
	wantOrder := []string{"bin/", "tmp/", "usr/", "usr/bin/", "bin/alias", "usr/bin/tool"}
	if !reflect.DeepEqual(gotOrder, wantOrder) {
		t.Errorf("layer entries = %v, want %v", gotOrder, wantOrder)
	}
	if e := entries["usr/bin/tool"]; string(e.body) != "#!/bin/true\n" || e.hdr.Mode != 0o755 {
		t.Errorf("tool = %q mode %o", e.body, e.hdr.Mode)
	}
	if e := entries["bin/alias"]; e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != "../usr/bin/tool" {
		t.Errorf("alias = %+v", e.hdr)
	}
}

type tarEntry struct {
	hdr  *tar.Header
	body []byte
}

// readTar returns the entry names in tar order and the entries by name.
func readTar(t *testing.T, r io.Reader) ([]string, map[string]tarEntry) {
	t.Helper()
	var order []string
	entries := map[string]tarEntry{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return order, entries
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		entries[hdr.Name] = tarEntry{hdr, body}
		order = append(order, hdr.Name)
	}
}

func mustOpen(t *testing.T, path string) io.Reader {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

package cluster

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// imageSpec is a one-layer image made of host files: the pause, busybox
// client and CoreDNS images of the e2e node. No registry is reachable, so
// they are written as docker-archive tarballs for `ctr images import`.
//
// TODO(e2e): switch to hack/imagebuild once it lands (deploy owns it).
type imageSpec struct {
	ref        string
	entrypoint []string
	// files maps a path in the image to the host file copied there.
	files map[string]string
	// symlinks maps a path in the image to its target.
	symlinks map[string]string
}

// imageEpoch keeps the tarballs reproducible.
var imageEpoch = time.Unix(0, 0)

// writeDockerArchive writes spec as a docker-archive tarball at out.
func writeDockerArchive(spec imageSpec, out string) error {
	layer, err := os.CreateTemp(path.Dir(out), ".layer-*")
	if err != nil {
		return fmt.Errorf("create layer: %w", err)
	}
	defer os.Remove(layer.Name())
	defer layer.Close()
	layerSum := sha256.New()
	if err := writeLayer(io.MultiWriter(layer, layerSum), spec); err != nil {
		return fmt.Errorf("write layer of %s: %w", spec.ref, err)
	}
	layerSize, err := layer.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("size layer: %w", err)
	}
	if _, err := layer.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("rewind layer: %w", err)
	}
	layerHex := hex.EncodeToString(layerSum.Sum(nil))

	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      imageEpoch.UTC().Format(time.RFC3339),
		"config":       map[string]any{"Entrypoint": spec.entrypoint, "Env": []string{"PATH=/bin"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerHex}},
	})
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := layerHex + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": configName, "RepoTags": []string{spec.ref}, "Layers": []string{layerName},
	}})
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}

	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	entries := []struct {
		name string
		size int64
		body io.Reader
	}{
		{configName, int64(len(config)), strings.NewReader(string(config))},
		{layerName, layerSize, layer},
		{"manifest.json", int64(len(manifest)), strings.NewReader(string(manifest))},
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: layerHex + "/", Mode: 0o755, ModTime: imageEpoch}); err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Size: e.size, Mode: 0o644, ModTime: imageEpoch}); err != nil {
			return fmt.Errorf("write %s: %w", e.name, err)
		}
		if _, err := io.Copy(tw, e.body); err != nil {
			return fmt.Errorf("write %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("finish image: %w", err)
	}
	return f.Close()
}

// writeLayer writes the layer tar: parent directories first, then files and
// symlinks in name order.
func writeLayer(w io.Writer, spec imageSpec) error {
	tw := tar.NewWriter(w)
	dirs := map[string]bool{"tmp": true}
	var names []string
	for name := range spec.files {
		names = append(names, name)
	}
	for name := range spec.symlinks {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		for d := path.Dir(strings.TrimPrefix(name, "/")); d != "." && d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var dirNames []string
	for d := range dirs {
		dirNames = append(dirNames, d)
	}
	sort.Strings(dirNames)
	for _, d := range dirNames {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: imageEpoch}); err != nil {
			return err
		}
	}
	for _, name := range names {
		rel := strings.TrimPrefix(name, "/")
		if target, ok := spec.symlinks[name]; ok {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: rel, Linkname: target, Mode: 0o777, ModTime: imageEpoch}); err != nil {
				return err
			}
			continue
		}
		if err := addFile(tw, rel, spec.files[name]); err != nil {
			return err
		}
	}
	return tw.Close()
}

func addFile(tw *tar.Writer, name, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: st.Size(), Mode: int64(st.Mode().Perm()), ModTime: imageEpoch}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// paxXattrPrefix starts the PAX records that carry extended attributes, as
// GNU tar, Docker and containerd write and read them.
const paxXattrPrefix = "SCHILY.xattr."

// epoch is the timestamp of every file and of the image itself, so that a
// rebuild from the same inputs gives the same digest.
var epoch = time.Unix(0, 0).UTC()

// layer is the image's single filesystem layer, keyed by clean absolute path.
type layer struct {
	entries map[string]*entry
}

// entry is one file, directory or symbolic link. A regular file names the
// host file to read (hostPath) or holds its content (data), and may carry a
// file capability (the security.capability extended attribute's value).
type entry struct {
	typeflag   byte
	mode       int64
	hostPath   string
	data       []byte
	linkname   string
	capability []byte
}

func newLayer() *layer {
	return &layer{entries: map[string]*entry{"/": {typeflag: tar.TypeDir, mode: 0o755}}}
}

// put records e at p, creating its parent directories. Adding the same path
// twice is allowed only when both agree (libraries shared by several binaries).
func (l *layer) put(p string, e *entry) error {
	p = path.Clean("/" + p)
	if old, ok := l.entries[p]; ok {
		if old.typeflag == e.typeflag && old.hostPath == e.hostPath && old.linkname == e.linkname &&
			bytes.Equal(old.data, e.data) && bytes.Equal(old.capability, e.capability) {
			return nil
		}
		if old.typeflag == tar.TypeDir && e.typeflag == tar.TypeDir {
			return nil
		}
		return fmt.Errorf("%s added twice with different content", p)
	}
	for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
		if old, ok := l.entries[dir]; ok {
			if old.typeflag != tar.TypeDir {
				return fmt.Errorf("%s: parent %s is not a directory in the image", p, dir)
			}
			break
		}
		l.entries[dir] = &entry{typeflag: tar.TypeDir, mode: 0o755}
	}
	l.entries[p] = e
	return nil
}

// addHost copies the host file or directory src to dst, directories
// recursively. src itself is followed when it is a symbolic link (as a
// Dockerfile's COPY does: -add /usr/sbin/iptables:... copies the program);
// links inside a directory are copied as links.
func (l *layer) addHost(src, dst string) error {
	src, err := filepath.EvalSymlinks(src)
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := path.Join(dst, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		e, err := hostEntry(p, info)
		if err != nil {
			return err
		}
		return l.put(target, e)
	})
}

func hostEntry(p string, info fs.FileInfo) (*entry, error) {
	perm := int64(info.Mode().Perm())
	switch {
	case info.Mode().IsRegular():
		return &entry{typeflag: tar.TypeReg, mode: perm, hostPath: p}, nil
	case info.IsDir():
		return &entry{typeflag: tar.TypeDir, mode: perm}, nil
	case info.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return nil, fmt.Errorf("read link %s: %w", p, err)
		}
		return &entry{typeflag: tar.TypeSymlink, mode: 0o777, linkname: target}, nil
	default:
		return nil, fmt.Errorf("%s: unsupported file type %s", p, info.Mode().Type())
	}
}

// setCapability gives the regular file at p the file capability caps.
func (l *layer) setCapability(p string, caps []capability) error {
	e, ok := l.entries[path.Clean("/"+p)]
	if !ok || e.typeflag != tar.TypeReg {
		return fmt.Errorf("file capability for %s: not a regular file in the image", p)
	}
	xattr, err := fileCapabilityXattr(caps...)
	if err != nil {
		return fmt.Errorf("file capability for %s: %w", p, err)
	}
	e.capability = xattr
	return nil
}

// writeTar writes the layer as a tar stream: sorted paths, root-owned,
// fixed timestamps; file capabilities as PAX extended attribute records.
func (l *layer) writeTar(w io.Writer) error {
	paths := make([]string, 0, len(l.entries))
	for p := range l.entries {
		if p != "/" {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		e := l.entries[p]
		hdr := &tar.Header{
			Typeflag: e.typeflag,
			Name:     strings.TrimPrefix(p, "/"),
			Mode:     e.mode,
			ModTime:  epoch,
			Linkname: e.linkname,
			Format:   tar.FormatPAX,
		}
		if e.typeflag == tar.TypeDir {
			hdr.Name += "/"
		}
		if e.capability != nil {
			hdr.PAXRecords = map[string]string{paxXattrPrefix + xattrCapability: string(e.capability)}
		}
		content, err := e.content()
		if err != nil {
			return err
		}
		hdr.Size = int64(len(content))
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar header %s: %w", p, err)
		}
		if _, err := tw.Write(content); err != nil {
			return fmt.Errorf("tar %s: %w", p, err)
		}
	}
	return tw.Close()
}

func (e *entry) content() ([]byte, error) {
	if e.typeflag != tar.TypeReg || e.hostPath == "" {
		return e.data, nil
	}
	b, err := os.ReadFile(e.hostPath)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", e.hostPath, err)
	}
	return b, nil
}

package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// addLibraries adds, at their host paths, the shared libraries that the ELF
// file at hostPath loads (its ldd closure, dynamic loader included). Each
// library that is a symbolic link is added as the link plus its target, so
// the image has the same names the loader looks up. Files that are not ELF,
// or are statically linked, need nothing.
func (l *layer) addLibraries(hostPath string) error {
	dynamic, err := isDynamicELF(hostPath)
	if err != nil || !dynamic {
		return err
	}
	libs, err := lddClosure(hostPath)
	if err != nil {
		return err
	}
	for _, lib := range libs {
		if err := l.addFollowingLinks(lib); err != nil {
			return err
		}
	}
	return nil
}

// addFollowingLinks adds the host file p at the same path; when it is a
// symbolic link, also (recursively) the file it points to.
func (l *layer) addFollowingLinks(p string) error {
	for range 40 { // the kernel's own limit on symbolic link hops
		info, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("library %s: %w", p, err)
		}
		e, err := hostEntry(p, info)
		if err != nil {
			return err
		}
		if err := l.put(p, e); err != nil {
			return err
		}
		if e.typeflag != tar.TypeSymlink {
			return nil
		}
		if filepath.IsAbs(e.linkname) {
			p = e.linkname
		} else {
			p = filepath.Join(filepath.Dir(p), e.linkname)
		}
	}
	return fmt.Errorf("library %s: too many symbolic links", p)
}

func isDynamicELF(p string) (bool, error) {
	f, err := elf.Open(p)
	if err != nil {
		var formatErr *elf.FormatError
		if errors.As(err, &formatErr) {
			return false, nil
		}
		return false, fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_DYNAMIC {
			return true, nil
		}
	}
	return false, nil
}

// lddClosure asks the host's ldd for every shared object p needs, with the
// paths the dynamic loader resolves them to.
func lddClosure(p string) ([]string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("ldd", p)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", p, err, strings.TrimSpace(stderr.String()))
	}
	return parseLdd(stdout.String())
}

// parseLdd reads ldd's lines: "name => /path (addr)", "/path (addr)" for the
// loader, and "name (addr)" for the kernel's vDSO, which has no file.
func parseLdd(out string) ([]string, error) {
	var libs []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line == "statically linked" {
			continue
		}
		if name, rest, ok := strings.Cut(line, "=>"); ok {
			rest = strings.TrimSpace(rest)
			if strings.HasPrefix(rest, "not found") {
				return nil, fmt.Errorf("ldd: %s not found", strings.TrimSpace(name))
			}
			line = rest
		}
		file, _, _ := strings.Cut(line, " (")
		if strings.HasPrefix(file, "/") {
			libs = append(libs, file)
		}
	}
	return libs, sc.Err()
}

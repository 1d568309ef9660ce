package certs

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/testutil"
)

// issuePair makes a serving certificate and key like cert-manager would.
func issuePair(t *testing.T) *keyPair {
	t.Helper()
	now := time.Now()
	ca, err := newCA("test CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := issueServing(ca, servingNames{dnsNames: []string{"webhook.dns.svc"}}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func writePair(t *testing.T, dir string, kp *keyPair) {
	t.Helper()
	for name, data := range map[string][]byte{SecretKeyTLSCert: kp.certPEM, SecretKeyTLSKey: kp.keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// secretVolume lays files out as the kubelet does for a Secret volume:
// tls.crt -> ..data/tls.crt, ..data -> a timestamped directory. Updating it
// writes a new directory and swaps the ..data symlink atomically.
type secretVolume struct {
	dir     string
	version int
}

func (v *secretVolume) publish(t *testing.T, kp *keyPair) {
	t.Helper()
	v.version++
	gen := filepath.Join(v.dir, fmt.Sprintf("..gen%d", v.version))
	if err := os.Mkdir(gen, 0o700); err != nil {
		t.Fatal(err)
	}
	writePair(t, gen, kp)
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if v.version == 1 {
		for _, name := range []string{SecretKeyTLSCert, SecretKeyTLSKey} {
			if err := os.Symlink(filepath.Join("..data", name), filepath.Join(v.dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	old := filepath.Join(v.dir, fmt.Sprintf("..gen%d", v.version-1))
	if err := os.RemoveAll(old); err != nil {
		t.Fatal(err)
	}
}

func TestFromDirReloads(t *testing.T) {
	tests := []struct {
		name    string
		publish func(t *testing.T, dir string) func(*testing.T, *keyPair)
	}{
		{"files rewritten in place", func(t *testing.T, dir string) func(*testing.T, *keyPair) {
			return func(t *testing.T, kp *keyPair) { writePair(t, dir, kp) }
		}},
		{"secret volume symlink swap", func(t *testing.T, dir string) func(*testing.T, *keyPair) {
			return (&secretVolume{dir: dir}).publish
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			publish := tc.publish(t, dir)
			first, second := issuePair(t), issuePair(t)
			publish(t, first)

			src, err := NewFromDir(dir)
			if err != nil {
				t.Fatalf("NewFromDir: %v", err)
			}
			if !servedLeaf(t, src).Equal(first.cert) {
				t.Fatal("initial certificate not served")
			}
			startSource(t, src)
			publish(t, second)
			testutil.Eventually(t, "the rewritten certificate is served", func() bool {
				return servedLeaf(t, src).Equal(second.cert)
			})
		})
	}
}

func TestFromDirFailsWithoutFiles(t *testing.T) {
	if _, err := NewFromDir(t.TempDir()); err == nil {
		t.Fatal("NewFromDir accepted a directory without tls.crt and tls.key")
	}
}

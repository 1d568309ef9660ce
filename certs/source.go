// Package certs provides the webhook's serving certificate and keeps it
// current while the server runs, so certificates rotate without a restart.
//
// Two sources implement Source:
//   - NewSelfManaged: generates a CA and a serving certificate, stores them in
//     a Secret shared by every replica, writes the CA bundle into the
//     MutatingWebhookConfiguration, and rotates both before they expire;
//   - NewFromDir: reads tls.crt and tls.key written by someone else
//     (cert-manager) and reloads them when they change.
//
// Either way the server sets tls.Config.GetCertificate to the Source's
// GetCertificate: every new handshake gets the current certificate, and
// connections already open keep the one they negotiated.
package certs

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
)

// Source serves the current certificate. Start runs as a controller-runtime
// manager.Runnable on every replica (sources report NeedLeaderElection false)
// and keeps the certificate current until ctx ends.
type Source interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	Start(ctx context.Context) error
}

// NewFromDir serves dir/tls.crt with dir/tls.key, the layout of a
// kubernetes.io/tls Secret mounted as a volume (as cert-manager writes it).
// The files are read once now, so a missing or bad pair fails at start; Start
// then reloads them on change (inotify, and a periodic re-read as a fallback
// for changes inotify misses, such as a Secret volume swapping its symlink).
func NewFromDir(dir string) (Source, error) {
	w, err := certwatcher.New(filepath.Join(dir, corev1.TLSCertKey), filepath.Join(dir, corev1.TLSPrivateKeyKey))
	if err != nil {
		return nil, fmt.Errorf("load certificate from %s: %w", dir, err)
	}
	return w, nil
}

package certs

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/localdns/localdns/internal/contract"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Defaults of SelfManagedConfig.
const (
	DefaultCAValidity    = 5 * 365 * 24 * time.Hour
	DefaultCertValidity  = 365 * 24 * time.Hour
	DefaultCheckInterval = time.Minute
	DefaultClusterDomain = contract.ClusterDomain
)

// maxWriteAttempts bounds how often one step re-reads the Secret after losing
// a write race to another replica. Losing more than twice in a row means
// replicas keep disagreeing; the next step tries again.
const maxWriteAttempts = 3

// SelfManagedConfig configures NewSelfManaged. Zero durations take the
// defaults.
type SelfManagedConfig struct {
	Namespace   string // of the Secret and the Service
	SecretName  string // holds the CA, the bundle and the serving certificate
	ServiceName string // the webhook's Service: names <svc>, <svc>.<ns>, <svc>.<ns>.svc[.<domain>]
	// WebhookConfigName is the MutatingWebhookConfiguration whose every
	// webhook gets the CA bundle; empty: none is managed.
	WebhookConfigName string
	ClusterDomain     string   // default DefaultClusterDomain
	ExtraDNSNames     []string // more names for the serving certificate (e.g. localhost in tests)
	ExtraIPs          []net.IP // IP addresses for the serving certificate

	CAValidity   time.Duration // default DefaultCAValidity (5 years)
	CertValidity time.Duration // default DefaultCertValidity (1 year); never beyond the CA's expiry
	// CARotateBefore stages a new CA when less than this remains of the
	// current one; default one third of the CA's lifetime (20 months of 5 years).
	CARotateBefore time.Duration
	// CertRotateBefore renews the serving certificate when less than this
	// remains; default one third of its lifetime (4 months of 1 year).
	CertRotateBefore time.Duration
	// CheckInterval is how often Start re-reads the Secret and the webhook
	// configuration besides reacting to their watch events; default 1 minute.
	CheckInterval time.Duration

	Now    func() time.Time // default time.Now; tests inject a clock
	Logger logr.Logger      // the zero Logger discards
}

func (c SelfManagedConfig) withDefaults() (SelfManagedConfig, error) {
	var problems []error
	for _, f := range []struct{ name, value string }{
		{"Namespace", c.Namespace}, {"SecretName", c.SecretName}, {"ServiceName", c.ServiceName},
	} {
		if f.value == "" {
			problems = append(problems, fmt.Errorf("%s is required", f.name))
		}
	}
	c.CAValidity = cmp.Or(c.CAValidity, DefaultCAValidity)
	c.CertValidity = cmp.Or(c.CertValidity, DefaultCertValidity)
	c.CheckInterval = cmp.Or(c.CheckInterval, DefaultCheckInterval)
	c.ClusterDomain = cmp.Or(c.ClusterDomain, DefaultClusterDomain)
	if c.Now == nil {
		c.Now = time.Now
	}
	for _, f := range []struct {
		name  string
		value time.Duration
	}{
		{"CAValidity", c.CAValidity}, {"CertValidity", c.CertValidity}, {"CheckInterval", c.CheckInterval},
		{"CARotateBefore", c.CARotateBefore}, {"CertRotateBefore", c.CertRotateBefore},
	} {
		if f.value < 0 {
			problems = append(problems, fmt.Errorf("%s %v is negative", f.name, f.value))
		}
	}
	if c.CertValidity > c.CAValidity {
		problems = append(problems, fmt.Errorf("CertValidity %v exceeds CAValidity %v", c.CertValidity, c.CAValidity))
	}
	if c.CARotateBefore >= c.CAValidity {
		problems = append(problems, fmt.Errorf("CARotateBefore %v is not below CAValidity %v", c.CARotateBefore, c.CAValidity))
	}
	if c.CertRotateBefore >= c.CertValidity {
		problems = append(problems, fmt.Errorf("CertRotateBefore %v is not below CertValidity %v", c.CertRotateBefore, c.CertValidity))
	}
	if err := errors.Join(problems...); err != nil {
		return c, fmt.Errorf("self-managed certificate config: %w", err)
	}
	return c, nil
}

func (c SelfManagedConfig) policy() policy {
	svc, ns := c.ServiceName, c.Namespace
	names := servingNames{
		dnsNames: append([]string{
			svc + "." + ns + ".svc",
			svc + "." + ns + ".svc." + c.ClusterDomain,
			svc + "." + ns,
			svc,
		}, c.ExtraDNSNames...),
		ips: c.ExtraIPs,
	}
	return policy{
		caCommonName:    svc + "." + ns + " webhook CA",
		names:           names,
		caValidity:      c.CAValidity,
		certValidity:    c.CertValidity,
		caRenewBefore:   c.CARotateBefore,
		certRenewBefore: c.CertRotateBefore,
	}
}

// SelfManaged is the Source that generates and rotates its own PKI; see
// NewSelfManaged.
type SelfManaged struct {
	client kubernetes.Interface
	cfg    SelfManagedConfig
	policy policy
	log    logr.Logger

	served atomic.Pointer[tls.Certificate]
	bundle atomic.Pointer[[]byte]

	step                 sync.Mutex // one Reconcile at a time; guards the fields below
	servedPEM            []byte
	webhookConfigMissing bool // the last step did not find it: its absence is logged once
}

var _ Source = (*SelfManaged)(nil)

// NewSelfManaged bootstraps synchronously: it loads the CA and the serving
// certificate for the Service from the Secret, or creates them (the first
// replica to create the Secret wins; the others adopt its content), and
// writes the CA bundle into the webhook configuration. A missing webhook
// configuration is not an error: Start keeps trying. It fails only when no
// certificate could be obtained.
//
// Two replicas share one Secret: every write carries the resourceVersion it
// was planned from, and a replica that loses re-reads and adopts the winner's
// certificate, so replicas converge on one CA and one serving certificate.
func NewSelfManaged(ctx context.Context, c kubernetes.Interface, cfg SelfManagedConfig) (Source, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &SelfManaged{
		client: c,
		cfg:    cfg,
		policy: cfg.policy(),
		log:    cfg.Logger.WithValues("secret", cfg.Namespace+"/"+cfg.SecretName),
	}
	if err := s.Reconcile(ctx); err != nil {
		if s.served.Load() == nil {
			return nil, fmt.Errorf("bootstrap serving certificate: %w", err)
		}
		s.log.Error(err, "Bootstrap incomplete, retrying in the background")
	}
	return s, nil
}

// GetCertificate returns the current serving certificate, for
// tls.Config.GetCertificate.
func (s *SelfManaged) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.served.Load(), nil
}

// CABundle returns the PEM bundle of the CAs clients must trust (the value
// written into the webhook configuration).
func (s *SelfManaged) CABundle() []byte {
	if b := s.bundle.Load(); b != nil {
		return bytes.Clone(*b)
	}
	return nil
}

// NeedLeaderElection tells controller-runtime's manager to run Start on
// every replica: each one serves and must keep its own certificate current.
func (s *SelfManaged) NeedLeaderElection() bool { return false }

// Start reconciles every CheckInterval and whenever the Secret or the webhook
// configuration changes, until ctx ends. Errors are logged and retried.
func (s *SelfManaged) Start(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	stopWatches, err := s.watch(ctx, func() {
		select {
		case wake <- struct{}{}:
		default: // a step is already pending; it will see this change too
		}
	})
	if err != nil {
		return err
	}
	defer stopWatches()
	ticker := time.NewTicker(s.cfg.CheckInterval)
	defer ticker.Stop()
	s.log.Info("Watching self-managed certificates", "checkInterval", s.cfg.CheckInterval)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		case <-wake:
		}
		if err := s.Reconcile(ctx); err != nil && ctx.Err() == nil {
			s.log.Error(err, "Certificate reconcile failed, retrying later")
		}
	}
}

// Reconcile runs one step: read the webhook configuration, bring the Secret
// up to date (creating, renewing or rotating as due at cfg.Now), serve its
// certificate, and write its bundle into the webhook configuration. Start
// calls it; tests call it to step without waiting for a ticker.
func (s *SelfManaged) Reconcile(ctx context.Context) error {
	s.step.Lock()
	defer s.step.Unlock()

	whc, trusted, whcErr := s.readWebhookConfig(ctx)
	st, err := s.syncSecret(ctx, trusted)
	if err != nil {
		return errors.Join(err, whcErr)
	}
	s.serve(st)
	if whcErr != nil {
		return whcErr
	}
	return s.publishBundle(ctx, whc, encodeBundle(st.bundle))
}

// syncSecret reads the Secret, plans, and writes the plan if it changes
// anything. On a lost race it re-reads and plans again from the winner's
// content.
func (s *SelfManaged) syncSecret(ctx context.Context, trusted func(*x509.Certificate) bool) (pkiState, error) {
	secrets := s.client.CoreV1().Secrets(s.cfg.Namespace)
	for range maxWriteAttempts {
		secret, err := secrets.Get(ctx, s.cfg.SecretName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			secret = nil
		case err != nil:
			return pkiState{}, fmt.Errorf("read Secret %s/%s: %w", s.cfg.Namespace, s.cfg.SecretName, err)
		}
		var data map[string][]byte
		if secret != nil {
			data = secret.Data
		}
		cur, problems := decodeState(data)
		for _, p := range problems {
			s.log.Info("Replacing unusable Secret entry", "problem", p)
		}
		next, reasons, err := s.policy.plan(cur, s.cfg.Now(), trusted)
		if err != nil {
			return pkiState{}, fmt.Errorf("plan certificates: %w", err)
		}
		if len(reasons) == 0 {
			return next, nil
		}
		if secret == nil {
			_, err = secrets.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: s.cfg.SecretName, Namespace: s.cfg.Namespace},
				Type:       corev1.SecretTypeOpaque,
				Data:       next.encodeInto(nil),
			}, metav1.CreateOptions{})
		} else {
			secret = secret.DeepCopy()
			secret.Data = next.encodeInto(secret.Data)
			_, err = secrets.Update(ctx, secret, metav1.UpdateOptions{})
		}
		switch {
		case apierrors.IsAlreadyExists(err), apierrors.IsConflict(err):
			s.log.Info("Another replica wrote the Secret first, re-reading")
			continue
		case err != nil:
			return pkiState{}, fmt.Errorf("write Secret %s/%s: %w", s.cfg.Namespace, s.cfg.SecretName, err)
		}
		s.log.Info("Wrote Secret", "created", secret == nil, "reasons", reasons)
		return next, nil
	}
	return pkiState{}, fmt.Errorf("write Secret %s/%s: lost %d races in a row to other writers", s.cfg.Namespace, s.cfg.SecretName, maxWriteAttempts)
}

// serve swaps in st's serving certificate if it is new. Handshakes already
// done keep theirs; the next handshake gets the new one.
func (s *SelfManaged) serve(st pkiState) {
	bundle := encodeBundle(st.bundle)
	s.bundle.Store(&bundle)
	if bytes.Equal(st.serving.certPEM, s.servedPEM) {
		return
	}
	leaf := st.serving.cert
	s.served.Store(&tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: st.serving.key, Leaf: leaf})
	s.servedPEM = st.serving.certPEM
	s.log.Info("Serving new certificate", "serial", leaf.SerialNumber.Text(16),
		"issuer", leaf.Issuer.CommonName, "notAfter", leaf.NotAfter.UTC())
}

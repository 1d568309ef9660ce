package certs

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
)

func trustAll(*x509.Certificate) bool  { return true }
func trustNone(*x509.Certificate) bool { return false }

// readWebhookConfig returns the webhook configuration (nil when none is
// managed or it does not exist) and which CAs its clients trust. With no
// configuration there is no client to keep in step, so every CA counts as
// trusted; when it cannot be read, none does, so no staged CA is promoted.
func (s *SelfManaged) readWebhookConfig(ctx context.Context) (*admissionv1.MutatingWebhookConfiguration, func(*x509.Certificate) bool, error) {
	name := s.cfg.WebhookConfigName
	if name == "" {
		return nil, trustAll, nil
	}
	whc, err := s.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if !s.webhookConfigMissing {
			s.log.Info("MutatingWebhookConfiguration not found; its CA bundle will be written when it appears", "webhookConfiguration", name)
		}
		s.webhookConfigMissing = true
		return nil, trustAll, nil
	case err != nil:
		return nil, trustNone, fmt.Errorf("read MutatingWebhookConfiguration %s: %w", name, err)
	}
	s.webhookConfigMissing = false
	trusted := func(ca *x509.Certificate) bool {
		for _, wh := range whc.Webhooks {
			if !bundleContains(wh.ClientConfig.CABundle, ca) {
				return false
			}
		}
		return true
	}
	return whc, trusted, nil
}

// publishBundle sets every webhook's caBundle to bundle, writing only when
// one differs. whc is the configuration as last read; on a conflict it is
// read again.
func (s *SelfManaged) publishBundle(ctx context.Context, whc *admissionv1.MutatingWebhookConfiguration, bundle []byte) error {
	if whc == nil {
		return nil
	}
	api := s.client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	name := whc.Name
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if whc == nil {
			fresh, err := api.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			whc = fresh
		}
		stale := 0
		for i := range whc.Webhooks {
			if !bytes.Equal(whc.Webhooks[i].ClientConfig.CABundle, bundle) {
				whc.Webhooks[i].ClientConfig.CABundle = bundle
				stale++
			}
		}
		if stale == 0 {
			return nil
		}
		_, err := api.Update(ctx, whc, metav1.UpdateOptions{})
		whc = nil
		if err == nil {
			s.log.Info("Wrote CA bundle into MutatingWebhookConfiguration", "webhookConfiguration", name, "webhooks", stale)
		}
		return err
	})
	if apierrors.IsNotFound(err) {
		return nil // deleted meanwhile; the next step notices
	}
	if err != nil {
		return fmt.Errorf("write CA bundle into MutatingWebhookConfiguration %s: %w", name, err)
	}
	return nil
}

// watch calls notify whenever the Secret or the webhook configuration
// changes, so another replica's rotation or a re-applied manifest that
// cleared the caBundle is acted on at once rather than at the next tick. The
// watches select one object by name, which RBAC can grant by resourceNames.
// The returned function waits for the watches to end after ctx is done.
func (s *SelfManaged) watch(ctx context.Context, notify func()) (func(), error) {
	byName := func(name string) informers.SharedInformerOption {
		return informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		})
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	secrets := informers.NewSharedInformerFactoryWithOptions(s.client, 0,
		informers.WithNamespace(s.cfg.Namespace), byName(s.cfg.SecretName))
	if _, err := secrets.Core().V1().Secrets().Informer().AddEventHandler(handler); err != nil {
		return nil, fmt.Errorf("watch Secret %s/%s: %w", s.cfg.Namespace, s.cfg.SecretName, err)
	}
	factories := []informers.SharedInformerFactory{secrets}
	if name := s.cfg.WebhookConfigName; name != "" {
		configs := informers.NewSharedInformerFactoryWithOptions(s.client, 0, byName(name))
		if _, err := configs.Admissionregistration().V1().MutatingWebhookConfigurations().Informer().AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("watch MutatingWebhookConfiguration %s: %w", name, err)
		}
		factories = append(factories, configs)
	}
	for _, f := range factories {
		f.Start(ctx.Done())
	}
	return func() {
		for _, f := range factories {
			f.Shutdown()
		}
	}, nil
}

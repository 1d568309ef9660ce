package kubectlplugin

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	certutil "k8s.io/client-go/util/cert"
)

// expiryWarning is how long before the newest CA's expiry status warns.
const expiryWarning = 30 * 24 * time.Hour

// checkCABundle checks the caBundle of every webhook entry: set, parseable,
// the same everywhere, and holding a CA valid at now. The API server
// verifies the webhook's serving certificate against it; the admission
// check proves that chain works, this one how long it will.
func checkCABundle(whc *admissionregistrationv1.MutatingWebhookConfiguration, now time.Time) Check {
	const name = "caBundle"
	if whc == nil || len(whc.Webhooks) == 0 {
		return failed(name, "no webhook configuration to hold it")
	}
	first := whc.Webhooks[0]
	for _, w := range whc.Webhooks {
		if len(w.ClientConfig.CABundle) == 0 {
			return failed(name, fmt.Sprintf("webhook %s has no caBundle: the webhook has not written it yet (self-managed TLS), or cert-manager's cainjector has not", w.Name))
		}
		if !bytes.Equal(w.ClientConfig.CABundle, first.ClientConfig.CABundle) {
			return warned(name, fmt.Sprintf("webhooks %s and %s carry different caBundles", first.Name, w.Name))
		}
	}
	cas, err := certutil.ParseCertsPEM(first.ClientConfig.CABundle)
	if err != nil {
		return failed(name, fmt.Sprintf("the caBundle of webhook %s does not parse: %v", first.Name, err))
	}
	detail := describeCAs(cas, now)
	valid := slices.DeleteFunc(slices.Clone(cas), func(c *x509.Certificate) bool { return now.Before(c.NotBefore) || !now.Before(c.NotAfter) })
	if len(valid) == 0 {
		return failed(name, "no CA of the bundle is valid now: "+detail)
	}
	newest := slices.MaxFunc(valid, func(a, b *x509.Certificate) int { return a.NotAfter.Compare(b.NotAfter) })
	if newest.NotAfter.Sub(now) < expiryWarning {
		return warned(name, "expires soon: "+detail)
	}
	return passed(name, detail)
}

// describeCAs lists the certificates of a bundle with their expiry.
func describeCAs(cas []*x509.Certificate, now time.Time) string {
	parts := make([]string, len(cas))
	for i, c := range cas {
		state := "expires"
		if !now.Before(c.NotAfter) {
			state = "expired"
		}
		parts[i] = fmt.Sprintf("CA %q %s %s (%s)", c.Subject.CommonName, state, c.NotAfter.UTC().Format(time.DateOnly), relative(c.NotAfter, now))
	}
	return strings.Join(parts, ", ")
}

// relative says how far t is from now, in kubectl's age units.
func relative(t, now time.Time) string {
	if t.After(now) {
		return "in " + duration.HumanDuration(t.Sub(now))
	}
	return duration.HumanDuration(now.Sub(t)) + " ago"
}

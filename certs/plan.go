package certs

import (
	"crypto/x509"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Keys of the Secret that holds the self-managed PKI. tls.crt and tls.key
// use the kubernetes.io/tls names so the Secret reads like a TLS Secret.
const (
	SecretKeyCACert     = "ca.crt"        // the CA that signs the serving certificate
	SecretKeyCAKey      = "ca.key"        // its private key
	SecretKeyNextCACert = "next-ca.crt"   // a CA staged for rotation, already trusted, not yet signing
	SecretKeyNextCAKey  = "next-ca.key"   // its private key
	SecretKeyCABundle   = "ca-bundle.crt" // every CA clients must trust, newest first: the caBundle
	SecretKeyTLSCert    = corev1.TLSCertKey
	SecretKeyTLSKey     = corev1.TLSPrivateKeyKey
)

// pkiState is the content of the Secret, parsed. A nil field is absent or
// was unusable.
type pkiState struct {
	ca      *keyPair
	nextCA  *keyPair
	bundle  []*x509.Certificate
	serving *keyPair
}

// decodeState parses a Secret's data. Unusable entries become absent, so the
// planner replaces them; their problems are returned for the log.
func decodeState(data map[string][]byte) (pkiState, []string) {
	var st pkiState
	var problems []string
	pair := func(certKey, keyKey string) *keyPair {
		if len(data[certKey]) == 0 && len(data[keyKey]) == 0 {
			return nil
		}
		kp, err := parseKeyPair(data[certKey], data[keyKey])
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", certKey, err))
			return nil
		}
		return kp
	}
	st.ca = pair(SecretKeyCACert, SecretKeyCAKey)
	st.nextCA = pair(SecretKeyNextCACert, SecretKeyNextCAKey)
	st.serving = pair(SecretKeyTLSCert, SecretKeyTLSKey)
	if raw := data[SecretKeyCABundle]; len(raw) > 0 {
		bundle, err := parseCertificates(raw)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", SecretKeyCABundle, err))
		}
		st.bundle = bundle
	}
	return st, problems
}

// encodeInto writes the state into a copy of data, keeping keys it does not
// own.
func (st pkiState) encodeInto(data map[string][]byte) map[string][]byte {
	out := make(map[string][]byte, len(data)+7)
	for k, v := range data {
		out[k] = v
	}
	put := func(certKey, keyKey string, kp *keyPair) {
		if kp == nil {
			delete(out, certKey)
			delete(out, keyKey)
			return
		}
		out[certKey], out[keyKey] = kp.certPEM, kp.keyPEM
	}
	put(SecretKeyCACert, SecretKeyCAKey, st.ca)
	put(SecretKeyNextCACert, SecretKeyNextCAKey, st.nextCA)
	put(SecretKeyTLSCert, SecretKeyTLSKey, st.serving)
	out[SecretKeyCABundle] = encodeBundle(st.bundle)
	return out
}

// caPromotionDelay is how long a staged CA must have been staged before it
// signs. The webhook configuration already holds it when it is promoted, but
// every API server reads that configuration through its own watch cache;
// this gives them time to catch up (a staged CA is due 20 months before the
// old one expires, so an hour costs nothing).
const caPromotionDelay = time.Hour

// policy is what the planner needs from the configuration.
type policy struct {
	caCommonName    string
	names           servingNames
	caValidity      time.Duration
	certValidity    time.Duration
	caRenewBefore   time.Duration // 0: one third of the CA's lifetime
	certRenewBefore time.Duration // 0: one third of the serving certificate's lifetime
}

// plan computes the state to store at now, and why it differs from cur (no
// reasons: nothing to write). trusted reports whether every client that must
// verify the webhook (the webhook configuration's caBundle) already trusts a
// CA; a staged CA starts signing only once it is trusted.
//
// CA rotation runs in two stages so no client ever sees a certificate signed
// by a CA it does not trust yet:
//  1. the CA is due: a new CA is staged and added to the bundle (new, old);
//  2. a step at least caPromotionDelay later sees the bundle in the webhook
//     configuration: the new CA is promoted and signs a new serving
//     certificate. The old CA stays in the bundle until it expires, so
//     certificates it signed, still served by replicas that have not
//     re-read the Secret, keep verifying.
func (p policy) plan(cur pkiState, now time.Time, trusted func(*x509.Certificate) bool) (pkiState, []string, error) {
	next := cur
	var reasons []string
	if next.ca == nil || next.ca.remaining(now) <= 0 {
		if next.nextCA != nil && next.nextCA.remaining(now) > 0 {
			next.ca, next.nextCA = next.nextCA, nil
			reasons = append(reasons, "staged CA promoted: current CA missing or expired")
		} else {
			ca, err := newCA(p.caName(now), now, p.caValidity)
			if err != nil {
				return cur, nil, err
			}
			next.ca, next.nextCA = ca, nil
			reasons = append(reasons, "CA created")
		}
	}
	if next.nextCA == nil && next.ca.dueForRenewal(now, p.caRenewBefore) {
		staged, err := newCA(p.caName(now), now, p.caValidity)
		if err != nil {
			return cur, nil, err
		}
		next.nextCA = staged
		reasons = append(reasons, "CA rotation staged")
	}
	if next.nextCA != nil && !now.Before(stagedAt(next.nextCA).Add(caPromotionDelay)) && trusted(next.nextCA.cert) {
		next.ca, next.nextCA = next.nextCA, nil
		reasons = append(reasons, "staged CA promoted")
	}

	next.bundle = buildBundle(next, cur.bundle, now)
	if !slices.EqualFunc(next.bundle, cur.bundle, (*x509.Certificate).Equal) {
		reasons = append(reasons, "CA bundle changed")
	}

	if why := p.servingProblem(next, now); why != "" {
		serving, err := issueServing(next.ca, p.names, now, p.certValidity)
		if err != nil {
			return cur, nil, err
		}
		next.serving = serving
		reasons = append(reasons, "serving certificate issued: "+why)
	}
	return next, reasons, nil
}

// stagedAt is when a CA was created (its NotBefore is backdated).
func stagedAt(ca *keyPair) time.Time { return ca.cert.NotBefore.Add(backdate) }

// caName makes each CA's subject unique, so logs and bundles tell them apart.
func (p policy) caName(now time.Time) string {
	return fmt.Sprintf("%s@%d", p.caCommonName, now.Unix())
}

// buildBundle lists the CAs to trust, newest first: the staged CA, the
// signing CA, then earlier CAs from the old bundle until they expire.
func buildBundle(st pkiState, old []*x509.Certificate, now time.Time) []*x509.Certificate {
	var bundle []*x509.Certificate
	add := func(c *x509.Certificate) {
		if c.NotAfter.After(now) && !slices.ContainsFunc(bundle, c.Equal) {
			bundle = append(bundle, c)
		}
	}
	if st.nextCA != nil {
		add(st.nextCA.cert)
	}
	add(st.ca.cert)
	for _, c := range old {
		if c.IsCA {
			add(c)
		}
	}
	return bundle
}

// servingProblem says why the serving certificate must be (re)issued, or "".
func (p policy) servingProblem(st pkiState, now time.Time) string {
	s := st.serving
	switch {
	case s == nil:
		return "missing"
	case !p.names.covers(s.cert):
		return "names changed"
	case s.cert.CheckSignatureFrom(st.ca.cert) != nil:
		return "not signed by the current CA"
	case s.cert.NotBefore.After(now):
		return "not valid yet"
	case !s.cert.NotAfter.Before(st.ca.cert.NotAfter):
		// It already lives as long as its CA: a new one could not live longer.
		return ""
	case s.dueForRenewal(now, p.certRenewBefore):
		return "due for renewal"
	}
	return ""
}

package certs

import (
	"crypto/x509"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func testPolicy() policy {
	cfg, err := SelfManagedConfig{
		Namespace: "dns", SecretName: "certs", ServiceName: "webhook",
		ExtraDNSNames: []string{"localhost"}, ExtraIPs: []net.IP{net.IPv4(127, 0, 0, 1)},
	}.withDefaults()
	if err != nil {
		panic(err)
	}
	return cfg.policy()
}

// mustPlan plans and fails the test on error.
func mustPlan(t *testing.T, p policy, cur pkiState, now time.Time, trusted func(*x509.Certificate) bool) (pkiState, []string) {
	t.Helper()
	next, reasons, err := p.plan(cur, now, trusted)
	if err != nil {
		t.Fatalf("plan at %v: %v", now, err)
	}
	return next, reasons
}

// verifyServing checks that st's serving certificate verifies at now for
// every name against a pool holding only st's bundle.
func verifyServing(t *testing.T, st pkiState, names servingNames, now time.Time) {
	t.Helper()
	roots := x509.NewCertPool()
	for _, c := range st.bundle {
		roots.AddCert(c)
	}
	hosts := slices.Clone(names.dnsNames)
	for _, ip := range names.ips {
		hosts = append(hosts, ip.String())
	}
	for _, h := range hosts {
		_, err := st.serving.cert.Verify(x509.VerifyOptions{
			DNSName: h, Roots: roots, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			t.Errorf("serving certificate does not verify for %q at %v: %v", h, now, err)
		}
	}
}

func hasReason(reasons []string, prefix string) bool {
	return slices.ContainsFunc(reasons, func(r string) bool { return strings.HasPrefix(r, prefix) })
}

func TestGenerationFromEmpty(t *testing.T) {
	p := testPolicy()
	st, reasons := mustPlan(t, p, pkiState{}, t0, trustAll)
	for _, want := range []string{"CA created", "CA bundle changed", "serving certificate issued: missing"} {
		if !hasReason(reasons, want) {
			t.Errorf("reasons %q lack %q", reasons, want)
		}
	}

	ca := st.ca.cert
	if !ca.IsCA || !ca.BasicConstraintsValid || ca.MaxPathLen != 0 || !ca.MaxPathLenZero {
		t.Errorf("CA constraints: IsCA=%v MaxPathLen=%d", ca.IsCA, ca.MaxPathLen)
	}
	if ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA key usage %v lacks CertSign", ca.KeyUsage)
	}
	if got := ca.NotAfter.Sub(t0); got != DefaultCAValidity {
		t.Errorf("CA valid for %v after issue, want %v", got, DefaultCAValidity)
	}

	leaf := st.serving.cert
	wantNames := []string{"webhook.dns.svc", "webhook.dns.svc.cluster.local", "webhook.dns", "webhook", "localhost"}
	if !slices.Equal(leaf.DNSNames, wantNames) {
		t.Errorf("DNS names %q, want %q", leaf.DNSNames, wantNames)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("IP addresses %v, want [127.0.0.1]", leaf.IPAddresses)
	}
	if leaf.Subject.CommonName != "webhook.dns.svc" {
		t.Errorf("common name %q", leaf.Subject.CommonName)
	}
	if leaf.IsCA {
		t.Error("serving certificate is a CA")
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("extended key usage %v, want [ServerAuth]", leaf.ExtKeyUsage)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("key usage %v, want DigitalSignature only", leaf.KeyUsage)
	}
	if got := leaf.NotAfter.Sub(t0); got != DefaultCertValidity {
		t.Errorf("serving certificate valid for %v after issue, want %v", got, DefaultCertValidity)
	}
	if !leaf.NotBefore.Before(t0) {
		t.Errorf("NotBefore %v is not backdated before %v", leaf.NotBefore, t0)
	}
	if len(st.bundle) != 1 || !st.bundle[0].Equal(ca) {
		t.Errorf("bundle holds %d certificates, want the CA alone", len(st.bundle))
	}
	verifyServing(t, st, p.names, t0)

	// The stored form decodes to the same state, and planning again changes nothing.
	decoded, problems := decodeState(st.encodeInto(nil))
	if len(problems) != 0 {
		t.Fatalf("decode problems: %q", problems)
	}
	if again, reasons := mustPlan(t, p, decoded, t0.Add(time.Hour), trustAll); len(reasons) != 0 || !again.serving.cert.Equal(leaf) {
		t.Errorf("second plan changed %q", reasons)
	}
}

func TestServingRenewalThreshold(t *testing.T) {
	base, _ := mustPlan(t, testPolicy(), pkiState{}, t0, trustAll)
	leaf := base.serving.cert
	threshold := leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore) / 3) // one third of its validity left
	tests := []struct {
		name        string
		renewBefore time.Duration
		now         time.Time
		renew       bool
	}{
		{"fresh", 0, t0.Add(time.Hour), false},
		{"just before a third left", 0, threshold.Add(-time.Second), false},
		{"just after a third left", 0, threshold.Add(time.Second), true},
		{"expired", 0, leaf.NotAfter.Add(time.Hour), true},
		{"explicit window not reached", 30 * 24 * time.Hour, leaf.NotAfter.Add(-31 * 24 * time.Hour), false},
		{"explicit window reached", 30 * 24 * time.Hour, leaf.NotAfter.Add(-29 * 24 * time.Hour), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := testPolicy()
			p.certRenewBefore = tc.renewBefore
			st, reasons := mustPlan(t, p, base, tc.now, trustAll)
			if renewed := !st.serving.cert.Equal(leaf); renewed != tc.renew {
				t.Fatalf("renewed=%v, want %v (reasons %q)", renewed, tc.renew, reasons)
			}
			if !st.ca.cert.Equal(base.ca.cert) {
				t.Error("CA changed while only the serving certificate was due")
			}
			if tc.renew {
				if !hasReason(reasons, "serving certificate issued: due for renewal") {
					t.Errorf("reasons %q", reasons)
				}
				verifyServing(t, st, p.names, tc.now)
			}
		})
	}
}

func TestServingReissuedWhenNamesChange(t *testing.T) {
	base, _ := mustPlan(t, testPolicy(), pkiState{}, t0, trustAll)

	fewer := testPolicy()
	fewer.names.dnsNames = fewer.names.dnsNames[:4]
	if _, reasons := mustPlan(t, fewer, base, t0, trustAll); len(reasons) != 0 {
		t.Errorf("a certificate with extra names was replaced: %q", reasons)
	}

	more := testPolicy()
	more.names.dnsNames = append(more.names.dnsNames, "webhook.example")
	st, reasons := mustPlan(t, more, base, t0, trustAll)
	if !hasReason(reasons, "serving certificate issued: names changed") || !slices.Contains(st.serving.cert.DNSNames, "webhook.example") {
		t.Errorf("new name not picked up: reasons %q, names %q", reasons, st.serving.cert.DNSNames)
	}
}

// TestCARotation walks one CA lifetime: staging, waiting for the webhook
// configuration to trust the staged CA, promotion, the overlap during which
// both CAs are in the bundle, and the old CA's removal once it expires.
func TestCARotation(t *testing.T) {
	p := testPolicy()
	st, _ := mustPlan(t, p, pkiState{}, t0, trustAll)
	oldCA := st.ca.cert
	caDue := oldCA.NotAfter.Add(-oldCA.NotAfter.Sub(oldCA.NotBefore) / 3)

	// Before the CA is due only serving renewals happen, all from the same CA.
	for now := t0; now.Before(caDue.Add(-time.Hour)); now = now.Add(30 * 24 * time.Hour) {
		st, _ = mustPlan(t, p, st, now, trustNone)
		if st.nextCA != nil || !st.ca.cert.Equal(oldCA) || len(st.bundle) != 1 {
			t.Fatalf("CA rotation started at %v, before it was due at %v", now, caDue)
		}
	}
	servingBefore := st.serving.cert

	// Due, but the webhook configuration does not trust the new CA yet: staged only.
	now := caDue.Add(time.Hour)
	st, reasons := mustPlan(t, p, st, now, trustNone)
	if !hasReason(reasons, "CA rotation staged") || st.nextCA == nil {
		t.Fatalf("no CA staged when due: %q", reasons)
	}
	newCA := st.nextCA.cert
	wantBundle := []*x509.Certificate{newCA, oldCA}
	if !slices.EqualFunc(st.bundle, wantBundle, (*x509.Certificate).Equal) {
		t.Fatalf("staged bundle has %d certificates, want new CA then old CA", len(st.bundle))
	}
	if !st.ca.cert.Equal(oldCA) || !st.serving.cert.Equal(servingBefore) {
		t.Fatal("staging changed the signing CA or the serving certificate")
	}
	for range 2 { // stays staged as long as the configuration lacks it
		if st, reasons = mustPlan(t, p, st, now, trustNone); len(reasons) != 0 {
			t.Fatalf("untrusted staged CA led to changes %q", reasons)
		}
	}

	// The webhook configuration holds the bundle, but API servers may not
	// have caught up yet: promotion waits caPromotionDelay after staging.
	onlyNew := func(c *x509.Certificate) bool { return c.Equal(newCA) }
	if _, reasons := mustPlan(t, p, st, now.Add(caPromotionDelay-time.Second), onlyNew); len(reasons) != 0 {
		t.Fatalf("staged CA promoted before the delay: %q", reasons)
	}
	now = now.Add(caPromotionDelay)
	st, reasons = mustPlan(t, p, st, now, onlyNew)
	if !hasReason(reasons, "staged CA promoted") || st.nextCA != nil || !st.ca.cert.Equal(newCA) {
		t.Fatalf("staged CA not promoted: %q", reasons)
	}
	if !hasReason(reasons, "serving certificate issued: not signed by the current CA") {
		t.Errorf("serving certificate not reissued after promotion: %q", reasons)
	}
	if err := st.serving.cert.CheckSignatureFrom(newCA); err != nil {
		t.Errorf("serving certificate not signed by the new CA: %v", err)
	}
	if !slices.EqualFunc(st.bundle, wantBundle, (*x509.Certificate).Equal) {
		t.Fatal("bundle lost the old CA at promotion")
	}
	verifyServing(t, st, p.names, now)
	// The previous serving certificate, still served by replicas that have
	// not re-read the Secret, verifies against the same bundle.
	verifyServing(t, pkiState{bundle: st.bundle, serving: &keyPair{cert: servingBefore}}, p.names, now)

	// The old CA leaves the bundle when it expires, not before.
	if next, reasons := mustPlan(t, p, st, oldCA.NotAfter.Add(-time.Second), trustAll); len(next.bundle) != 2 {
		t.Errorf("old CA dropped before expiry: %q", reasons)
	}
	st, reasons = mustPlan(t, p, st, oldCA.NotAfter.Add(time.Second), trustAll)
	if len(st.bundle) != 1 || !st.bundle[0].Equal(newCA) || !hasReason(reasons, "CA bundle changed") {
		t.Errorf("after the old CA expired the bundle holds %d certificates (reasons %q), want the new CA alone", len(st.bundle), reasons)
	}
}

func TestServingNeverOutlivesCA(t *testing.T) {
	p := testPolicy()
	st, _ := mustPlan(t, p, pkiState{}, t0, trustAll)
	// A month before the CA expires, a renewal is capped at the CA's expiry,
	// and once capped it is not renewed again from the same CA.
	now := st.ca.cert.NotAfter.Add(-30 * 24 * time.Hour)
	st, _ = mustPlan(t, p, pkiState{ca: st.ca, bundle: st.bundle}, now, trustNone)
	if !st.serving.cert.NotAfter.Equal(st.ca.cert.NotAfter) {
		t.Errorf("serving NotAfter %v, want the CA's %v", st.serving.cert.NotAfter, st.ca.cert.NotAfter)
	}
	if _, reasons := mustPlan(t, p, st, now.Add(20*24*time.Hour), trustNone); hasReason(reasons, "serving certificate issued") {
		t.Errorf("capped serving certificate renewed from the same CA: %q", reasons)
	}
}

func TestExpiredCAIsReplaced(t *testing.T) {
	p := testPolicy()
	st, _ := mustPlan(t, p, pkiState{}, t0, trustAll)
	later := st.ca.cert.NotAfter.Add(time.Hour)
	next, reasons := mustPlan(t, p, st, later, trustNone)
	if !hasReason(reasons, "CA created") || next.ca.cert.Equal(st.ca.cert) {
		t.Fatalf("expired CA kept: %q", reasons)
	}
	if len(next.bundle) != 1 {
		t.Errorf("bundle holds %d certificates, want the new CA alone", len(next.bundle))
	}
	verifyServing(t, next, p.names, later)
}

func TestDecodeReplacesUnusableEntries(t *testing.T) {
	p := testPolicy()
	good, _ := mustPlan(t, p, pkiState{}, t0, trustAll)
	other, _ := mustPlan(t, p, pkiState{}, t0, trustAll)
	tests := []struct {
		name    string
		mutate  func(map[string][]byte)
		problem string
		reason  string
	}{
		{"garbage CA", func(d map[string][]byte) { d[SecretKeyCACert] = []byte("junk") }, SecretKeyCACert, "CA created"},
		{"CA key of another CA", func(d map[string][]byte) { d[SecretKeyCAKey] = other.ca.keyPEM }, SecretKeyCACert, "CA created"},
		{"serving key missing", func(d map[string][]byte) { delete(d, SecretKeyTLSKey) }, SecretKeyTLSCert, "serving certificate issued: missing"},
		{"serving cert from another CA", func(d map[string][]byte) {
			d[SecretKeyTLSCert], d[SecretKeyTLSKey] = other.serving.certPEM, other.serving.keyPEM
		}, "", "serving certificate issued: not signed by the current CA"},
		{"bundle garbage", func(d map[string][]byte) { d[SecretKeyCABundle] = []byte("-----BEGIN JUNK-----\n-----END JUNK-----\n") }, SecretKeyCABundle, "CA bundle changed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := good.encodeInto(map[string][]byte{"foreign": []byte("kept")})
			tc.mutate(data)
			st, problems := decodeState(data)
			if tc.problem == "" && len(problems) != 0 || tc.problem != "" && !hasReason(problems, tc.problem) {
				t.Errorf("problems %q, want one about %q", problems, tc.problem)
			}
			next, reasons := mustPlan(t, p, st, t0, trustAll)
			if !hasReason(reasons, tc.reason) {
				t.Errorf("reasons %q lack %q", reasons, tc.reason)
			}
			verifyServing(t, next, p.names, t0)
			if got := string(next.encodeInto(data)["foreign"]); got != "kept" {
				t.Errorf("foreign key became %q", got)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	valid := SelfManagedConfig{Namespace: "dns", SecretName: "certs", ServiceName: "webhook"}
	tests := []struct {
		name   string
		mutate func(*SelfManagedConfig)
		errs   []string
	}{
		{"defaults", func(*SelfManagedConfig) {}, nil},
		{"names missing", func(c *SelfManagedConfig) { c.Namespace, c.ServiceName = "", "" }, []string{"Namespace is required", "ServiceName is required"}},
		{"negative", func(c *SelfManagedConfig) { c.CheckInterval = -time.Second }, []string{"CheckInterval -1s is negative"}},
		{"serving outlives CA", func(c *SelfManagedConfig) { c.CAValidity = time.Hour }, []string{"CertValidity"}},
		{"rotate window too wide", func(c *SelfManagedConfig) { c.CertRotateBefore = DefaultCertValidity }, []string{"CertRotateBefore"}},
		{"CA rotate window too wide", func(c *SelfManagedConfig) { c.CARotateBefore = 2 * DefaultCAValidity }, []string{"CARotateBefore"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.mutate(&cfg)
			got, err := cfg.withDefaults()
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if got.CAValidity != DefaultCAValidity || got.CertValidity != DefaultCertValidity ||
					got.CheckInterval != DefaultCheckInterval || got.ClusterDomain != DefaultClusterDomain || got.Now == nil {
					t.Errorf("defaults not applied: %+v", got)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want errors %q", tc.errs)
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

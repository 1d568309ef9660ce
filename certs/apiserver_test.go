package certs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/localdns/localdns/internal/testenv"
	"github.com/localdns/localdns/internal/testutil"
)

// One kube-apiserver and etcd for the package's tests, booted on first use;
// each test works in its own namespace.
var apiServer struct {
	once sync.Once
	env  envtest.Environment
	cfg  *rest.Config
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if apiServer.cfg != nil {
		if err := apiServer.env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop kube-apiserver:", err)
		}
	}
	os.Exit(code)
}

// kubeClient returns a client of the shared API server and a fresh namespace.
func kubeClient(t *testing.T) (kubernetes.Interface, string) {
	t.Helper()
	apiServer.once.Do(func() { apiServer.cfg, apiServer.err = testenv.Boot(&apiServer.env) })
	if errors.Is(apiServer.err, testenv.ErrNoAssets) && !testenv.Required() {
		t.Skip(apiServer.err)
	}
	if apiServer.err != nil {
		t.Fatal(apiServer.err)
	}
	c, err := kubernetes.NewForConfig(apiServer.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := c.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "certs-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return c, ns.Name
}

// fakeClock is a settable clock shared by sources and TLS clients, so
// certificates issued "in the future" verify.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func testConfig(t *testing.T, ns string, clock *fakeClock) SelfManagedConfig {
	return SelfManagedConfig{
		Namespace: ns, SecretName: "webhook-certs", ServiceName: "webhook",
		WebhookConfigName: ns + "-webhook",
		ExtraIPs:          []net.IP{net.IPv4(127, 0, 0, 1)},
		CheckInterval:     time.Hour, // Start reacts through its watches; tests step with Reconcile
		Now:               clock.Now,
		Logger:            testr.New(t),
	}
}

func newSelfManaged(t *testing.T, c kubernetes.Interface, cfg SelfManagedConfig) *SelfManaged {
	t.Helper()
	src, err := NewSelfManaged(context.Background(), c, cfg)
	if err != nil {
		t.Fatalf("NewSelfManaged: %v", err)
	}
	return src.(*SelfManaged)
}

func reconcile(t *testing.T, s *SelfManaged) {
	t.Helper()
	if err := s.Reconcile(context.Background()); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
}

// startSource runs s.Start until the test ends.
func startSource(t *testing.T, s Source) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start: %v", err)
		}
	})
}

func servedLeaf(t *testing.T, s Source) *x509.Certificate {
	t.Helper()
	cert, err := s.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil || cert == nil {
		t.Fatalf("GetCertificate: %v, %v", cert, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func createWebhookConfig(t *testing.T, c kubernetes.Interface, name string) {
	t.Helper()
	url := "https://127.0.0.1:9443/mutate-pods"
	ignore, none := admissionv1.Ignore, admissionv1.SideEffectClassNone
	hook := func(name string) admissionv1.MutatingWebhook {
		return admissionv1.MutatingWebhook{
			Name:                    name,
			ClientConfig:            admissionv1.WebhookClientConfig{URL: &url},
			AdmissionReviewVersions: []string{"v1"},
			FailurePolicy:           &ignore,
			SideEffects:             &none,
			// Matches no namespace: the API server never calls it.
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"certs-test": "never"}},
			Rules: []admissionv1.RuleWithOperations{{
				Operations: []admissionv1.OperationType{admissionv1.Create},
				Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}},
			}},
		}
	}
	_, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(context.Background(),
		&admissionv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Webhooks:   []admissionv1.MutatingWebhook{hook("a.localdns.io"), hook("b.localdns.io")},
		}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create MutatingWebhookConfiguration: %v", err)
	}
	t.Cleanup(func() {
		_ = c.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// publishedBundle reads the caBundle back from the API server, requiring
// every webhook of the configuration to carry the same one.
func publishedBundle(t *testing.T, c kubernetes.Interface, name string) ([]byte, string) {
	t.Helper()
	whc, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get MutatingWebhookConfiguration: %v", err)
	}
	bundle := whc.Webhooks[0].ClientConfig.CABundle
	for _, wh := range whc.Webhooks[1:] {
		if !bytes.Equal(wh.ClientConfig.CABundle, bundle) {
			t.Fatalf("webhook %s has a different caBundle from %s", wh.Name, whc.Webhooks[0].Name)
		}
	}
	return bundle, whc.ResourceVersion
}

// TestSelfManagedCreatesSecret bootstraps into an absent Secret and into an
// empty one that manifests created (so RBAC can grant access by name).
func TestSelfManagedCreatesSecret(t *testing.T) {
	tests := []struct {
		name     string
		existing map[string][]byte // nil: no Secret
	}{
		{"absent", nil},
		{"pre-created empty", map[string][]byte{"owner-note": []byte("kept")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, ns := kubeClient(t)
			clock := &fakeClock{now: time.Now()}
			cfg := testConfig(t, ns, clock)
			if tc.existing != nil {
				_, err := c.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
					ObjectMeta: metav1.ObjectMeta{Name: cfg.SecretName}, Data: tc.existing,
				}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
			}
			s := newSelfManaged(t, c, cfg)

			secret, err := c.CoreV1().Secrets(ns).Get(context.Background(), cfg.SecretName, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("Secret not created: %v", err)
			}
			for _, key := range []string{SecretKeyCACert, SecretKeyCAKey, SecretKeyCABundle, SecretKeyTLSCert, SecretKeyTLSKey} {
				if len(secret.Data[key]) == 0 {
					t.Errorf("Secret lacks %s", key)
				}
			}
			for k, v := range tc.existing {
				if !bytes.Equal(secret.Data[k], v) {
					t.Errorf("Secret entry %s not kept", k)
				}
			}
			stored, err := parseKeyPair(secret.Data[SecretKeyTLSCert], secret.Data[SecretKeyTLSKey])
			if err != nil {
				t.Fatal(err)
			}
			if !servedLeaf(t, s).Equal(stored.cert) {
				t.Error("served certificate differs from the stored one")
			}
			if !bytes.Equal(s.CABundle(), secret.Data[SecretKeyCABundle]) {
				t.Error("CABundle differs from the stored bundle")
			}

			// A second source (a restarted replica) adopts the Secret as it is.
			again := newSelfManaged(t, c, cfg)
			if !servedLeaf(t, again).Equal(stored.cert) {
				t.Error("a second source replaced a valid certificate")
			}
			if after, err := c.CoreV1().Secrets(ns).Get(context.Background(), cfg.SecretName, metav1.GetOptions{}); err != nil || after.ResourceVersion != secret.ResourceVersion {
				t.Errorf("a second source rewrote a valid Secret (%v)", err)
			}
		})
	}
}

func TestSelfManagedConcurrentBootstrapAgrees(t *testing.T) {
	c, ns := kubeClient(t)
	clock := &fakeClock{now: time.Now()}
	for round := range 3 {
		cfg := testConfig(t, ns, clock)
		cfg.SecretName = fmt.Sprintf("race-%d", round)
		var (
			start   = make(chan struct{})
			wg      sync.WaitGroup
			sources [2]Source
			errs    [2]error
		)
		for i := range sources {
			wg.Go(func() {
				<-start
				sources[i], errs[i] = NewSelfManaged(context.Background(), c, cfg)
			})
		}
		close(start)
		wg.Wait()
		if err := errors.Join(errs[:]...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		a, b := sources[0].(*SelfManaged), sources[1].(*SelfManaged)
		if !servedLeaf(t, a).Equal(servedLeaf(t, b)) {
			t.Errorf("round %d: the replicas serve different certificates", round)
		}
		if !bytes.Equal(a.CABundle(), b.CABundle()) {
			t.Errorf("round %d: the replicas have different CA bundles", round)
		}
		secret, err := c.CoreV1().Secrets(ns).Get(context.Background(), cfg.SecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(secret.Data[SecretKeyCABundle], a.CABundle()) {
			t.Errorf("round %d: the replicas' bundle is not the stored one", round)
		}
	}
}

// TestSelfManagedConcurrentRenewalAgrees has two replicas find the serving
// certificate due in the same instant: one update wins on resourceVersion,
// the other re-reads and adopts it.
func TestSelfManagedConcurrentRenewalAgrees(t *testing.T) {
	c, ns := kubeClient(t)
	clock := &fakeClock{now: time.Now()}
	cfg := testConfig(t, ns, clock)
	a, b := newSelfManaged(t, c, cfg), newSelfManaged(t, c, cfg)
	before := servedLeaf(t, a)
	for round := range 3 {
		clock.Set(clock.Now().Add(9 * month))
		start := make(chan struct{})
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, s := range []*SelfManaged{a, b} {
			wg.Go(func() {
				<-start
				errs[i] = s.Reconcile(context.Background())
			})
		}
		close(start)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		after := servedLeaf(t, a)
		if after.Equal(before) {
			t.Fatalf("round %d: not renewed", round)
		}
		if !after.Equal(servedLeaf(t, b)) {
			t.Fatalf("round %d: the replicas serve different certificates", round)
		}
		before = after
	}
}

// tlsServer serves HTTPS on 127.0.0.1 with the source's certificate, the way
// the webhook server does.
func tlsServer(t *testing.T, s Source) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }),
		TLSConfig: &tls.Config{GetCertificate: s.GetCertificate},
		ErrorLog:  log.New(io.Discard, "", 0), // handshakes the tests make fail on purpose
	}
	go srv.ServeTLS(ln, "", "") //nolint:errcheck // returns ErrServerClosed at cleanup
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// clientTLS trusts only bundle and verifies serverName (the address when
// empty) at the test clock's time.
func clientTLS(t *testing.T, bundle []byte, clock *fakeClock, serverName string) *tls.Config {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		t.Fatal("caBundle holds no certificate")
	}
	return &tls.Config{RootCAs: roots, Time: clock.Now, ServerName: serverName}
}

// get sends one request on conn and returns the certificate conn verified.
func get(t *testing.T, conn *tls.Conn) *x509.Certificate {
	t.Helper()
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: webhook\r\n\r\n"); err != nil {
		t.Fatalf("write request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Fatalf("response %d %q", resp.StatusCode, body)
	}
	return conn.ConnectionState().PeerCertificates[0]
}

// dial opens a TLS connection to addr.
func dial(t *testing.T, addr string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

const month = 30 * 24 * time.Hour

// TestSelfManagedRotation drives a serving certificate renewal and a CA
// rotation with the injected clock, checking what the API server holds and
// what an HTTPS client that trusts only the published caBundle sees.
func TestSelfManagedRotation(t *testing.T) {
	c, ns := kubeClient(t)
	start := time.Now()
	clock := &fakeClock{now: start}
	cfg := testConfig(t, ns, clock)
	createWebhookConfig(t, c, cfg.WebhookConfigName)
	s := newSelfManaged(t, c, cfg)
	addr := tlsServer(t, s)
	serverName := "webhook." + ns + ".svc"

	bundle0, rv := publishedBundle(t, c, cfg.WebhookConfigName)
	if !bytes.Equal(bundle0, s.CABundle()) {
		t.Fatal("bootstrap did not publish the CA bundle")
	}
	reconcile(t, s)
	if _, again := publishedBundle(t, c, cfg.WebhookConfigName); again != rv {
		t.Errorf("an unchanged caBundle was rewritten (resourceVersion %s -> %s)", rv, again)
	}

	// Verified by IP address and by the Service name.
	leaf0 := get(t, dial(t, addr, clientTLS(t, bundle0, clock, "")))
	if !leaf0.Equal(servedLeaf(t, s)) {
		t.Fatal("server presents another certificate than the source's")
	}
	oldConn := dial(t, addr, clientTLS(t, bundle0, clock, serverName))
	if !get(t, oldConn).Equal(leaf0) {
		t.Fatal("server presents another certificate by Service name")
	}

	// 9 months into a 1-year certificate, less than a third is left: renewed
	// by the same CA.
	clock.Set(start.Add(9 * month))
	reconcile(t, s)
	leaf1 := servedLeaf(t, s)
	if leaf1.Equal(leaf0) {
		t.Fatal("serving certificate not renewed")
	}
	bundle1, _ := publishedBundle(t, c, cfg.WebhookConfigName)
	if !bytes.Equal(bundle1, bundle0) {
		t.Error("caBundle changed although the CA did not")
	}
	if !get(t, oldConn).Equal(leaf0) {
		t.Error("the connection opened before renewal changed certificate")
	}
	if !get(t, dial(t, addr, clientTLS(t, bundle1, clock, serverName))).Equal(leaf1) {
		t.Error("a new connection did not get the renewed certificate")
	}

	// 42 months into a 5-year CA: a new CA is staged and published first;
	// the serving certificate (expired by now) is renewed by the old CA.
	clock.Set(start.Add(42 * month))
	reconcile(t, s)
	bundle2, _ := publishedBundle(t, c, cfg.WebhookConfigName)
	cas, err := parseCertificates(bundle2)
	if err != nil || len(cas) != 2 {
		t.Fatalf("staged caBundle: %d certificates, %v; want new and old CA", len(cas), err)
	}
	oldCAs, _ := parseCertificates(bundle0)
	if !cas[1].Equal(oldCAs[0]) {
		t.Fatal("old CA is not second in the staged caBundle")
	}
	leaf2 := servedLeaf(t, s)
	if err := leaf2.CheckSignatureFrom(cas[1]); err != nil {
		t.Fatalf("before promotion the serving certificate must come from the old CA: %v", err)
	}
	stagedConn := dial(t, addr, clientTLS(t, bundle2, clock, serverName))
	if !get(t, stagedConn).Equal(leaf2) {
		t.Fatal("staged: wrong certificate served")
	}

	// The next step sees the new CA published, but promotes it only once
	// API servers had time to load the new bundle.
	reconcile(t, s)
	if !servedLeaf(t, s).Equal(leaf2) {
		t.Fatal("staged CA promoted without waiting for API servers to catch up")
	}
	clock.Set(clock.Now().Add(caPromotionDelay))
	reconcile(t, s)
	leaf3 := servedLeaf(t, s)
	if err := leaf3.CheckSignatureFrom(cas[0]); err != nil {
		t.Fatalf("after promotion the serving certificate must come from the new CA: %v", err)
	}
	if bundle3, _ := publishedBundle(t, c, cfg.WebhookConfigName); !bytes.Equal(bundle3, bundle2) {
		t.Error("caBundle changed at promotion; it must keep both CAs")
	}
	// A client that learned the bundle before promotion accepts the new
	// certificate; the connection made before keeps its certificate.
	if !get(t, dial(t, addr, clientTLS(t, bundle2, clock, serverName))).Equal(leaf3) {
		t.Error("a new connection did not get the certificate of the new CA")
	}
	if !get(t, stagedConn).Equal(leaf2) {
		t.Error("the connection opened before promotion changed certificate")
	}
	// A client that trusts only the old CA is now refused: the new CA signs.
	if conn, err := tls.Dial("tcp", addr, clientTLS(t, bundle0, clock, serverName)); err == nil {
		conn.Close()
		t.Error("a client trusting only the old CA accepted the new certificate")
	}
}

// leastPrivilegeClient returns a client of a user granted only what the
// self-managed source needs, every rule but Secret creation limited to the
// object's name (the rules the webhook's manifests should carry).
func leastPrivilegeClient(t *testing.T, admin kubernetes.Interface, cfg SelfManagedConfig) kubernetes.Interface {
	t.Helper()
	ctx := context.Background()
	user, err := apiServer.env.AddUser(envtest.User{Name: "certs-" + cfg.Namespace}, nil)
	if err != nil {
		t.Fatal(err)
	}
	subject := []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "certs-" + cfg.Namespace}}
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "certs", Namespace: cfg.Namespace},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create"}},
			{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{cfg.SecretName}, Verbs: []string{"get", "update", "list", "watch"}},
		},
	}
	clusterRole := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "certs-" + cfg.Namespace},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"admissionregistration.k8s.io"}, Resources: []string{"mutatingwebhookconfigurations"},
			ResourceNames: []string{cfg.WebhookConfigName}, Verbs: []string{"get", "update", "list", "watch"},
		}},
	}
	rbac := admin.RbacV1()
	if _, err := rbac.Roles(cfg.Namespace).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings(cfg.Namespace).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "certs", Namespace: cfg.Namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   subject,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoles().Create(ctx, clusterRole, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: clusterRole.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRole.Name},
		Subjects:   subject,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = rbac.ClusterRoleBindings().Delete(ctx, clusterRole.Name, metav1.DeleteOptions{})
		_ = rbac.ClusterRoles().Delete(ctx, clusterRole.Name, metav1.DeleteOptions{})
	})
	c, err := kubernetes.NewForConfig(user.Config())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Secrets(cfg.Namespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the restricted user may list every Secret (err %v)", err)
	}
	return c
}

// TestSelfManagedStartFollowsChanges checks that a running source acts on
// watch events (its check interval is an hour): a webhook configuration
// created after start, a rotation by another replica, a caBundle wiped by a
// re-applied manifest. The running source has least-privilege RBAC.
func TestSelfManagedStartFollowsChanges(t *testing.T) {
	c, ns := kubeClient(t)
	clock := &fakeClock{now: time.Now()}
	cfg := testConfig(t, ns, clock)
	// The webhook configuration does not exist yet.
	a := newSelfManaged(t, leastPrivilegeClient(t, c, cfg), cfg)
	startSource(t, a)

	createWebhookConfig(t, c, cfg.WebhookConfigName)
	testutil.Eventually(t, "the caBundle is written into the new webhook configuration", func() bool {
		b, _ := publishedBundle(t, c, cfg.WebhookConfigName)
		return bytes.Equal(b, a.CABundle())
	})

	b := newSelfManaged(t, c, cfg)
	clock.Set(clock.Now().Add(9 * month))
	reconcile(t, b)
	secret, err := c.CoreV1().Secrets(ns).Get(context.Background(), cfg.SecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := parseKeyPair(secret.Data[SecretKeyTLSCert], secret.Data[SecretKeyTLSKey])
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the running source serves the renewed certificate", func() bool {
		return servedLeaf(t, a).Equal(renewed.cert)
	})

	whcs := c.AdmissionregistrationV1().MutatingWebhookConfigurations()
	whc, err := whcs.Get(context.Background(), cfg.WebhookConfigName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range whc.Webhooks {
		whc.Webhooks[i].ClientConfig.CABundle = nil
	}
	if _, err := whcs.Update(context.Background(), whc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the wiped caBundle is restored", func() bool {
		b, _ := publishedBundle(t, c, cfg.WebhookConfigName)
		return bytes.Equal(b, a.CABundle())
	})
}

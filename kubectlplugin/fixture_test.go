package kubectlplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/localdns/localdns/certs"
	"github.com/localdns/localdns/nodecache"
	"github.com/localdns/localdns/webhook"
)

// The rendered default overlay: exactly what `kubectl apply -k
// manifests/overlays/default` installs (the manifests test keeps it current).
var installManifest = filepath.Join("..", "manifests", "testdata", "default.yaml")

// Addresses the egress proxy gives out: the nodes (hostNetwork pods have
// their node's IP) and the node cache's ops port.
const (
	nodeAIP          = "192.0.2.11"
	nodeBIP          = "192.0.2.12"
	kubeDNSClusterIP = "10.0.0.10"
	nodeCachePort    = "9253"
)

// fixture is the test cluster: a real kube-apiserver holding localdns as the
// default overlay installs it, the real webhook (in this process, called by
// the API server through its Service), a real node cache on node-a (its ops
// listener reached through the API server's pod proxy), and workloads whose
// pods are injected or not for every reason the plugin reports. There are no
// controllers: the fixture writes the objects they would (ReplicaSets, pods,
// statuses) itself.
//
// The timeline matters, because pods tells "created before opt-in" from
// "admitted while the webhook was down" by timestamps:
//  1. before install: namespaces shop, blog, legacy and their pods;
//  2. install: the manifests, node caches, the webhook;
//  3. after install: shop opted in (its pods are now "before opt-in");
//     namespace cart opted in, then one of its pods created while the
//     webhook's Service leads nowhere, one while it serves.
type fixture struct {
	kubeconfig  string
	client      kubernetes.Interface
	proxy       *egressProxy
	webhookAddr string // the webhook Service's ClusterIP:443
	webhookPort string // where the in-process webhook serves
}

// webhookUp routes the webhook's Service to the webhook.
func (f *fixture) webhookUp() {
	f.proxy.route(f.webhookAddr, net.JoinHostPort("127.0.0.1", f.webhookPort))
}

// webhookDown makes the webhook's Service unreachable from the API server
// (as without ready endpoints) until the returned function restores it.
func (f *fixture) webhookDown() (restore func()) {
	f.proxy.route(f.webhookAddr, "")
	return f.webhookUp
}

// builder creates objects until the first error, which it keeps.
type builder struct {
	ctx context.Context
	c   client.Client
	err error
}

func (b *builder) create(objs ...client.Object) {
	for _, o := range objs {
		if b.err != nil {
			return
		}
		if err := b.c.Create(b.ctx, o); err != nil {
			b.err = fmt.Errorf("create %T %s/%s: %w", o, o.GetNamespace(), o.GetName(), err)
		}
	}
}

func (b *builder) updateStatus(o client.Object) {
	if b.err != nil {
		return
	}
	if err := b.c.Status().Update(b.ctx, o); err != nil {
		b.err = fmt.Errorf("update status of %T %s/%s: %w", o, o.GetNamespace(), o.GetName(), err)
	}
}

func buildFixture(ctx context.Context, cfg *rest.Config, proxy *egressProxy, running *sync.WaitGroup) (*fixture, error) {
	c, err := client.New(cfg, client.Options{Scheme: clientgoscheme.Scheme})
	if err != nil {
		return nil, err
	}
	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	f := &fixture{client: clientset, proxy: proxy}
	b := &builder{ctx: ctx, c: c}

	// 1. Before install.
	for _, n := range []string{"node-a", "node-b", "node-c"} {
		b.create(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{
			corev1.LabelHostname: n, corev1.LabelOSStable: "linux",
		}}})
	}
	b.create(
		namespace("shop", ""), namespace("blog", ""), namespace("legacy", "disabled"),
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: metav1.NamespaceSystem},
			Spec: corev1.ServiceSpec{ClusterIP: kubeDNSClusterIP, Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
			}},
		})
	b.deploymentWithPods("shop", "web", "5d8f7", "aaaaa", "bbbbb")
	b.shopWorkloads()
	b.create(
		pod("blog", "editor", map[string]string{webhook.LabelInject: "true"}),
		pod("legacy", "old", nil))

	// 2. Install.
	if b.err == nil {
		b.err = f.install(ctx, b, cfg, running)
	}

	// 3. After install.
	if b.err == nil {
		b.err = c.Patch(ctx, namespace("shop", "enabled"), client.Merge)
	}
	if b.err == nil {
		b.err = f.cartPods(b)
	}
	return f, b.err
}

// shopWorkloads are the rest of shop: a StatefulSet with a volume claim
// template, an OnDelete DaemonSet, a Job, a bare pod, and pods the webhook
// skips whatever the opt-in (finished, dnsPolicy Default, hostNetwork,
// labelled out).
func (b *builder) shopWorkloads() {
	const ns = "shop"
	db := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: ns},
		Spec: appsv1.StatefulSetSpec{
			Selector: selector("db"),
			Template: template("db"),
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: "data"},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
				},
			}},
		},
	}
	db.Spec.Template.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	agent := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: ns},
		Spec: appsv1.DaemonSetSpec{
			Selector:       selector("agent"),
			Template:       template("agent"),
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType},
		},
	}
	migrate := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "migrate", Namespace: ns},
		Spec:       batchv1.JobSpec{Template: template("migrate")},
	}
	migrate.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyNever
	b.create(db, agent, migrate)
	if b.err != nil {
		return
	}
	dbPod := owned(pod(ns, "db-0", map[string]string{"app": "db"}), db, "StatefulSet")
	dbPod.Spec = *statefulSetPodTemplate(db).Spec.DeepCopy()
	migratePod := owned(pod(ns, "migrate-q2w3e", map[string]string{"app": "migrate"}), migrate, "Job")
	migratePod.Spec.RestartPolicy = corev1.RestartPolicyNever
	report := pod(ns, "report", nil)
	resolverDefault := pod(ns, "resolver-default", nil)
	resolverDefault.Spec.DNSPolicy = corev1.DNSDefault
	hostnet := pod(ns, "hostnet", nil)
	hostnet.Spec.HostNetwork = true
	b.create(dbPod, owned(pod(ns, "agent-x7k2p", map[string]string{"app": "agent"}), agent, "DaemonSet"), migratePod,
		pod(ns, "debug", nil), report, resolverDefault, hostnet,
		pod(ns, "optout", map[string]string{webhook.LabelInject: "false"}))
	report.Status.Phase = corev1.PodSucceeded
	b.updateStatus(report)
}

// deploymentWithPods creates a Deployment, its ReplicaSet for hash, and one
// pod per suffix, owned as the controllers would own them.
func (b *builder) deploymentWithPods(ns, name, hash string, suffixes ...string) {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       appsv1.DeploymentSpec{Selector: selector(name), Template: template(name)},
	}
	b.create(d)
	if b.err != nil {
		return
	}
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-" + hash, Namespace: ns},
		Spec:       appsv1.ReplicaSetSpec{Selector: selector(name), Template: template(name)},
	}
	rs.Spec.Template.Labels["pod-template-hash"] = hash
	b.create(owned(rs, d, "Deployment"))
	for _, s := range suffixes {
		if b.err != nil {
			return
		}
		b.create(owned(pod(ns, rs.Name+"-"+s, rs.Spec.Template.Labels), rs, "ReplicaSet"))
	}
}

// install applies the default overlay, writes the statuses its controllers
// would, and starts the node cache of node-a and the webhook.
func (f *fixture) install(ctx context.Context, b *builder, cfg *rest.Config, running *sync.WaitGroup) error {
	if err := applyManifest(ctx, b.c, installManifest); err != nil {
		return err
	}
	var deploy appsv1.Deployment
	if err := b.c.Get(ctx, client.ObjectKey{Namespace: DefaultSystemNamespace, Name: webhookAppName}, &deploy); err != nil {
		return err
	}
	deploy.Status = appsv1.DeploymentStatus{Replicas: 2, ReadyReplicas: 2, UpdatedReplicas: 2, AvailableReplicas: 2}
	b.updateStatus(&deploy)
	var ds appsv1.DaemonSet
	if err := b.c.Get(ctx, client.ObjectKey{Namespace: DefaultSystemNamespace, Name: nodeCacheAppName}, &ds); err != nil {
		return err
	}
	ds.Status = appsv1.DaemonSetStatus{DesiredNumberScheduled: 3, CurrentNumberScheduled: 2, NumberReady: 1, UpdatedNumberScheduled: 2, NumberAvailable: 1}
	b.updateStatus(&ds)

	// node-a's node cache is ready and serves its metrics; node-b's is not
	// ready and its address leads nowhere; node-c has none.
	for _, n := range []struct{ node, pod, ip string }{
		{"node-a", "localdns-nodecache-a1b2c", nodeAIP}, {"node-b", "localdns-nodecache-d3e4f", nodeBIP},
	} {
		p := owned(&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: n.pod, Namespace: DefaultSystemNamespace, Labels: ds.Spec.Template.Labels},
			Spec:       *ds.Spec.Template.Spec.DeepCopy(),
		}, &ds, "DaemonSet")
		p.Spec.NodeName = n.node
		b.create(p)
		ready := corev1.ConditionFalse
		if n.node == "node-a" {
			ready = corev1.ConditionTrue
		}
		p.Status = corev1.PodStatus{
			Phase:      corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}},
			HostIP:     n.ip, HostIPs: []corev1.HostIP{{IP: n.ip}},
			PodIP: n.ip, PodIPs: []corev1.PodIP{{IP: n.ip}},
		}
		b.updateStatus(p)
	}
	if b.err != nil {
		return b.err
	}
	metricsAddr, err := startNodeCache(ctx, running)
	if err != nil {
		return err
	}
	f.proxy.route(net.JoinHostPort(nodeAIP, nodeCachePort), metricsAddr)
	return f.startWebhook(ctx, cfg, &deploy, running)
}

// applyManifest creates every object of a rendered multi-document manifest.
func applyManifest(ctx context.Context, c client.Client, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if err := c.Create(ctx, obj); err != nil {
			return fmt.Errorf("%s: create %s %s: %w", path, obj.GetKind(), obj.GetName(), err)
		}
	}
	return nil
}

// startWebhook runs the real webhook with the deployed Deployment's flags
// (on a free port, metrics off) and self-managed certificates issued at
// certClock, routes its Service to it, and waits until the API server calls
// it: a dry-run pod comes back injected.
func (f *fixture) startWebhook(ctx context.Context, restConfig *rest.Config, deploy *appsv1.Deployment, running *sync.WaitGroup) error {
	wcfg, err := webhookFlags(deploy)
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	wcfg.Port, wcfg.MetricsAddr = port, "0"
	const century = 100 * 365 * 24 * time.Hour
	runErr := make(chan error, 1)
	running.Go(func() {
		runErr <- webhook.Run(ctx, wcfg, restConfig, func(ctx context.Context, clientset kubernetes.Interface) (webhook.CertSource, error) {
			return certs.NewSelfManaged(ctx, clientset, certs.SelfManagedConfig{
				Namespace: wcfg.Namespace, SecretName: wcfg.SecretName, ServiceName: wcfg.ServiceName,
				WebhookConfigName: wcfg.WebhookConfigName, ClusterDomain: wcfg.ClusterDomain,
				CAValidity: century, CertValidity: century,
				Now: func() time.Time { return certClock },
			})
		})
	})
	svc, err := f.client.CoreV1().Services(wcfg.Namespace).Get(ctx, wcfg.ServiceName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	f.webhookAddr = net.JoinHostPort(svc.Spec.ClusterIP, "443")
	f.webhookPort = fmt.Sprint(port)
	f.webhookUp()
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-runErr:
			return false, fmt.Errorf("webhook stopped: %w", err)
		default:
		}
		got, err := f.client.CoreV1().Pods("default").Create(ctx, pod("default", "probe", map[string]string{webhook.LabelInject: "true"}),
			metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, err
		}
		return got.Annotations[webhook.AnnotationInjected] != "", nil
	})
}

// cartPods opts namespace cart in, then creates checkout's pod while the
// webhook cannot be reached and api's while it can.
func (f *fixture) cartPods(b *builder) error {
	b.create(namespace("cart", "enabled"))
	b.deploymentWithPods("cart", "checkout", "7c9d4")
	if b.err != nil {
		return b.err
	}
	var ns corev1.Namespace
	var whc unstructured.Unstructured
	whc.SetGroupVersionKind(schema.GroupVersionKind{Group: "admissionregistration.k8s.io", Version: "v1", Kind: "MutatingWebhookConfiguration"})
	if err := b.c.Get(b.ctx, client.ObjectKey{Name: "cart"}, &ns); err != nil {
		return err
	}
	if err := b.c.Get(b.ctx, client.ObjectKey{Name: webhookAppName}, &whc); err != nil {
		return err
	}
	// The API's timestamps count whole seconds: a pod created in the second
	// its opt-in took effect counts as created before it. Wait for the next
	// second (usually passed already), not for any event.
	optedIn := labelSetAt(ns.ManagedFields, webhook.LabelInject)
	if t := whc.GetCreationTimestamp().Time; t.After(optedIn) {
		optedIn = t
	}
	time.Sleep(time.Until(optedIn.Add(time.Second)))

	var rs appsv1.ReplicaSet
	if err := b.c.Get(b.ctx, client.ObjectKey{Namespace: "cart", Name: "checkout-7c9d4"}, &rs); err != nil {
		return err
	}
	restore := f.webhookDown()
	checkout := owned(pod("cart", "checkout-7c9d4-zzzzz", rs.Spec.Template.Labels), &rs, "ReplicaSet")
	b.create(checkout)
	restore()
	api := pod("cart", "api", nil)
	b.create(api)
	switch {
	case b.err != nil:
		return b.err
	case checkout.Annotations[webhook.AnnotationInjected] != "":
		return errors.New("cart/checkout-7c9d4-zzzzz was injected although the webhook was down")
	case api.Annotations[webhook.AnnotationInjected] == "":
		return errors.New("cart/api was not injected although the webhook serves")
	}
	return nil
}

// startNodeCache runs the real node cache (no node setup) on loopback in
// front of a fake kube-dns, sends it a few queries, and returns the address
// of its ops listener once ready. The queries, in order: one name three
// times (a miss, then two hits) and one that kube-dns answers SERVFAIL (a
// miss): 2 hits, 2 misses, 1 SERVFAIL.
func startNodeCache(ctx context.Context, running *sync.WaitGroup) (string, error) {
	upstream, err := startFakeKubeDNS(ctx, running)
	if err != nil {
		return "", err
	}
	dnsAddr, err := freeUDPTCPAddr()
	if err != nil {
		return "", err
	}
	metricsPort, err := freePort()
	if err != nil {
		return "", err
	}
	metricsAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(metricsPort))
	cfg, err := nodecache.Parse([]string{"--listen=" + dnsAddr, "--setup-interface=false", "--setup-rules=false",
		"--upstream=" + upstream, "--metrics-addr=" + metricsAddr}, io.Discard)
	if err != nil {
		return "", err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	running.Go(func() {
		if err := nodecache.Execute(ctx, cfg, logger); err != nil {
			logger.Error("node cache stopped", "err", err)
		}
	})
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/readyz", nil)
		if err != nil {
			return false, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, nil // not listening yet
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return "", fmt.Errorf("node cache never ready: %w", err)
	}
	for _, name := range []string{"web.shop.svc.cluster.local.", "web.shop.svc.cluster.local.", "web.shop.svc.cluster.local.", "fail.shop.svc.cluster.local."} {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		if _, err := dns.ExchangeContext(ctx, q, dnsAddr); err != nil {
			return "", fmt.Errorf("query the node cache for %s: %w", name, err)
		}
	}
	return metricsAddr, nil
}

// startFakeKubeDNS answers A queries with one record, and SERVFAIL for
// names starting with "fail.", over UDP and TCP on one loopback address.
func startFakeKubeDNS(ctx context.Context, running *sync.WaitGroup) (string, error) {
	addr, err := freeUDPTCPAddr()
	if err != nil {
		return "", err
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		switch q := r.Question[0]; {
		case strings.HasPrefix(q.Name, "fail."):
			m.Rcode = dns.RcodeServerFailure
		case q.Qtype == dns.TypeA:
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(10, 0, 0, 99)}}
		}
		w.WriteMsg(m) //nolint:errcheck
	})
	for _, network := range []string{"udp", "tcp"} {
		started := make(chan struct{})
		srv := &dns.Server{Addr: addr, Net: network, Handler: mux, NotifyStartedFunc: func() { close(started) }}
		failed := make(chan error, 1)
		running.Go(func() { failed <- srv.ListenAndServe() })
		select {
		case <-started:
		case err := <-failed:
			return "", fmt.Errorf("fake kube-dns on %s/%s: %w", network, addr, err)
		}
		running.Go(func() {
			<-ctx.Done()
			srv.Shutdown() //nolint:errcheck
		})
	}
	return addr, nil
}

// freeUDPTCPAddr is a loopback address whose port is free for UDP and TCP.
func freeUDPTCPAddr() (string, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			pc.Close()
			return addr, nil
		}
	}
	return "", errors.New("no loopback port free for both UDP and TCP")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func namespace(name, inject string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if inject != "" {
		ns.Labels = map[string]string{webhook.LabelInject: inject}
	}
	return ns
}

func pod(ns, name string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
	}
}

func selector(app string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
}

func template(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec:       pod("", "", nil).Spec,
	}
}

// owned sets owner as obj's controller.
func owned[T client.Object](obj T, owner client.Object, kind string) T {
	gv := appsv1.SchemeGroupVersion
	if kind == "Job" {
		gv = batchv1.SchemeGroupVersion
	}
	obj.SetOwnerReferences([]metav1.OwnerReference{*metav1.NewControllerRef(owner, gv.WithKind(kind))})
	return obj
}

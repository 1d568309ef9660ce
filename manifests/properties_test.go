package manifests

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/localdns/localdns/nodecache"
	"github.com/localdns/localdns/webhook"
)

// dashboardFile is the Grafana dashboard, shipped by the chart and rendered
// into manifests/monitoring.
const dashboardFile = "../charts/localdns/dashboards/localdns-dashboard.json"

const (
	namespace      = "localdns-system"
	localIP        = "169.254.20.10"
	nodecacheImage = "localdns/nodecache:dev"
	webhookImage   = "localdns/webhook:dev"
	stubImage      = "localdns/stub:dev"
)

// manifest is one rendered kustomization, with typed lookups.
type manifest struct {
	t    *testing.T
	name string
	objs []object
}

func load(t *testing.T, name string) manifest {
	t.Helper()
	return manifest{t: t, name: name, objs: splitObjects(t, rendered(t, name))}
}

// get decodes the one object of kind and name into into; found reports
// whether it exists.
func (m manifest) get(kind, name string, into any) (found bool) {
	m.t.Helper()
	for _, o := range m.objs {
		if o.Kind == kind && o.Name == name {
			if err := yaml.UnmarshalStrict(o.raw, into); err != nil {
				m.t.Fatalf("%s: %s %s: %v", m.name, kind, name, err)
			}
			return true
		}
	}
	return false
}

// raw is the YAML of the one object of kind and name, for kinds decoded
// only in part (custom resources).
func (m manifest) raw(kind, name string) []byte {
	m.t.Helper()
	for _, o := range m.objs {
		if o.Kind == kind && o.Name == name {
			return o.raw
		}
	}
	m.t.Fatalf("%s: no %s %s", m.name, kind, name)
	return nil
}

func (m manifest) must(kind, name string, into any) {
	m.t.Helper()
	if !m.get(kind, name, into) {
		m.t.Fatalf("%s: no %s %s", m.name, kind, name)
	}
}

func (m manifest) daemonSet(name string) *appsv1.DaemonSet {
	m.t.Helper()
	var ds appsv1.DaemonSet
	m.must("DaemonSet", name, &ds)
	return &ds
}

// nodeName stands for the pod's spec.nodeName in expanded arguments.
const nodeName = "node-a"

// expandArgs substitutes $(VAR) references the way the kubelet does, from
// the container's env (downward-API values get a representative value).
func expandArgs(c corev1.Container) []string {
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			env[e.Name] = namespace
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
			env[e.Name] = nodeName
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		}
	}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i] = ref.ReplaceAllStringFunc(a, func(m string) string {
			if v, ok := env[m[2:len(m)-1]]; ok {
				return v
			}
			return m
		})
	}
	return args
}

// checkRestrictedContainer asserts the hardening every localdns container
// has: no privilege escalation, read-only root, dropped capabilities,
// RuntimeDefault seccomp (pod or container), a memory limit, IfNotPresent.
func checkRestrictedContainer(t *testing.T, pod corev1.PodSpec, c corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("container %s: no securityContext", c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("container %s: allowPrivilegeEscalation must be false", c.Name)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("container %s: privileged", c.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("container %s: root filesystem must be read-only", c.Name)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container %s: capabilities must drop ALL", c.Name)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil && pod.SecurityContext != nil {
		seccomp = pod.SecurityContext.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container %s: seccomp profile must be RuntimeDefault", c.Name)
	}
	if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
		t.Errorf("container %s: wants CPU and memory requests and a memory limit, has %+v", c.Name, c.Resources)
	}
	if c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("container %s: imagePullPolicy %q, want IfNotPresent (no registry on the e2e node)", c.Name, c.ImagePullPolicy)
	}
}

// checkHTTPProbe checks an HTTP probe's path and port, resolving a named
// port through the container's ports.
func checkHTTPProbe(t *testing.T, what string, c corev1.Container, p *corev1.Probe, path string, port int) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Fatalf("%s: no HTTP probe", what)
	}
	got := p.HTTPGet.Port.IntValue()
	for _, cp := range c.Ports {
		if cp.Name == p.HTTPGet.Port.String() {
			got = int(cp.ContainerPort)
		}
	}
	if p.HTTPGet.Path != path || got != port {
		t.Errorf("%s: probes %s on port %d, want %s on %d", what, p.HTTPGet.Path, got, path, port)
	}
}

// install is a rendering that installs localdns, and what it must install.
type install struct {
	name        string // in kustomizations or chartProfiles
	clusterWide bool
	certManager bool
	monitoring  bool
	// podAnnotations: the prometheus.io/* scrape annotations on the pods.
	podAnnotations bool
	localIP        string
	upstreams      int // --upstream servers; 0: discovered
	replicas       int32
	// startupTaint: the key the node cache removes from its Node; "": off.
	startupTaint                            string
	nodecacheImage, webhookImage, stubImage string
}

// defaults fills in the default install's values.
func (in install) defaults() install {
	in.localIP, in.replicas, in.podAnnotations = localIP, 2, true
	in.nodecacheImage, in.webhookImage, in.stubImage = nodecacheImage, webhookImage, stubImage
	return in
}

// installs are every kustomize overlay and every chart profile.
var installs = []install{
	install{name: "default"}.defaults(),
	install{name: "cluster-wide", clusterWide: true}.defaults(),
	install{name: "cert-manager", certManager: true}.defaults(),
	install{name: "helm-default"}.defaults(),
	install{name: "helm-cluster-wide", clusterWide: true}.defaults(),
	install{name: "helm-cert-manager", certManager: true}.defaults(),
	install{name: "helm-monitoring", monitoring: true}.defaults(),
	install{name: "startup-taint", startupTaint: nodecache.DefaultStartupTaint}.defaults(),
	install{name: "helm-startup-taint", startupTaint: nodecache.DefaultStartupTaint}.defaults(),
	{
		name: "helm-custom", clusterWide: true, certManager: true, monitoring: true,
		localIP: "169.254.0.53", upstreams: 2, replicas: 3, startupTaint: "example.com/dns-not-ready",
		nodecacheImage: "registry.example:5000/dns/localdns-nodecache:v1.2.3",
		webhookImage:   "registry.example:5000/dns/localdns-webhook:v1.2.3",
		stubImage:      "registry.example:5000/dns/localdns-stub:v1.2.3@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	},
}

// checkLinuxOnly asserts a node-level pod runs on Linux nodes only: nothing
// serves the node cache's address on Windows nodes.
func checkLinuxOnly(t *testing.T, what string, pod corev1.PodSpec) {
	t.Helper()
	if pod.NodeSelector[corev1.LabelOSStable] != "linux" {
		t.Errorf("%s: nodeSelector %v, want %s=linux", what, pod.NodeSelector, corev1.LabelOSStable)
	}
}

func TestNodecacheDaemonSet(t *testing.T) {
	for _, in := range installs {
		t.Run(in.name, func(t *testing.T) {
			ds := load(t, in.name).daemonSet("localdns-nodecache")
			pod := ds.Spec.Template.Spec
			if ds.Namespace != namespace {
				t.Errorf("namespace %q", ds.Namespace)
			}
			if !pod.HostNetwork || pod.DNSPolicy != corev1.DNSDefault || pod.PriorityClassName != "system-node-critical" {
				t.Errorf("hostNetwork %v, dnsPolicy %q, priorityClassName %q; want true, Default, system-node-critical",
					pod.HostNetwork, pod.DNSPolicy, pod.PriorityClassName)
			}
			if !slices.ContainsFunc(pod.Tolerations, func(tol corev1.Toleration) bool {
				return tol.Key == "" && tol.Operator == corev1.TolerationOpExists && tol.Effect == ""
			}) {
				t.Errorf("tolerations %+v: want one that tolerates every taint", pod.Tolerations)
			}
			if in.startupTaint != "" && !slices.ContainsFunc(pod.Tolerations, func(tol corev1.Toleration) bool {
				return tol.Key == in.startupTaint && tol.Operator == corev1.TolerationOpExists && tol.Effect == ""
			}) {
				t.Errorf("tolerations %+v: want the startup taint %s tolerated whatever the other values", pod.Tolerations, in.startupTaint)
			}
			checkLinuxOnly(t, "node cache", pod)
			ru := ds.Spec.UpdateStrategy.RollingUpdate
			if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil ||
				ru.MaxSurge == nil || ru.MaxSurge.IntValue() < 1 || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
				t.Errorf("update strategy %+v: want RollingUpdate with maxSurge >= 1 and maxUnavailable 0", ds.Spec.UpdateStrategy)
			}
			annotations := ds.Spec.Template.Annotations
			if scraped := annotations["prometheus.io/scrape"] == "true" && annotations["prometheus.io/port"] == "9253"; scraped != in.podAnnotations {
				t.Errorf("scrape annotations %v, want them: %v", annotations, in.podAnnotations)
			}
			if len(pod.Containers) != 1 {
				t.Fatalf("%d containers, want 1", len(pod.Containers))
			}
			c := pod.Containers[0]
			checkRestrictedContainer(t, pod, c)
			if c.Image != in.nodecacheImage {
				t.Errorf("image %q, want %q", c.Image, in.nodecacheImage)
			}
			// A declared port becomes a hostPort under hostNetwork and
			// blocks the surge pod from scheduling next to the old one.
			if len(c.Ports) != 0 {
				t.Errorf("ports %+v: a hostNetwork DaemonSet with maxSurge must declare none", c.Ports)
			}
			caps := c.SecurityContext.Capabilities.Add
			if want := []corev1.Capability{"NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"}; !slices.Equal(caps, want) {
				t.Errorf("added capabilities %v, want exactly %v", caps, want)
			}
			checkHTTPProbe(t, "liveness", c, c.LivenessProbe, "/healthz", 9253)

			cfg, err := nodecache.Parse(expandArgs(c), io.Discard)
			if err != nil {
				t.Fatalf("localdns-nodecache rejects the DaemonSet's args %q: %v", c.Args, err)
			}
			// Readiness must be this container's own (the surge's two
			// instances share :9253): `ready` on the file the serving
			// instance writes, kept in the pod's own emptyDir.
			if p := c.ReadinessProbe; p == nil || p.Exec == nil || len(p.Exec.Command) < 2 || p.Exec.Command[0] != "/localdns-nodecache" {
				t.Errorf("readiness probe %+v: want exec /localdns-nodecache ready", p)
			} else if ready, err := nodecache.Parse(p.Exec.Command[1:], io.Discard); err != nil || ready.Command != nodecache.CommandReady || ready.ReadyFile != cfg.ReadyFile || cfg.ReadyFile == "" {
				t.Errorf("readiness probe %q (%v): want `ready` on the serving --ready-file %q", p.Exec.Command, err, cfg.ReadyFile)
			}
			inEmptyDir := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
				return strings.HasPrefix(cfg.ReadyFile, m.MountPath+"/") && slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool {
					return v.Name == m.Name && v.EmptyDir != nil
				})
			})
			if !inEmptyDir {
				t.Errorf("--ready-file %q is not on an emptyDir mount of the pod", cfg.ReadyFile)
			}
			if cfg.Command != nodecache.CommandServe || len(cfg.Listen) != 1 || cfg.Listen[0].String() != in.localIP+":53" ||
				!cfg.Setup.Interface || !cfg.Setup.Rules || cfg.MetricsAddr != ":9253" || len(cfg.Upstream) != in.upstreams {
				t.Errorf("parsed config %+v: want serving %s:53 with interface, rules, metrics on :9253, %d upstreams (0: discovered)", cfg, in.localIP, in.upstreams)
			}
			if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/run/xtables.lock" }) {
				t.Errorf("the node's /run/xtables.lock is not mounted (legacy iptables serialises on it with kube-proxy)")
			}
			if cfg.HandoverSocket != nodecache.DefaultHandoverSocket {
				t.Errorf("--handover-socket %q, want %q (the standby's)", cfg.HandoverSocket, nodecache.DefaultHandoverSocket)
			}
			// Its own Node, from the downward API, and the key the policy names.
			if cfg.StartupTaint != in.startupTaint || (in.startupTaint != "" && cfg.NodeName != nodeName) {
				t.Errorf("--startup-taint %q on node %q, want %q on the pod's spec.nodeName", cfg.StartupTaint, cfg.NodeName, in.startupTaint)
			}
		})
	}
}

// TestStandbyDaemonSet checks the hot standby against the node cache it
// stands in for: the same nodes and network, address, resolution and
// handover socket; its own pods, limits and metrics port; no node setup and
// so no NET_ADMIN or NET_RAW; one pod per node at a time.
func TestStandbyDaemonSet(t *testing.T) {
	for _, in := range installs {
		t.Run(in.name, func(t *testing.T) {
			m := load(t, in.name)
			nodecacheDS := m.daemonSet("localdns-nodecache")
			ds := m.daemonSet("localdns-nodecache-standby")
			pod, primary := ds.Spec.Template.Spec, nodecacheDS.Spec.Template.Spec
			if ds.Namespace != namespace {
				t.Errorf("namespace %q", ds.Namespace)
			}
			if !pod.HostNetwork || pod.DNSPolicy != corev1.DNSDefault || pod.PriorityClassName != primary.PriorityClassName ||
				pod.ServiceAccountName != primary.ServiceAccountName {
				t.Errorf("hostNetwork %v, dnsPolicy %q, priorityClassName %q, serviceAccountName %q; want true, Default and the node cache's %q, %q",
					pod.HostNetwork, pod.DNSPolicy, pod.PriorityClassName, pod.ServiceAccountName, primary.PriorityClassName, primary.ServiceAccountName)
			}
			if !maps.Equal(pod.NodeSelector, primary.NodeSelector) || !slices.Equal(pod.Tolerations, primary.Tolerations) {
				t.Errorf("nodeSelector %v, tolerations %+v: want the node cache's %v, %+v", pod.NodeSelector, pod.Tolerations, primary.NodeSelector, primary.Tolerations)
			}
			if labels.SelectorFromSet(nodecacheDS.Spec.Selector.MatchLabels).Matches(labels.Set(ds.Spec.Template.Labels)) {
				t.Errorf("the node cache's selector %v selects the standby's pods %v", nodecacheDS.Spec.Selector.MatchLabels, ds.Spec.Template.Labels)
			}
			ru := ds.Spec.UpdateStrategy.RollingUpdate
			if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil ||
				ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 0 || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 1 {
				t.Errorf("update strategy %+v: want RollingUpdate, maxSurge 0, maxUnavailable 1 (one holder of the handover socket)", ds.Spec.UpdateStrategy)
			}
			annotations := ds.Spec.Template.Annotations
			if scraped := annotations["prometheus.io/scrape"] == "true" && annotations["prometheus.io/port"] == "9254"; scraped != in.podAnnotations {
				t.Errorf("scrape annotations %v, want them: %v", annotations, in.podAnnotations)
			}
			if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 || len(pod.Volumes) != 0 {
				t.Fatalf("%d containers, %d init containers, volumes %+v: want one container and nothing from the node", len(pod.Containers), len(pod.InitContainers), pod.Volumes)
			}
			c := pod.Containers[0]
			checkRestrictedContainer(t, pod, c)
			if c.Image != primary.Containers[0].Image {
				t.Errorf("image %q, want the node cache's %q", c.Image, primary.Containers[0].Image)
			}
			if len(c.Ports) != 0 {
				t.Errorf("ports %+v: under hostNetwork they are hostPorts; declare none", c.Ports)
			}
			if caps := c.SecurityContext.Capabilities.Add; !slices.Equal(caps, []corev1.Capability{"NET_BIND_SERVICE"}) {
				t.Errorf("added capabilities %v, want exactly NET_BIND_SERVICE (no node setup)", caps)
			}
			// The handover takes a peer of its own uid only.
			if uid, primaryUID := c.SecurityContext.RunAsUser, primary.Containers[0].SecurityContext.RunAsUser; uid == nil || primaryUID == nil || *uid != *primaryUID {
				t.Errorf("runAsUser %v, want the node cache's %v", uid, primaryUID)
			}
			checkHTTPProbe(t, "readiness", c, c.ReadinessProbe, "/readyz", 9254)
			checkHTTPProbe(t, "liveness", c, c.LivenessProbe, "/healthz", 9254)

			cfg, err := nodecache.Parse(expandArgs(c), io.Discard)
			if err != nil {
				t.Fatalf("localdns-nodecache rejects the standby's args %q: %v", c.Args, err)
			}
			primaryCfg, err := nodecache.Parse(expandArgs(primary.Containers[0]), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Command != nodecache.CommandStandby || cfg.Setup.Interface || cfg.Setup.Rules || cfg.MetricsAddr != ":9254" {
				t.Errorf("parsed config %+v: want the standby command, no node setup, metrics on :9254", cfg)
			}
			same := func(c nodecache.Config) string {
				return fmt.Sprint(c.Listen, c.ClusterDomain, c.Upstream, c.UpstreamExternal, c.UpstreamTransport, c.StaleMax, c.HandoverSocket)
			}
			if same(cfg) != same(primaryCfg) {
				t.Errorf("the standby serves %s, the node cache %s: want the same address, resolution and handover socket", same(cfg), same(primaryCfg))
			}
			if cfg.CacheMaxBytes >= primaryCfg.CacheMaxBytes {
				t.Errorf("--cache-max-bytes %d, want less than the node cache's %d", cfg.CacheMaxBytes, primaryCfg.CacheMaxBytes)
			}
		})
	}
}

// TestStandbyDisabled: without the standby, nothing of it is rendered, and
// the node cache links to no handover socket.
func TestStandbyDisabled(t *testing.T) {
	m := manifest{t: t, name: "no standby", objs: splitObjects(t, helmTemplate(t,
		"--set", "nodecache.standby.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"))}
	for _, o := range m.objs {
		if strings.Contains(o.Name, "standby") {
			t.Errorf("%s %s rendered without the standby", o.Kind, o.Name)
		}
	}
	cfg, err := nodecache.Parse(expandArgs(m.daemonSet("localdns-nodecache").Spec.Template.Spec.Containers[0]), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HandoverSocket != "" {
		t.Errorf("--handover-socket %q without a standby, want none", cfg.HandoverSocket)
	}
	checkServiceMonitors(t, m)
}

func TestWebhookDeployment(t *testing.T) {
	for _, in := range installs {
		t.Run(in.name, func(t *testing.T) {
			m := load(t, in.name)
			var d appsv1.Deployment
			m.must("Deployment", "localdns-webhook", &d)
			pod := d.Spec.Template.Spec
			if d.Spec.Replicas == nil || *d.Spec.Replicas != in.replicas {
				t.Errorf("replicas %v, want %d", d.Spec.Replicas, in.replicas)
			}
			if pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil ||
				len(pod.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
				t.Errorf("want preferred pod anti-affinity")
			}
			psc := pod.SecurityContext
			if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
				t.Errorf("pod securityContext %+v: want runAsNonRoot and user 65532 (the image's nonroot)", psc)
			}
			if len(pod.Containers) != 1 {
				t.Fatalf("%d containers, want 1", len(pod.Containers))
			}
			checkLinuxOnly(t, "webhook", pod)
			c := pod.Containers[0]
			checkRestrictedContainer(t, pod, c)
			if c.Image != in.webhookImage {
				t.Errorf("image %q, want %q", c.Image, in.webhookImage)
			}
			if c.SecurityContext.Capabilities.Add != nil {
				t.Errorf("the webhook needs no capabilities, adds %v", c.SecurityContext.Capabilities.Add)
			}
			checkHTTPProbe(t, "readiness", c, c.ReadinessProbe, "/readyz", 9254)
			checkHTTPProbe(t, "liveness", c, c.LivenessProbe, "/healthz", 9254)

			cfg, err := webhook.ParseFlags("localdns-webhook", expandArgs(c), func(string) string { return "" }, io.Discard)
			if err != nil {
				t.Fatalf("localdns-webhook rejects the Deployment's args %q: %v", c.Args, err)
			}
			if cfg.StubImage != in.stubImage {
				t.Errorf("--stub-image resolves to %q, want %q (the webhook's tag)", cfg.StubImage, in.stubImage)
			}
			if cfg.Namespace != namespace || cfg.LocalIP != in.localIP || cfg.MetricsAddr != ":9254" {
				t.Errorf("namespace %q, local IP %q, metrics %q", cfg.Namespace, cfg.LocalIP, cfg.MetricsAddr)
			}
			if cfg.ClusterWide != in.clusterWide {
				t.Errorf("--cluster-wide = %v, want %v", cfg.ClusterWide, in.clusterWide)
			}
			ports := map[string]int32{}
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
			}
			if ports["webhook"] != int32(cfg.Port) || ports["metrics"] != 9254 {
				t.Errorf("container ports %v disagree with --port %d / --metrics-addr :9254", ports, cfg.Port)
			}

			var svc corev1.Service
			m.must("Service", cfg.ServiceName, &svc)
			if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
				t.Errorf("Service %s does not select the webhook pods", svc.Name)
			}
			var pdb policyv1.PodDisruptionBudget
			m.must("PodDisruptionBudget", "localdns-webhook", &pdb)
			if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
				t.Errorf("PDB minAvailable %v, want 1", pdb.Spec.MinAvailable)
			}
			if sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector); err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				t.Errorf("PDB does not select the webhook pods (%v)", err)
			}

			var mwc admissionregistrationv1.MutatingWebhookConfiguration
			m.must("MutatingWebhookConfiguration", cfg.WebhookConfigName, &mwc)
			for _, w := range mwc.Webhooks {
				ref := w.ClientConfig.Service
				if ref == nil || ref.Name != svc.Name || ref.Namespace != svc.Namespace || ref.Path == nil || *ref.Path != webhook.Path ||
					ref.Port == nil || *ref.Port != svc.Spec.Ports[0].Port {
					t.Errorf("webhook %s calls %+v, want Service %s/%s port %d path %s", w.Name, ref, svc.Namespace, svc.Name, svc.Spec.Ports[0].Port, webhook.Path)
				}
			}

			if (cfg.CertDir != "") != in.certManager {
				t.Errorf("--cert-dir %q, want one: %v", cfg.CertDir, in.certManager)
			}
			checkCABundleOnlyPolicy(t, m, in, cfg.WebhookConfigName)
			if !in.certManager {
				return
			}
			var cert struct {
				Metadata metav1.ObjectMeta `json:"metadata"`
				Spec     struct {
					SecretName string   `json:"secretName"`
					DNSNames   []string `json:"dnsNames"`
				} `json:"spec"`
			}
			if err := yaml.Unmarshal(m.raw("Certificate", "localdns-webhook"), &cert); err != nil {
				t.Fatal(err)
			}
			if got, want := mwc.Annotations["cert-manager.io/inject-ca-from"], cert.Metadata.Namespace+"/"+cert.Metadata.Name; got != want {
				t.Errorf("inject-ca-from %q, want %q", got, want)
			}
			if !slices.Contains(cert.Spec.DNSNames, svc.Name+"."+svc.Namespace+".svc") {
				t.Errorf("certificate DNS names %v lack the Service's", cert.Spec.DNSNames)
			}
			mounted := false
			for _, v := range pod.Volumes {
				if v.Secret != nil && v.Secret.SecretName == cert.Spec.SecretName {
					for _, vm := range c.VolumeMounts {
						mounted = mounted || (vm.Name == v.Name && vm.MountPath == cfg.CertDir)
					}
				}
			}
			if !mounted {
				t.Errorf("Secret %s is not mounted at --cert-dir %s", cert.Spec.SecretName, cfg.CertDir)
			}
		})
	}
}

// TestWebhookSelectors evaluates both entries' selectors the way the API
// server does, for each opt-in case of the design: how many entries call the
// webhook for a pod (never two: a pod would be mutated twice).
func TestWebhookSelectors(t *testing.T) {
	type ns = map[string]string
	type pod = map[string]string
	enabled := ns{"localdns.io/inject": "enabled"}
	disabled := ns{"localdns.io/inject": "disabled"}
	plain := ns{}
	podIn := pod{"localdns.io/inject": "true"}
	podOut := pod{"localdns.io/inject": "false"}
	own := pod{"app.kubernetes.io/part-of": "localdns", "localdns.io/inject": "true"}
	cases := []struct {
		what      string
		namespace string
		nsLabels  ns
		podLabels pod
		byOverlay map[string]bool // called with namespace opt-in ("default") and cluster-wide
	}{
		{"namespace enabled", "apps", enabled, pod{}, map[string]bool{"default": true, "cluster-wide": true}},
		{"namespace enabled, pod opted out", "apps", enabled, podOut, map[string]bool{"default": false, "cluster-wide": false}},
		{"unlabelled namespace", "apps", plain, pod{}, map[string]bool{"default": false, "cluster-wide": true}},
		{"unlabelled namespace, pod opted in", "apps", plain, podIn, map[string]bool{"default": true, "cluster-wide": true}},
		{"unlabelled namespace, pod opted out", "apps", plain, podOut, map[string]bool{"default": false, "cluster-wide": false}},
		{"namespace disabled", "apps", disabled, pod{}, map[string]bool{"default": false, "cluster-wide": false}},
		{"namespace disabled, pod opted in", "apps", disabled, podIn, map[string]bool{"default": true, "cluster-wide": true}},
		{"kube-system, even labelled", "kube-system", enabled, podIn, map[string]bool{"default": false, "cluster-wide": false}},
		{"localdns-system", namespace, enabled, podIn, map[string]bool{"default": false, "cluster-wide": false}},
		{"localdns's own pods elsewhere", "apps", enabled, own, map[string]bool{"default": false, "cluster-wide": false}},
	}
	for _, in := range installs {
		overlay := "default"
		if in.clusterWide {
			overlay = "cluster-wide"
		}
		t.Run(in.name, func(t *testing.T) {
			var mwc admissionregistrationv1.MutatingWebhookConfiguration
			load(t, in.name).must("MutatingWebhookConfiguration", "localdns-webhook", &mwc)
			if len(mwc.Webhooks) != 2 {
				t.Fatalf("%d webhook entries, want 2 (namespace opt-in, pod opt-in)", len(mwc.Webhooks))
			}
			for _, w := range mwc.Webhooks {
				checkWebhookEntry(t, w)
			}
			for _, tc := range cases {
				nsLabels := labels.Set{"kubernetes.io/metadata.name": tc.namespace}
				for k, v := range tc.nsLabels {
					nsLabels[k] = v
				}
				calls := 0
				for _, w := range mwc.Webhooks {
					nsSel, err1 := metav1.LabelSelectorAsSelector(w.NamespaceSelector)
					objSel, err2 := metav1.LabelSelectorAsSelector(w.ObjectSelector)
					if err1 != nil || err2 != nil {
						t.Fatalf("%s: selectors do not parse: %v %v", w.Name, err1, err2)
					}
					if nsSel.Matches(nsLabels) && objSel.Matches(labels.Set(tc.podLabels)) {
						calls++
					}
				}
				if want := tc.byOverlay[overlay]; calls > 1 || (calls == 1) != want {
					t.Errorf("%s: %d entries call the webhook, want %v", tc.what, calls, want)
				}
			}
		})
	}
}

func checkWebhookEntry(t *testing.T, w admissionregistrationv1.MutatingWebhook) {
	t.Helper()
	if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Ignore {
		t.Errorf("%s: failurePolicy must be Ignore (admission never blocks a pod)", w.Name)
	}
	if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
		t.Errorf("%s: sideEffects must be None", w.Name)
	}
	if w.TimeoutSeconds == nil || *w.TimeoutSeconds > 5 {
		t.Errorf("%s: timeoutSeconds %v, want a short one (<= 5)", w.Name, w.TimeoutSeconds)
	}
	if w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != admissionregistrationv1.NeverReinvocationPolicy {
		t.Errorf("%s: reinvocationPolicy %v, want Never (the webhook's marker makes a second call a no-op)", w.Name, w.ReinvocationPolicy)
	}
	if len(w.Rules) != 1 || !slices.Equal(w.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) ||
		!slices.Equal(w.Rules[0].Resources, []string{"pods"}) {
		t.Errorf("%s: rules %+v, want pod CREATE only", w.Name, w.Rules)
	}
	if !slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
		t.Errorf("%s: admissionReviewVersions %v", w.Name, w.AdmissionReviewVersions)
	}
}

// rbacRule is one (group, resource, verb, resourceName) grant, flattened.
type rbacRule struct{ scope, group, resource, verb, name string }

// TestRBACLeastPrivilege lists every grant each service account gets and
// compares it with what its code uses, exactly.
func TestRBACLeastPrivilege(t *testing.T) {
	selfManagedTLS := []rbacRule{
		{"cluster", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get", "localdns-webhook"},
		{"cluster", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "list", "localdns-webhook"},
		{"cluster", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "watch", "localdns-webhook"},
		{"cluster", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "update", "localdns-webhook"},
		{"cluster", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch", "localdns-webhook"},
		{namespace, "", "secrets", "get", "localdns-webhook-tls"},
		{namespace, "", "secrets", "list", "localdns-webhook-tls"},
		{namespace, "", "secrets", "watch", "localdns-webhook-tls"},
		{namespace, "", "secrets", "update", "localdns-webhook-tls"},
		{namespace, "", "secrets", "patch", "localdns-webhook-tls"},
		{namespace, "", "secrets", "create", ""},
	}
	webhookBase := []rbacRule{
		{"cluster", "", "namespaces", "get", ""},
		{"cluster", "", "namespaces", "list", ""},
		{"cluster", "", "namespaces", "watch", ""},
		{"kube-system", "", "services", "get", "kube-dns"},
		{"kube-system", "", "services", "list", "kube-dns"},
		{"kube-system", "", "services", "watch", "kube-dns"},
	}
	nodecacheGrants := []rbacRule{{"kube-system", "", "services", "get", "kube-dns"}}
	// Every Node (RBAC cannot name the pod's own); the startup taint's
	// policy narrows it.
	startupTaintGrants := []rbacRule{{"cluster", "", "nodes", "get", ""}, {"cluster", "", "nodes", "update", ""}}
	for _, in := range installs {
		t.Run(in.name, func(t *testing.T) {
			m := load(t, in.name)
			wantWebhook := webhookBase
			if !in.certManager {
				wantWebhook = append(slices.Clone(webhookBase), selfManagedTLS...)
			}
			wantNodecache := nodecacheGrants
			if in.startupTaint != "" {
				wantNodecache = slices.Concat(nodecacheGrants, startupTaintGrants)
			}
			checkStartupTaintPolicy(t, m, in)
			for sa, want := range map[string][]rbacRule{"localdns-webhook": wantWebhook, "localdns-nodecache": wantNodecache} {
				got := grants(t, m, sa)
				sortRules(got)
				sortRules(want)
				if !slices.Equal(got, want) {
					t.Errorf("service account %s is granted\n%v\nwant exactly\n%v", sa, got, want)
				}
			}
		})
	}
}

func sortRules(r []rbacRule) {
	slices.SortFunc(r, func(a, b rbacRule) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
}

// grants flattens every rule bound to the service account sa.
func grants(t *testing.T, m manifest, sa string) []rbacRule {
	t.Helper()
	var out []rbacRule
	for _, o := range m.objs {
		var subjects []rbacv1.Subject
		var ref rbacv1.RoleRef
		scope := "cluster"
		switch o.Kind {
		case "RoleBinding":
			var b rbacv1.RoleBinding
			m.must(o.Kind, o.Name, &b)
			if b.Namespace != o.Namespace {
				continue // another binding of the same name
			}
			subjects, ref, scope = b.Subjects, b.RoleRef, b.Namespace
		case "ClusterRoleBinding":
			var b rbacv1.ClusterRoleBinding
			m.must(o.Kind, o.Name, &b)
			subjects, ref = b.Subjects, b.RoleRef
		default:
			continue
		}
		if !slices.ContainsFunc(subjects, func(s rbacv1.Subject) bool {
			return s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == namespace
		}) {
			continue
		}
		for _, rule := range roleRules(t, m, ref.Kind, ref.Name, scope) {
			for _, g := range rule.APIGroups {
				for _, res := range rule.Resources {
					for _, verb := range rule.Verbs {
						if g == "*" || res == "*" || verb == "*" {
							t.Errorf("%s %s: wildcard grant %+v", ref.Kind, ref.Name, rule)
						}
						names := rule.ResourceNames
						if len(names) == 0 {
							names = []string{""}
						}
						for _, n := range names {
							out = append(out, rbacRule{scope, g, res, verb, n})
						}
					}
				}
			}
		}
	}
	return out
}

// roleRules finds the rules of the Role (in namespace scope) or ClusterRole
// a binding refers to; several Roles may share a name across namespaces.
func roleRules(t *testing.T, m manifest, kind, name, scope string) []rbacv1.PolicyRule {
	t.Helper()
	for _, o := range m.objs {
		if o.Kind != kind || o.Name != name || (kind == "Role" && o.Namespace != scope) {
			continue
		}
		var role struct {
			Rules []rbacv1.PolicyRule `json:"rules"`
		}
		if err := yaml.Unmarshal(o.raw, &role); err != nil {
			t.Fatal(err)
		}
		return role.Rules
	}
	t.Fatalf("%s %s (scope %s) is bound but not defined", kind, name, scope)
	return nil
}

// TestCleanupMatchesNodecache checks that the uninstall DaemonSet removes
// exactly what the node cache sets up, as a valid cleanup command line: the
// kustomization against the default overlay, and the chart's cleanup with
// each profile's values against that profile's node cache.
func TestCleanupMatchesNodecache(t *testing.T) {
	pairs := map[string]func(t *testing.T) []byte{
		"default": func(t *testing.T) []byte { return rendered(t, "uninstall") },
	}
	for name := range chartProfiles {
		pairs[name] = func(t *testing.T) []byte {
			return renderProfile(t, name, "--set", "nodeCleanup.render=true", "--show-only", "templates/cleanup.yaml")
		}
	}
	for name, renderCleanup := range pairs {
		t.Run(name, func(t *testing.T) {
			serve := load(t, name).daemonSet("localdns-nodecache").Spec.Template.Spec
			cleanupManifest := manifest{t: t, name: name + " cleanup", objs: splitObjects(t, renderCleanup(t))}
			checkCleanup(t, serve, cleanupManifest.daemonSet("localdns-cleanup").Spec.Template.Spec)
		})
	}
}

func checkCleanup(t *testing.T, serve, cleanup corev1.PodSpec) {
	t.Helper()
	serveCfg, err := nodecache.Parse(expandArgs(serve.Containers[0]), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(cleanup.InitContainers) != 1 {
		t.Fatalf("%d init containers, want the one cleanup", len(cleanup.InitContainers))
	}
	c := cleanup.InitContainers[0]
	checkRestrictedContainer(t, cleanup, c)
	if c.Image != serve.Containers[0].Image {
		t.Errorf("cleanup image %q, the node cache's %q", c.Image, serve.Containers[0].Image)
	}
	cfg, err := nodecache.Parse(expandArgs(c), io.Discard)
	if err != nil {
		t.Fatalf("localdns-nodecache rejects the cleanup args %q: %v", c.Args, err)
	}
	if cfg.Command != nodecache.CommandCleanup {
		t.Errorf("cleanup args %q do not select the cleanup command", c.Args)
	}
	if fmt.Sprint(cfg.Listen, cfg.Setup) != fmt.Sprint(serveCfg.Listen, serveCfg.Setup) {
		t.Errorf("cleanup removes %v %+v, the node cache sets up %v %+v", cfg.Listen, cfg.Setup, serveCfg.Listen, serveCfg.Setup)
	}
	if !cleanup.HostNetwork || !slices.Equal(cleanup.Tolerations, serve.Tolerations) || !maps.Equal(cleanup.NodeSelector, serve.NodeSelector) {
		t.Errorf("cleanup must run on the node cache's nodes, on their network: hostNetwork %v, tolerations %+v, nodeSelector %v; the node cache's %+v, %v",
			cleanup.HostNetwork, cleanup.Tolerations, cleanup.NodeSelector, serve.Tolerations, serve.NodeSelector)
	}
	checkLinuxOnly(t, "cleanup", cleanup)
}

// TestMonitoring checks that each ServiceMonitor selects a Service with the
// port it scrapes (manifests/monitoring on the default overlay, and each chart
// profile with monitoring), and that the dashboard is valid JSON that only
// queries localdns's and the Go runtime's metrics.
func TestMonitoring(t *testing.T) {
	withMonitoring := map[string][]object{
		"default+monitoring": slices.Concat(load(t, "monitoring").objs, load(t, "default").objs),
	}
	for _, in := range installs {
		if in.monitoring {
			withMonitoring[in.name] = load(t, in.name).objs
		}
	}
	for name, objs := range withMonitoring {
		t.Run(name, func(t *testing.T) { checkServiceMonitors(t, manifest{t: t, name: name, objs: objs}) })
	}

	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	queries := 0
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			queries++
			for _, name := range promQLMetrics(target.Expr) {
				if !strings.HasPrefix(name, "localdns_") && !strings.HasPrefix(name, "process_") {
					t.Errorf("panel %q queries %q: not a localdns or process metric", p.Title, name)
				}
			}
		}
	}
	if queries == 0 {
		t.Error("dashboard has no queries")
	}
}

// checkServiceMonitors checks that every ServiceMonitor of m selects a
// Service of m with the port it scrapes.
func checkServiceMonitors(t *testing.T, m manifest) {
	t.Helper()
	monitors := 0
	for _, o := range m.objs {
		if o.Kind != "ServiceMonitor" {
			continue
		}
		var sm struct {
			Spec struct {
				Selector  metav1.LabelSelector `json:"selector"`
				Endpoints []struct {
					Port string `json:"port"`
				} `json:"endpoints"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(o.raw, &sm); err != nil {
			t.Fatal(err)
		}
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, so := range m.objs {
			if so.Kind != "Service" || so.Namespace != o.Namespace {
				continue
			}
			var svc corev1.Service
			m.must("Service", so.Name, &svc)
			if !sel.Matches(labels.Set(svc.Labels)) {
				continue
			}
			for _, ep := range sm.Spec.Endpoints {
				found = found || slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port })
			}
		}
		if !found {
			t.Errorf("ServiceMonitor %s selects no Service with its port", o.Name)
		}
		monitors++
	}
	want := 2
	if m.get("DaemonSet", "localdns-nodecache-standby", &appsv1.DaemonSet{}) {
		want = 3
	}
	if monitors != want {
		t.Errorf("%d ServiceMonitors, want %d (node cache, its standby when installed, webhook)", monitors, want)
	}
}

func TestPromQLMetrics(t *testing.T) {
	tests := []struct {
		expr string
		want []string
	}{
		{`sum by (rcode) (rate(localdns_nodecache_requests_total[5m]))`, []string{"localdns_nodecache_requests_total"}},
		{`histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{job="x"}[1m])))`, []string{"a_seconds_bucket"}},
		{`min by (node) (up) / b`, []string{"up", "b"}},
	}
	for _, tt := range tests {
		if got := promQLMetrics(tt.expr); !slices.Equal(got, tt.want) {
			t.Errorf("promQLMetrics(%q) = %q, want %q", tt.expr, got, tt.want)
		}
	}
}

// promQLMetrics returns the metric names a (simple) PromQL expression
// reads: identifiers that are not functions, once grouping labels, label
// matchers and ranges are removed.
func promQLMetrics(expr string) []string {
	for _, strip := range []string{`\b(by|without)\s*\([^)]*\)`, `\{[^}]*\}`, `\[[^\]]*\]`} {
		expr = regexp.MustCompile(strip).ReplaceAllString(expr, " ")
	}
	var names []string
	for _, m := range regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`).FindAllString(expr, -1) {
		if !strings.HasSuffix(m, "(") {
			names = append(names, m)
		}
	}
	return names
}

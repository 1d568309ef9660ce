package webhook

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// These tests go through a real kube-apiserver: the pods are created by a
// client, sent by the API server to the webhook per the registered
// configuration, validated by the API server and stored. They assert the
// stored pods (envtest runs no kubelet: nothing starts).

// create creates pod in ns and returns the stored pod.
func create(t *testing.T, clientset kubernetes.Interface, ns string, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	if _, err := clientset.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, pod.Name, err)
	}
	stored, err := clientset.CoreV1().Pods(ns).Get(t.Context(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod %s/%s: %v", ns, pod.Name, err)
	}
	return stored
}

// assertInjected checks the stored pod carries the mode's DNS settings.
func assertInjected(t *testing.T, pod *corev1.Pod, mode Mode, nameservers ...string) {
	t.Helper()
	if got := pod.Annotations[AnnotationInjected]; got != string(mode) {
		t.Fatalf("stored pod %s: %s=%q, want %q", pod.Name, AnnotationInjected, got, mode)
	}
	if pod.Spec.DNSPolicy != corev1.DNSNone || pod.Spec.DNSConfig == nil {
		t.Fatalf("stored pod %s: dnsPolicy %s, dnsConfig %v", pod.Name, pod.Spec.DNSPolicy, pod.Spec.DNSConfig)
	}
	if !slices.Equal(pod.Spec.DNSConfig.Nameservers, nameservers) {
		t.Errorf("stored pod %s: nameservers %q, want %q", pod.Name, pod.Spec.DNSConfig.Nameservers, nameservers)
	}
	wantSearches := []string{pod.Namespace + ".svc.cluster.local", "svc.cluster.local", "cluster.local"}
	if got := pod.Spec.DNSConfig.Searches; len(got) < 3 || !slices.Equal(got[:3], wantSearches) {
		t.Errorf("stored pod %s: searches %q, want them to start with %q", pod.Name, got, wantSearches)
	}
}

// assertUntouched checks the stored pod kept the API server's defaults.
func assertUntouched(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	if _, marked := pod.Annotations[AnnotationInjected]; marked || pod.Spec.DNSPolicy != corev1.DNSClusterFirst || pod.Spec.DNSConfig != nil {
		t.Fatalf("stored pod %s was mutated: annotations %v, dnsPolicy %s, dnsConfig %v",
			pod.Name, pod.Annotations, pod.Spec.DNSPolicy, pod.Spec.DNSConfig)
	}
}

func TestAPIServerOptIn(t *testing.T) {
	s := requireSuite(t)
	clientset, _ := s.client(t)
	// The shipped objectSelector keeps localdns's own pods out.
	webhookPod := map[string]string{LabelInject: podOptIn, "app.kubernetes.io/part-of": "localdns"}
	tests := []struct {
		name      string
		profile   string
		nsLabel   string
		podLabels map[string]string
		inject    bool
	}{
		{"enabled namespace", profileDefault, namespaceEnabled, nil, true},
		{"enabled namespace, pod false", profileDefault, namespaceEnabled, map[string]string{LabelInject: podOptOut}, false},
		{"unlabelled namespace", profileDefault, "", nil, false},
		{"unlabelled namespace, pod true", profileDefault, "", map[string]string{LabelInject: podOptIn}, true},
		{"disabled namespace", profileDefault, namespaceDisabled, nil, false},
		{"disabled namespace, pod true", profileDefault, namespaceDisabled, map[string]string{LabelInject: podOptIn}, true},
		{"the webhook's own pods", profileDefault, namespaceEnabled, webhookPod, false},
		{"cluster-wide unlabelled namespace", profileClusterWide, "", nil, true},
		{"cluster-wide unlabelled namespace, pod false", profileClusterWide, "", map[string]string{LabelInject: podOptOut}, false},
		{"cluster-wide disabled namespace", profileClusterWide, namespaceDisabled, nil, false},
		{"cluster-wide disabled namespace, pod true", profileClusterWide, namespaceDisabled, map[string]string{LabelInject: podOptIn}, true},
		{"cluster-wide the webhook's own pods", profileClusterWide, "", webhookPod, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := s.namespace(t, clientset, tt.profile, tt.nsLabel)
			stored := create(t, clientset, ns, testPod("app", tt.podLabels, nil))
			if tt.inject {
				assertInjected(t, stored, ModeNodeCache, "169.254.20.10", fixedKubeDNS)
				return
			}
			assertUntouched(t, stored)
		})
	}
}

// TestAPIServerSkips covers the skips the selectors cannot express; the
// handler re-checks everything, so they hold even if the selectors drift.
func TestAPIServerSkips(t *testing.T) {
	s := requireSuite(t)
	clientset, _ := s.client(t)
	ns := s.namespace(t, clientset, profileDefault, namespaceEnabled)
	for _, policy := range []corev1.DNSPolicy{corev1.DNSDefault, corev1.DNSNone} {
		t.Run(string(policy), func(t *testing.T) {
			pod := testPod("policy-"+strings.ToLower(string(policy)), nil, nil)
			pod.Spec.DNSPolicy = policy
			if policy == corev1.DNSNone {
				pod.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"192.0.2.1"}}
			}
			stored := create(t, clientset, ns, pod)
			if stored.Spec.DNSPolicy != policy || stored.Annotations[AnnotationInjected] != "" {
				t.Fatalf("stored pod mutated: dnsPolicy %s, annotations %v", stored.Spec.DNSPolicy, stored.Annotations)
			}
		})
	}
	t.Run("hostNetwork ClusterFirst", func(t *testing.T) {
		pod := testPod("hostnet-clusterfirst", nil, nil)
		pod.Spec.HostNetwork = true
		stored := create(t, clientset, ns, pod)
		assertUntouched(t, stored)
	})
	t.Run("Windows pod", func(t *testing.T) {
		pod := testPod("windows", nil, nil)
		pod.Spec.OS = &corev1.PodOS{Name: corev1.Windows}
		assertUntouched(t, create(t, clientset, ns, pod))
	})
	t.Run("Windows node selector", func(t *testing.T) {
		pod := testPod("windows-selector", nil, nil)
		pod.Spec.NodeSelector = map[string]string{corev1.LabelOSStable: "windows"}
		assertUntouched(t, create(t, clientset, ns, pod))
	})
	t.Run("hostNetwork ClusterFirstWithHostNet is injected", func(t *testing.T) {
		pod := testPod("hostnet-withhostnet", nil, nil)
		pod.Spec.HostNetwork = true
		pod.Spec.DNSPolicy = corev1.DNSClusterFirstWithHostNet
		stored := create(t, clientset, ns, pod)
		assertInjected(t, stored, ModeNodeCache, "169.254.20.10", fixedKubeDNS)
	})
}

func TestAPIServerAnnotationsAndWarnings(t *testing.T) {
	s := requireSuite(t)
	clientset, warnings := s.client(t)
	ns := s.namespace(t, clientset, profileDefault, namespaceEnabled)
	pod := testPod("annotated", nil, map[string]string{
		AnnotationNdots:    "3",
		AnnotationTimeout:  "99",
		AnnotationAttempts: "4",
		AnnotationOptions:  "use-vc,edns0",
		AnnotationSearches: "corp.example,not a domain",
		AnnotationMode:     "turbo",
	})
	pod.Spec.DNSConfig = &corev1.PodDNSConfig{Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr("1")}, {Name: "rotate"}}}
	stored := create(t, clientset, ns, pod)
	assertInjected(t, stored, ModeNodeCache, "169.254.20.10", fixedKubeDNS)
	if got, want := stored.Spec.DNSConfig.Searches, []string{ns + ".svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"}; !slices.Equal(got, want) {
		t.Errorf("searches %q, want %q", got, want)
	}
	if got, want := optionString(stored.Spec.DNSConfig.Options), "ndots:3 timeout:1 attempts:4 single-request-reopen rotate use-vc edns0"; got != want {
		t.Errorf("options %q, want %q", got, want)
	}
	got := warnings.take()
	for _, want := range []string{`localdns.io/mode="turbo"`, `localdns.io/searches="not a domain"`, `localdns.io/timeout="99"`} {
		if !slices.ContainsFunc(got, func(w string) bool { return strings.Contains(w, want) }) {
			t.Errorf("client warnings %q: none names %s", got, want)
		}
	}
}

func TestAPIServerLimits(t *testing.T) {
	s := requireSuite(t)
	clientset, warnings := s.client(t)
	ns := s.namespace(t, clientset, profileDefault, namespaceEnabled)
	var extra []string
	for i := range 40 {
		extra = append(extra, "d"+strings.Repeat("x", 50)+string(rune('a'+i%26))+strings.Repeat("y", i)+".example")
	}
	pod := testPod("limits", nil, map[string]string{AnnotationSearches: strings.Join(extra, ",")})
	pod.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"192.0.2.1", "192.0.2.2"}}
	stored := create(t, clientset, ns, pod) // the API server accepts it: within its limits
	assertInjected(t, stored, ModeNodeCache, "169.254.20.10", fixedKubeDNS, "192.0.2.1")
	searches := stored.Spec.DNSConfig.Searches
	if len(searches) > maxSearches || len(strings.Join(searches, " ")) > maxSearchListChars {
		t.Errorf("stored search list beyond the limits: %d domains, %d chars", len(searches), len(strings.Join(searches, " ")))
	}
	got := warnings.take()
	for _, want := range []string{"dropped 192.0.2.2", "search domains and 2048 characters; dropped"} {
		if !slices.ContainsFunc(got, func(w string) bool { return strings.Contains(w, want) }) {
			t.Errorf("client warnings %q: none says %q", got, want)
		}
	}
}

func TestAPIServerStub(t *testing.T) {
	s := requireSuite(t)
	clientset, _ := s.client(t)
	tests := []struct {
		name    string
		profile string
		image   string
		mode    string
		native  bool // API server 1.37 detected by discovery (auto) vs --native-sidecars=false
	}{
		{"stub as native sidecar", profileDefault, "registry.example/app:1", "stub", true},
		{"auto detects alpine", profileDefault, "docker.io/library/alpine:3.20", "auto", true},
		{"stub as first regular container", profileLegacy, "registry.example/app:1", "stub", false},
		{"auto on a glibc image stays nodecache", profileDefault, "debian:12", "auto", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := s.namespace(t, clientset, tt.profile, namespaceEnabled)
			pod := testPod("stub", nil, map[string]string{AnnotationMode: tt.mode})
			pod.Spec.Containers[0].Image = tt.image
			stored := create(t, clientset, ns, pod)
			if tt.mode == "auto" && tt.image == "debian:12" {
				assertInjected(t, stored, ModeNodeCache, "169.254.20.10", fixedKubeDNS)
				if len(stored.Spec.InitContainers) != 0 || len(stored.Spec.Containers) != 1 {
					t.Fatalf("stub injected into a glibc pod: %v %v", stored.Spec.InitContainers, stored.Spec.Containers)
				}
				return
			}
			assertInjected(t, stored, ModeStub, "127.0.0.1", "169.254.20.10")
			var stub corev1.Container
			if tt.native {
				if len(stored.Spec.InitContainers) != 1 || len(stored.Spec.Containers) != 1 {
					t.Fatalf("want one init (the stub) and one app container, got %d and %d", len(stored.Spec.InitContainers), len(stored.Spec.Containers))
				}
				stub = stored.Spec.InitContainers[0]
				if stub.RestartPolicy == nil || *stub.RestartPolicy != corev1.ContainerRestartPolicyAlways {
					t.Errorf("native sidecar without restartPolicy Always: %v", stub.RestartPolicy)
				}
			} else {
				if len(stored.Spec.InitContainers) != 0 || len(stored.Spec.Containers) != 2 {
					t.Fatalf("want the stub and the app as containers, got %d init and %d", len(stored.Spec.InitContainers), len(stored.Spec.Containers))
				}
				stub = stored.Spec.Containers[0]
			}
			if stub.Name != StubContainerName || stub.Image != "registry.example/localdns-stub:test" || stub.StartupProbe == nil {
				t.Errorf("stub container %s image %s probe %v", stub.Name, stub.Image, stub.StartupProbe)
			}
			if want := "--fallback " + fixedKubeDNS + ":53"; !strings.Contains(strings.Join(stub.Args, " "), want) {
				t.Errorf("stub args %q lack %q", stub.Args, want)
			}
			sc := stored.Spec.SecurityContext
			if sc == nil || !slices.Contains(sc.Sysctls, corev1.Sysctl{Name: unprivPortName, Value: "53"}) {
				t.Errorf("pod sysctls %v lack %s=53", sc, unprivPortName)
			}
		})
	}
}

// TestAPIServerStubPodSecurityRestricted: the stub keeps a pod that meets
// Pod Security "restricted" within it (the API server's PodSecurity admission
// runs after the webhook and would reject the pod otherwise).
func TestAPIServerStubPodSecurityRestricted(t *testing.T) {
	s := requireSuite(t)
	clientset, _ := s.client(t)
	ns := s.namespace(t, clientset, profileDefault, namespaceEnabled)
	restricted := map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}
	if _, err := clientset.CoreV1().Namespaces().Patch(t.Context(), ns, types.MergePatchType,
		mustJSON(t, map[string]any{"metadata": map[string]any{"labels": restricted}}), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := testPod("restricted", nil, map[string]string{AnnotationMode: "stub"})
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr(true)}
	pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{ // seccomp per container, not per pod
		AllowPrivilegeEscalation: ptr(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	stored := create(t, clientset, ns, pod)
	assertInjected(t, stored, ModeStub, "127.0.0.1", "169.254.20.10")
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestAPIServerNoDoubleMutation(t *testing.T) {
	s := requireSuite(t)
	clientset, warnings := s.client(t)
	ns := s.namespace(t, clientset, profileDefault, namespaceEnabled)
	first := create(t, clientset, ns, testPod("first", nil, map[string]string{AnnotationMode: "stub"}))
	assertInjected(t, first, ModeStub, "127.0.0.1", "169.254.20.10")

	t.Run("update", func(t *testing.T) {
		updated := first.DeepCopy()
		updated.Labels = map[string]string{"touched": "yes"}
		got, err := clientset.CoreV1().Pods(ns).Update(t.Context(), updated, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Spec.InitContainers) != 1 || !slices.Equal(got.Spec.DNSConfig.Nameservers, first.Spec.DNSConfig.Nameservers) {
			t.Fatalf("update changed the pod: init %v, dnsConfig %v", got.Spec.InitContainers, got.Spec.DNSConfig)
		}
	})
	t.Run("re-create with the marker", func(t *testing.T) {
		again := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "again", Labels: first.Labels, Annotations: first.Annotations},
			Spec:       *first.Spec.DeepCopy(),
		}
		again.Spec.NodeName = ""
		stored := create(t, clientset, ns, again)
		if len(stored.Spec.InitContainers) != 1 || len(stored.Spec.Containers) != 1 ||
			!slices.Equal(stored.Spec.DNSConfig.Searches, first.Spec.DNSConfig.Searches) {
			t.Fatalf("re-created pod mutated twice: init %d, containers %d, searches %q",
				len(stored.Spec.InitContainers), len(stored.Spec.Containers), stored.Spec.DNSConfig.Searches)
		}
	})
	t.Run("existing localdns-stub container", func(t *testing.T) {
		warnings.take()
		pod := testPod("manual", nil, nil)
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: StubContainerName, Image: "stub:0"})
		stored := create(t, clientset, ns, pod)
		assertUntouched(t, stored)
		if got := warnings.take(); !slices.ContainsFunc(got, func(w string) bool { return strings.Contains(w, "already has a container named localdns-stub") }) {
			t.Errorf("warnings %q lack the existing-stub warning", got)
		}
	})
}

// TestAPIServerWebhookDown: the down profile's configuration points at a port
// nobody listens on, the hung profile's at a server that accepts and never
// answers; failurePolicy Ignore lets the pod in unchanged either way.
func TestAPIServerWebhookDown(t *testing.T) {
	s := requireSuite(t)
	clientset, _ := s.client(t)
	for _, profile := range []string{profileDown, profileHung} {
		t.Run(profile, func(t *testing.T) {
			t.Parallel()
			ns := s.namespace(t, clientset, profile, namespaceEnabled)
			stored := create(t, clientset, ns, testPod("unserved", nil, nil))
			assertUntouched(t, stored)
		})
	}
}

// TestAPIServerKubeDNSDiscovery: without --kube-dns-ip the fallback comes from
// the kube-dns Service, followed through its watch when it is replaced.
func TestAPIServerKubeDNSDiscovery(t *testing.T) {
	s := requireSuite(t)
	clientset, _ := s.client(t)
	ns := s.namespace(t, clientset, profileDiscover, namespaceEnabled)

	stored := create(t, clientset, ns, testPod("before", nil, nil))
	assertUntouched(t, stored) // no Service yet: no fallback to write, pod left alone

	for _, ip := range []string{"10.0.0.53", "10.0.0.54"} {
		replaceService(t, clientset, corev1.ServiceSpec{ClusterIP: ip})
		waitNameservers(t, clientset, ns, "169.254.20.10", ip)
		stored := create(t, clientset, ns, testPod("with-"+strings.ReplaceAll(ip, ".", "-"), nil, nil))
		assertInjected(t, stored, ModeNodeCache, "169.254.20.10", ip)
	}
}

// waitNameservers waits until the webhook's watch has seen the Service: dry-run
// pods come back with these nameservers (none: left unchanged).
func waitNameservers(t *testing.T, clientset kubernetes.Interface, ns string, want ...string) {
	t.Helper()
	var got []string
	err := wait.PollUntilContextTimeout(t.Context(), 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		pod, err := clientset.CoreV1().Pods(ns).Create(ctx, testPod("probe", nil, nil), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, err
		}
		got = nil
		if pod.Spec.DNSConfig != nil {
			got = pod.Spec.DNSConfig.Nameservers
		}
		return slices.Equal(got, want), nil
	})
	if err != nil {
		t.Fatalf("webhook never gave pods nameservers %q (last %q): %v", want, got, err)
	}
}

// replaceService replaces the discover profile's kube-dns Service (a
// ClusterIP cannot change in place) and returns the stored one.
func replaceService(t *testing.T, clientset kubernetes.Interface, spec corev1.ServiceSpec) *corev1.Service {
	t.Helper()
	services := clientset.CoreV1().Services(metav1.NamespaceSystem)
	if err := services.Delete(t.Context(), discoverService, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	spec.Ports = []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}
	svc, err := services.Create(t.Context(), &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: discoverService}, Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create kube-dns Service %+v: %v", spec, err)
	}
	return svc
}

// TestAPIServerIPFamilies: IPv6 and dual-stack kube-dns Services, as the
// API server stores them (spec.ipFamilies, spec.clusterIPs), give pods the
// node cache and fallback addresses of their families, in both modes; a
// Service made dual-stack in place is followed through the watch.
func TestAPIServerIPFamilies(t *testing.T) {
	s := requireSuite(t)
	clientset, warnings := s.client(t)
	ns := s.namespace(t, clientset, profileDiscover, namespaceEnabled)
	const nodeCache4, nodeCache6 = "169.254.20.10", "fd6c:6f63:616c::10"
	t.Cleanup(func() {
		// The next test of this profile starts without a Service.
		err := clientset.CoreV1().Services(metav1.NamespaceSystem).Delete(context.Background(), discoverService, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	})
	singleStack, requireDual := corev1.IPFamilyPolicySingleStack, corev1.IPFamilyPolicyRequireDualStack
	tests := []struct {
		name      string
		spec      corev1.ServiceSpec
		nodecache []string
		stub      []string
		stubArgs  string // a substring of the stub's arguments
		probe     string
	}{
		{
			name:      "IPv6 single-stack",
			spec:      corev1.ServiceSpec{IPFamilyPolicy: &singleStack, IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol}, ClusterIP: "fd00:10:96::53"},
			nodecache: []string{nodeCache6, "fd00:10:96::53"},
			stub:      []string{"::1", nodeCache6},
			stubArgs:  "--listen [::1]:53 --listen 127.0.0.1:53 --node-cache [fd6c:6f63:616c::10]:53 --fallback [fd00:10:96::53]:53 ",
			probe:     "[::1]:53",
		},
		{
			name: "dual-stack, IPv4 primary",
			spec: corev1.ServiceSpec{IPFamilyPolicy: &requireDual, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
				ClusterIP: "10.0.0.57", ClusterIPs: []string{"10.0.0.57", "fd00:10:96::57"}},
			nodecache: []string{nodeCache4, nodeCache6, "10.0.0.57"},
			stub:      []string{"127.0.0.1", nodeCache4},
			stubArgs:  "--listen 127.0.0.1:53 --node-cache 169.254.20.10:53 --fallback 10.0.0.57:53 ",
			probe:     "127.0.0.1:53",
		},
		{
			name: "dual-stack, IPv6 primary",
			spec: corev1.ServiceSpec{IPFamilyPolicy: &requireDual, IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol},
				ClusterIP: "fd00:10:96::58", ClusterIPs: []string{"fd00:10:96::58", "10.0.0.58"}},
			nodecache: []string{nodeCache6, nodeCache4, "fd00:10:96::58"},
			stub:      []string{"::1", nodeCache6},
			stubArgs:  "--listen [::1]:53 --listen 127.0.0.1:53 --node-cache [fd6c:6f63:616c::10]:53 --fallback [fd00:10:96::58]:53 ",
			probe:     "[::1]:53",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			replaceService(t, clientset, tt.spec)
			waitNameservers(t, clientset, ns, tt.nodecache...)
			name := strings.ReplaceAll(strings.ToLower(tt.name), " ", "")
			name = strings.NewReplacer(",", "-", "ipv", "v").Replace(name)
			assertInjected(t, create(t, clientset, ns, testPod("nodecache-"+name, nil, nil)), ModeNodeCache, tt.nodecache...)

			stored := create(t, clientset, ns, testPod("stub-"+name, nil, map[string]string{AnnotationMode: "stub"}))
			assertInjected(t, stored, ModeStub, tt.stub...)
			if len(stored.Spec.InitContainers) == 0 || stored.Spec.InitContainers[0].Name != StubContainerName {
				t.Fatalf("no stub init container: %v", stored.Spec.InitContainers)
			}
			stub := stored.Spec.InitContainers[0]
			if args := strings.Join(stub.Args, " "); !strings.HasPrefix(args, tt.stubArgs) {
				t.Errorf("stub args %q, want them to start with %q", args, tt.stubArgs)
			}
			if got := stub.StartupProbe.Exec.Command; got[len(got)-1] != tt.probe {
				t.Errorf("stub probe %q, want it to ask %s", got, tt.probe)
			}
		})
	}

	t.Run("dual-stack: the pod's own nameserver gives way, with a warning", func(t *testing.T) {
		warnings.take()
		pod := testPod("own-nameserver", nil, nil)
		pod.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"2001:db8::53"}}
		// The API server accepts what the webhook wrote: 3 nameservers.
		assertInjected(t, create(t, clientset, ns, pod), ModeNodeCache, nodeCache6, nodeCache4, "fd00:10:96::58")
		if got := warnings.take(); !slices.ContainsFunc(got, func(w string) bool { return strings.Contains(w, "allows 3 nameservers; dropped 2001:db8::53") }) {
			t.Errorf("client warnings %q lack the dropped nameserver", got)
		}
	})

	t.Run("single-stack made dual-stack in place", func(t *testing.T) {
		svc := replaceService(t, clientset, corev1.ServiceSpec{IPFamilyPolicy: &singleStack, ClusterIP: "10.0.0.59"})
		waitNameservers(t, clientset, ns, nodeCache4, "10.0.0.59")
		preferDual := corev1.IPFamilyPolicyPreferDualStack
		svc.Spec.IPFamilyPolicy = &preferDual
		svc, err := clientset.CoreV1().Services(metav1.NamespaceSystem).Update(t.Context(), svc, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(svc.Spec.ClusterIPs) != 2 || svc.Spec.IPFamilies[1] != corev1.IPv6Protocol {
			t.Fatalf("the API server gave no IPv6 ClusterIP: %v %v", svc.Spec.IPFamilies, svc.Spec.ClusterIPs)
		}
		waitNameservers(t, clientset, ns, nodeCache4, nodeCache6, "10.0.0.59")
	})

	t.Run("Service deleted: pods left alone", func(t *testing.T) {
		if err := clientset.CoreV1().Services(metav1.NamespaceSystem).Delete(t.Context(), discoverService, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitNameservers(t, clientset, ns)
	})
}

// TestAPIServerOpsListener: /metrics, /healthz and /readyz on one listener.
func TestAPIServerOpsListener(t *testing.T) {
	s := requireSuite(t)
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := s.httpGet(t, path); code != 200 {
			t.Errorf("GET %s: %d %s", path, code, body)
		}
	}
	code, body := s.httpGet(t, "/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics: %d", code)
	}
	for _, want := range []string{
		`localdns_webhook_admissions_total{mode="nodecache",reason="",result="injected"}`,
		`controller_runtime_webhook_latency_seconds`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

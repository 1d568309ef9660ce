package webhook

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The API server's limits on dnsConfig (k8s.io/kubernetes
// pkg/apis/core/validation, v1.37: MaxDNSNameservers, MaxDNSSearchPaths,
// MaxDNSSearchListChars — the latter counts the separating spaces).
const (
	maxNameservers     = 3
	maxSearches        = 32
	maxSearchListChars = 2048
)

// The stub container: its name marks it, the rest is its fixed contract.
const (
	StubContainerName = "localdns-stub"
	// StubBinary is where the stub image keeps the binary; the exec probe
	// needs an absolute path.
	StubBinary     = "/localdns-stub"
	stubCacheSize  = "1000"
	stubUser       = 65532
	unprivPortName = "net.ipv4.ip_unprivileged_port_start"
	unprivPortStub = 53
	kubeSystem     = metav1.NamespaceSystem
	dnsPort        = "53"
)

// SkipReason says why a pod is left untouched; it is a metric label value.
type SkipReason string

// Every reason a pod is left untouched.
const (
	SkipAlreadyInjected SkipReason = "already-injected"
	SkipSystemNamespace SkipReason = "system-namespace"
	SkipOwnNamespace    SkipReason = "own-namespace"
	SkipNotOptedIn      SkipReason = "not-opted-in"
	SkipOptedOut        SkipReason = "opted-out"
	SkipDNSPolicy       SkipReason = "dns-policy"
	SkipHostNetwork     SkipReason = "host-network"
	SkipWindows         SkipReason = "windows"
	SkipStubExists      SkipReason = "stub-container-exists"
	SkipKubeDNSUnknown  SkipReason = "kube-dns-unknown"
	SkipNotCreate       SkipReason = "not-create"
)

// Namespace is what Decide needs to know about the pod's namespace.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Env is what the webhook learned from the cluster.
type Env struct {
	// KubeDNSIPs are the kube-dns ClusterIPs, one per family, primary
	// first (the Service's spec.clusterIPs); empty when unknown.
	KubeDNSIPs     []netip.Addr
	NativeSidecars bool
}

// Plan is the outcome of Decide: inject (with what) or skip (with why).
type Plan struct {
	Inject      bool
	SkipReason  SkipReason
	Mode        Mode // applied: ModeNodeCache or ModeStub
	Nameservers []string
	Searches    []string
	Options     []corev1.PodDNSConfigOption
	Warnings    []string
	Stub        *StubPlan // set in ModeStub
}

// StubPlan is the stub container and where it goes.
type StubPlan struct {
	Container corev1.Container
	// Native places it first among initContainers with restartPolicy
	// Always; otherwise it is the first regular container.
	Native bool
	// Sysctls is the pod's complete sysctl list, with the one that lets the
	// non-root stub bind port 53.
	Sysctls []corev1.Sysctl
}

// Decide is the whole policy: from the pod, its namespace, the flags and the
// cluster facts to a Plan. It is pure; the handler gathers its inputs and
// applies its result.
func Decide(pod *corev1.Pod, ns Namespace, cfg Config, env Env) Plan {
	var warnings []string
	skip := func(reason SkipReason) Plan {
		return Plan{SkipReason: reason, Warnings: warnings}
	}
	if _, marked := pod.Annotations[AnnotationInjected]; marked {
		return skip(SkipAlreadyInjected)
	}
	switch ns.Name {
	case kubeSystem:
		return skip(SkipSystemNamespace)
	case cfg.Namespace:
		return skip(SkipOwnNamespace)
	}
	reason, optErr := optIn(pod.Labels, ns.Labels, cfg.ClusterWide)
	warnings = append(warnings, warningsOf(optErr)...)
	if reason != "" {
		return skip(reason)
	}
	switch pod.Spec.DNSPolicy {
	case corev1.DNSDefault, corev1.DNSNone:
		return skip(SkipDNSPolicy)
	case corev1.DNSClusterFirst, "":
		if pod.Spec.HostNetwork {
			return skip(SkipHostNetwork)
		}
	}
	if onWindows(pod) {
		return skip(SkipWindows)
	}
	if hasContainer(pod, StubContainerName) {
		warnings = append(warnings, fmt.Sprintf("localdns: pod already has a container named %s; left unchanged", StubContainerName))
		return skip(SkipStubExists)
	}

	settings, annErr := ParseAnnotations(pod.Annotations)
	warnings = append(warnings, warningsOf(annErr)...)
	mode, modeWarning := resolveMode(pod, settings.Mode, cfg.MuslImagePatterns)
	if modeWarning != "" {
		warnings = append(warnings, modeWarning)
	}
	dst := dnsTargets(cfg, env.KubeDNSIPs)
	if !settings.Fallback {
		dst.fallback = netip.Addr{}
	} else if !dst.fallback.IsValid() {
		warnings = append(warnings, dst.missingFallback(env.KubeDNSIPs))
		return skip(SkipKubeDNSUnknown)
	}

	var own corev1.PodDNSConfig
	if pod.Spec.DNSConfig != nil {
		own = *pod.Spec.DNSConfig
	}
	plan := Plan{Inject: true, Mode: mode}
	var w []string
	plan.Nameservers, w = nameservers(mode, dst, own.Nameservers)
	warnings = append(warnings, w...)
	plan.Searches, w = searches(ns.Name, cfg.ClusterDomain, cfg.Searches, own.Searches, settings.Searches)
	warnings = append(warnings, w...)
	plan.Options = mergeOptions(cfg.Options, own.Options, settings.Options)
	if mode == ModeStub {
		plan.Stub, w = stubPlan(pod, cfg, dst, env.NativeSidecars)
		warnings = append(warnings, w...)
	}
	plan.Warnings = warnings
	return plan
}

// optIn returns "" when the pod is in, else why not. The pod label wins over
// the namespace label in both directions.
func optIn(podLabels, nsLabels map[string]string, clusterWide bool) (SkipReason, error) {
	podLabel, podErr := podOptInLabel(podLabels)
	nsLabel, nsErr := namespaceOptIn(nsLabels)
	err := errors.Join(nsErr, podErr)
	switch {
	case podLabel == podOptOut:
		return SkipOptedOut, err
	case podLabel == podOptIn:
		return "", err
	case nsLabel == namespaceEnabled, clusterWide && nsLabel != namespaceDisabled:
		return "", err
	case nsLabel == namespaceDisabled:
		return SkipOptedOut, err
	}
	return SkipNotOptedIn, err
}

// onWindows reports whether the pod runs on a Windows node, by its declared
// OS or its node selector: nothing serves the node cache's address there, and
// Windows pods have neither sysctls nor a Linux stub.
func onWindows(pod *corev1.Pod) bool {
	return pod.Spec.OS != nil && pod.Spec.OS.Name == corev1.Windows ||
		pod.Spec.NodeSelector[corev1.LabelOSStable] == string(corev1.Windows)
}

// resolveMode turns the requested mode into the applied one: auto looks at
// the images; the stub cannot serve a hostNetwork pod (127.0.0.1:53 would be
// the node's, and net sysctls are forbidden there).
func resolveMode(pod *corev1.Pod, requested Mode, patterns []string) (Mode, string) {
	mode := requested
	if mode == ModeAuto {
		mode = ModeNodeCache
		if usesMusl(pod, patterns) {
			mode = ModeStub
		}
	}
	if mode == ModeStub && pod.Spec.HostNetwork {
		return ModeNodeCache, "localdns: mode stub is not possible with hostNetwork; using nodecache"
	}
	return mode, ""
}

// usesMusl reports whether any container or init container image contains
// one of the patterns (case-insensitive).
func usesMusl(pod *corev1.Pod, patterns []string) bool {
	for _, c := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
		image := strings.ToLower(c.Image)
		for _, p := range patterns {
			if strings.Contains(image, strings.ToLower(p)) {
				return true
			}
		}
	}
	return false
}

func hasContainer(pod *corev1.Pod, name string) bool {
	for _, c := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
		if c.Name == name {
			return true
		}
	}
	return false
}

// nameservers lists ours first, then the pod's own, deduped and cut to the
// API server's maximum: ours never exceed it, so what is cut is the pod's
// own. In nodecache mode ours are the node cache's address of each family,
// then the fallback; in stub mode the stub's loopback address of the primary
// family, then the node cache's of that family (the stub owns the fallback).
func nameservers(mode Mode, dst targets, own []string) ([]string, []string) {
	var list []string
	switch {
	case mode == ModeStub:
		list = []string{loopbackOf(dst.primary()), dst.nodeCache[0]}
	case dst.fallback.IsValid():
		list = append(slices.Clone(dst.nodeCache), dst.fallback.String())
	default:
		list = slices.Clone(dst.nodeCache)
	}
	list = dedupe(append(list, own...), func(s string) string {
		if a, err := netip.ParseAddr(s); err == nil {
			return a.String()
		}
		return s
	})
	if len(list) <= maxNameservers {
		return list, nil
	}
	return list[:maxNameservers], []string{fmt.Sprintf(
		"localdns: the API server allows %d nameservers; dropped %s", maxNameservers, strings.Join(list[maxNameservers:], ", "))}
}

// clusterSearches is the search path kubelet gives a ClusterFirst pod.
func clusterSearches(namespace, domain string) []string {
	return []string{namespace + ".svc." + domain, "svc." + domain, domain}
}

// searches lists the cluster's search path for the namespace, then the
// layers' domains in order of increasing precedence (flags, the pod's own,
// the annotation's), deduped: a domain keeps its first place and the highest
// precedence of the layers that name it. Over the API server's limits the
// lowest layer loses first, and within a layer a domain that does not fit
// gives way to later ones that do; the cluster's own always stay, and the kept
// domains keep their order.
func searches(namespace, domain string, layers ...[]string) ([]string, []string) {
	type entry struct {
		domain string
		rank   int
		kept   bool
	}
	var entries []entry
	index := map[string]int{}
	for rank, layer := range slices.Concat([][]string{clusterSearches(namespace, domain)}, layers) {
		if rank == 0 {
			rank = len(layers) + 1 // the cluster's own outrank every layer
		}
		for _, d := range layer {
			k := strings.ToLower(strings.TrimSuffix(d, "."))
			if i, seen := index[k]; seen {
				entries[i].rank = max(entries[i].rank, rank)
				continue
			}
			index[k] = len(entries)
			entries = append(entries, entry{domain: d, rank: rank})
		}
	}
	byPrecedence := make([]int, len(entries))
	for i := range byPrecedence {
		byPrecedence[i] = i
	}
	slices.SortStableFunc(byPrecedence, func(a, b int) int { return entries[b].rank - entries[a].rank })
	count, chars := 0, -1 // the first domain has no separating space
	for _, i := range byPrecedence {
		if d := entries[i].domain; count < maxSearches && chars+1+len(d) <= maxSearchListChars {
			entries[i].kept = true
			count++
			chars += 1 + len(d)
		}
	}
	var kept, dropped []string
	for _, e := range entries {
		if e.kept {
			kept = append(kept, e.domain)
		} else {
			dropped = append(dropped, e.domain)
		}
	}
	if len(dropped) == 0 {
		return kept, nil
	}
	return kept, []string{fmt.Sprintf(
		"localdns: the API server allows %d search domains and %d characters; dropped %s",
		maxSearches, maxSearchListChars, strings.Join(dropped, ", "))}
}

// dedupe keeps the first of the entries that have the same key.
func dedupe(list []string, key func(string) string) []string {
	seen := make(map[string]bool, len(list))
	out := make([]string, 0, len(list))
	for _, s := range list {
		if k := key(s); !seen[k] {
			seen[k] = true
			out = append(out, s)
		}
	}
	return out
}

// mergeOptions merges option layers of increasing precedence: an option keeps
// the position where its name first appeared and the value of the last layer
// that sets it.
func mergeOptions(layers ...[]corev1.PodDNSConfigOption) []corev1.PodDNSConfigOption {
	var out []corev1.PodDNSConfigOption
	index := map[string]int{}
	for _, layer := range layers {
		for _, o := range layer {
			if i, ok := index[o.Name]; ok {
				out[i] = o
				continue
			}
			index[o.Name] = len(out)
			out = append(out, o)
		}
	}
	return out
}

// stubPlan builds the stub container. It serves on the loopback address of
// the pod's primary family, which resolv.conf names, and on 127.0.0.1 always:
// the kernel gives every Linux pod's lo 127.0.0.1 (IPv4 cannot be switched off
// in a network namespace), so that costs no failure mode, and 127.0.0.1:53
// stays the stub in every cluster. ::1 only when resolv.conf names it: pods
// of IPv4 clusters may have IPv6 switched off. The stub reaches the node cache
// and the fallback (invalid when the pod opted out) of the primary family.
func stubPlan(pod *corev1.Pod, cfg Config, dst targets, native bool) (*StubPlan, []string) {
	listen := net.JoinHostPort(loopbackOf(dst.primary()), dnsPort)
	args := []string{"--listen", listen}
	if dst.primary() != corev1.IPv4Protocol {
		args = append(args, "--listen", net.JoinHostPort(loopbackIPv4, dnsPort))
	}
	args = append(args, "--node-cache", net.JoinHostPort(dst.nodeCache[0], dnsPort))
	if dst.fallback.IsValid() {
		args = append(args, "--fallback", net.JoinHostPort(dst.fallback.String(), dnsPort))
	}
	args = append(args, "--cluster-domain", cfg.ClusterDomain, "--cache-size", stubCacheSize)
	c := corev1.Container{
		Name:      StubContainerName,
		Image:     cfg.StubImage,
		Command:   []string{StubBinary},
		Args:      args,
		Resources: *cfg.StubResources.DeepCopy(),
		// kubelet probes cannot reach the pod's 127.0.0.1; the stub probes itself.
		StartupProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
				Command: []string{StubBinary, "probe", "--listen", listen},
			}},
			PeriodSeconds:    1,
			TimeoutSeconds:   1,
			FailureThreshold: 30,
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr(int64(stubUser)),
			RunAsGroup:               ptr(int64(stubUser)),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities: &corev1.Capabilities{
				Drop: []corev1.Capability{"ALL"},
				Add:  []corev1.Capability{"NET_BIND_SERVICE"},
			},
			// Its own, so Pod Security "restricted" admits the pod even
			// when the app containers set theirs one by one.
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if native {
		c.RestartPolicy = ptr(corev1.ContainerRestartPolicyAlways)
	}
	if cfg.StubPortBinding == StubPortBindingFileCapability {
		// The image's file capability binds port 53; nothing pod-wide changes.
		return &StubPlan{Container: c, Native: native, Sysctls: podSysctls(pod)}, nil
	}
	sysctls, warnings := unprivilegedPortSysctl(pod)
	return &StubPlan{Container: c, Native: native, Sysctls: sysctls}, warnings
}

// podSysctls is a copy of the pod's own sysctls.
func podSysctls(pod *corev1.Pod) []corev1.Sysctl {
	if pod.Spec.SecurityContext == nil {
		return nil
	}
	return slices.Clone(pod.Spec.SecurityContext.Sysctls)
}

// unprivilegedPortSysctl returns the pod's sysctls with
// ip_unprivileged_port_start at most 53: NET_BIND_SERVICE alone does not reach
// a non-root process's effective set, this namespaced safe sysctl does.
func unprivilegedPortSysctl(pod *corev1.Pod) ([]corev1.Sysctl, []string) {
	out := podSysctls(pod)
	want := strconv.Itoa(unprivPortStub)
	for i, s := range out {
		if s.Name != unprivPortName {
			continue
		}
		if n, err := strconv.Atoi(s.Value); err == nil && n <= unprivPortStub {
			return out, nil
		}
		out[i].Value = want
		return out, []string{fmt.Sprintf("localdns: sysctl %s=%q replaced by %s so the stub can bind port 53", unprivPortName, s.Value, want)}
	}
	return append(out, corev1.Sysctl{Name: unprivPortName, Value: want}), nil
}

func ptr[T any](v T) *T { return &v }

package localdns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/localdns/localdns/e2e/cluster"
)

// Pod is the part of a stored pod the e2e asserts on.
type Pod struct {
	Metadata struct {
		Name        string            `json:"name"`
		UID         string            `json:"uid"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		DNSPolicy string     `json:"dnsPolicy"`
		DNSConfig *DNSConfig `json:"dnsConfig"`
		// InitContainers hold the stub as a native sidecar.
		InitContainers []struct {
			Name          string `json:"name"`
			Image         string `json:"image"`
			RestartPolicy string `json:"restartPolicy"`
			StartupProbe  *struct {
				Exec *struct {
					Command []string `json:"command"`
				} `json:"exec"`
			} `json:"startupProbe"`
		} `json:"initContainers"`
	} `json:"spec"`
}

// DNSConfig is a pod's dnsConfig, or a parsed resolv.conf.
type DNSConfig struct {
	Nameservers []string `json:"nameservers"`
	Searches    []string `json:"searches"`
	Options     []struct {
		Name  string  `json:"name"`
		Value *string `json:"value,omitempty"`
	} `json:"options"`
}

// OptionStrings are the options as resolv.conf writes them (name[:value]).
func (d DNSConfig) OptionStrings() []string {
	var out []string
	for _, o := range d.Options {
		if o.Value != nil {
			out = append(out, o.Name+":"+*o.Value)
		} else {
			out = append(out, o.Name)
		}
	}
	return out
}

// podList is what the e2e reads of `kubectl get pods -o json`.
type podList struct {
	Items []struct {
		Metadata struct {
			Name              string  `json:"name"`
			DeletionTimestamp *string `json:"deletionTimestamp"`
		} `json:"metadata"`
		Spec struct {
			Containers []struct {
				Resources struct {
					Limits map[string]string `json:"limits"`
				} `json:"resources"`
			} `json:"containers"`
		} `json:"spec"`
		Status struct {
			PodIP      string `json:"podIP"`
			Conditions []struct {
				Type   string `json:"type"`
				Status string `json:"status"`
			} `json:"conditions"`
			ContainerStatuses []struct {
				Ready        bool `json:"ready"`
				RestartCount int  `json:"restartCount"`
				LastState    struct {
					Terminated *struct {
						Reason string `json:"reason"`
					} `json:"terminated"`
				} `json:"lastState"`
			} `json:"containerStatuses"`
		} `json:"status"`
	} `json:"items"`
}

// listPods is the JSON list of ns's pods matching selector.
func listPods(ctx context.Context, c *cluster.Cluster, ns, selector string) ([]byte, error) {
	out, err := c.Kubectl(ctx, nil, "-n", ns, "get", "pods", "-l", selector, "-o", "json")
	return []byte(out), err
}

// decodePods decodes a list of what's pods.
func decodePods(list []byte, what string) (podList, error) {
	var pods podList
	if err := json.Unmarshal(list, &pods); err != nil {
		return podList{}, fmt.Errorf("decode %s pods: %w", what, err)
	}
	return pods, nil
}

// GetPod reads a stored pod.
func GetPod(ctx context.Context, c *cluster.Cluster, ns, name string) (Pod, error) {
	out, err := c.Kubectl(ctx, nil, "-n", ns, "get", "pod", name, "-o", "json")
	if err != nil {
		return Pod{}, err
	}
	var p Pod
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		return Pod{}, fmt.Errorf("decode pod %s/%s: %w", ns, name, err)
	}
	return p, nil
}

// CheckPod reads a stored pod and the resolv.conf the kubelet wrote for it
// and compares both with the design's pod view in mode, for the cluster's
// IP families; it returns the resolv.conf.
func CheckPod(ctx context.Context, c *cluster.Cluster, ns, name, mode string) (string, error) {
	p, err := GetPod(ctx, c, ns, name)
	if err != nil {
		return "", err
	}
	text, err := c.PodResolvConf(ctx, p.Metadata.UID)
	if err != nil {
		return "", err
	}
	return text, errors.Join(CheckInjected(p, c.Families(), ns, mode), CheckResolvConf(text, c.Families(), ns, mode))
}

// Modes the webhook applies.
const (
	ModeNodeCache = "nodecache"
	ModeStub      = "stub"
)

// PodView is the design's pod view ("The pod's view") of an opted-in
// ClusterFirst pod in namespace ns without a dnsConfig of its own, in a
// cluster of the given IP families (primary first), as resolv.conf lines:
// nameservers, search list and options. The nameservers are those of
// docs/webhook.md "IP families": in node cache mode the node cache's
// address of each family, then the primary family's kube-dns ClusterIP; in
// stub mode the stub's loopback and the node cache of the primary family.
func PodView(families []cluster.Family, ns, mode string) (nameservers, searches, options []string) {
	primary := families[0]
	if mode == ModeStub {
		nameservers = []string{loopbackOf(primary), NodeCacheIP(primary)}
	} else {
		nameservers = append(NodeCacheIPs(families), primary.KubeDNSIP.String())
	}
	searches = []string{ns + ".svc." + cluster.ClusterDomain, "svc." + cluster.ClusterDomain, cluster.ClusterDomain}
	options = []string{"ndots:5", "timeout:1", "attempts:2", "single-request-reopen"}
	return nameservers, searches, options
}

// CheckInjected compares a stored pod with the design's pod view in mode.
func CheckInjected(p Pod, families []cluster.Family, ns, mode string) error {
	var problems []string
	if got := p.Metadata.Annotations[InjectedAnnotation]; got != mode {
		problems = append(problems, fmt.Sprintf("annotation %s=%q, want %q", InjectedAnnotation, got, mode))
	}
	if p.Spec.DNSPolicy != "None" {
		problems = append(problems, fmt.Sprintf("dnsPolicy %q, want None", p.Spec.DNSPolicy))
	}
	wantNS, wantSearch, wantOpts := PodView(families, ns, mode)
	if d := p.Spec.DNSConfig; d == nil {
		problems = append(problems, "no dnsConfig")
	} else {
		if !slices.Equal(d.Nameservers, wantNS) {
			problems = append(problems, fmt.Sprintf("nameservers %v, want %v", d.Nameservers, wantNS))
		}
		if !slices.Equal(d.Searches, wantSearch) {
			problems = append(problems, fmt.Sprintf("searches %v, want %v", d.Searches, wantSearch))
		}
		if !slices.Equal(d.OptionStrings(), wantOpts) {
			problems = append(problems, fmt.Sprintf("options %v, want %v", d.OptionStrings(), wantOpts))
		}
	}
	if mode == ModeStub {
		if err := checkStubSidecar(p); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("pod %s: %s", p.Metadata.Name, strings.Join(problems, "; "))
	}
	return nil
}

// checkStubSidecar finds the stub as a native sidecar with an exec startup
// probe.
func checkStubSidecar(p Pod) error {
	for _, ic := range p.Spec.InitContainers {
		if !strings.Contains(ic.Image, "localdns/stub") {
			continue
		}
		if ic.RestartPolicy != "Always" {
			return fmt.Errorf("stub init container %s: restartPolicy %q, want Always (native sidecar)", ic.Name, ic.RestartPolicy)
		}
		if ic.StartupProbe == nil || ic.StartupProbe.Exec == nil {
			return fmt.Errorf("stub init container %s: no exec startup probe", ic.Name)
		}
		return nil
	}
	return fmt.Errorf("no stub init container")
}

// ParseResolvConf parses the nameserver, search and options lines.
func ParseResolvConf(text string) (nameservers, searches, options []string) {
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			nameservers = append(nameservers, f[1])
		case "search":
			searches = append(searches, f[1:]...)
		case "options":
			options = append(options, f[1:]...)
		}
	}
	return nameservers, searches, options
}

// CheckResolvConf compares a kubelet-written resolv.conf with the pod view.
// The options are compared as a set: the kubelet merges them through a map,
// so their order varies from pod to pod (and means nothing to resolvers).
func CheckResolvConf(text string, families []cluster.Family, ns, mode string) error {
	gotNS, gotSearch, gotOpts := ParseResolvConf(text)
	wantNS, wantSearch, wantOpts := PodView(families, ns, mode)
	slices.Sort(gotOpts)
	slices.Sort(wantOpts)
	if !slices.Equal(gotNS, wantNS) || !slices.Equal(gotSearch, wantSearch) || !slices.Equal(gotOpts, wantOpts) {
		return fmt.Errorf("resolv.conf (%s mode) has nameservers %v, search %v, options %v; want %v, %v, %v:\n%s",
			mode, gotNS, gotSearch, gotOpts, wantNS, wantSearch, wantOpts, text)
	}
	return nil
}

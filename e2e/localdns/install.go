// Package localdns installs localdns on the e2e cluster the way a user
// does: the product images built by hack/imagebuild -product, imported into
// the node's containerd, then `kubectl apply -k` of the real overlay; and
// removes it again with the documented uninstall sequence. It also reads
// what the install did to the node (interface, address, NOTRACK rules) and
// to pods (stored dnsConfig, kubelet-written resolv.conf).
package localdns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/localdns/localdns/e2e/cluster"
	"github.com/localdns/localdns/internal/contract"
)

// Names of the installed objects, as manifests/base has them.
const (
	Namespace     = "localdns-system"
	NodeCacheDS   = "localdns-nodecache"
	StandbyDS     = "localdns-nodecache-standby"
	WebhookDeploy = "localdns-webhook"
	WebhookConfig = "localdns-webhook"
	CleanupDS     = "localdns-cleanup"
	// LocalIP is the node cache's address on every node.
	LocalIP = contract.NodeCacheIPv4
	// RuleComment starts the comment of every rule the node cache adds.
	RuleComment = "localdns:"
	// Overlay is the kustomization the e2e installs on IPv4 clusters,
	// relative to the repository (OverlayOf: the other families').
	Overlay = "manifests/overlays/default"
	// StartupTaintOverlay is Overlay with the opt-in startup taint.
	StartupTaintOverlay = "manifests/overlays/startup-taint"
	// StartupTaint is the taint key that overlay's node cache removes.
	StartupTaint = "node.localdns.io/nodecache-not-ready"
	// UninstallKustomization removes the interface and rules from every node.
	UninstallKustomization = "manifests/uninstall"
	// imageTag is the overlays' images: tag.
	imageTag = "dev"
	// cleanupPauseImage is the image the cleanup DaemonSet idles in (the
	// kubelet's usual sandbox image); the harness's pause image is tagged so.
	cleanupPauseImage = "registry.k8s.io/pause:3.10"
)

// Labels and annotations of the product's API.
const (
	InjectLabel        = "localdns.io/inject"
	ModeAnnotation     = "localdns.io/mode"
	InjectedAnnotation = "localdns.io/injected"
)

// binaryPackages are the product's commands, built as `make build` does.
var binaryPackages = []string{"./cmd/localdns-nodecache", "./cmd/localdns-webhook", "./cmd/localdns-stub"}

// Images are the product image tarballs.
type Images []string

// BuildImages compiles the three binaries statically (as `make build`
// does) into workDir/bin and packs them with `hack/imagebuild -product` (as
// `make images` does) into workDir/images.
func BuildImages(ctx context.Context, repoDir, workDir string) (Images, error) {
	binDir, outDir := filepath.Join(workDir, "bin"), filepath.Join(workDir, "images")
	// One go build for all three: they link in parallel.
	build := exec.CommandContext(ctx, "go", append([]string{"build", "-trimpath", "-o", binDir + "/"}, binaryPackages...)...)
	build.Dir = repoDir
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build the localdns binaries: %w: %s", err, strings.TrimSpace(string(out)))
	}
	cmd := exec.CommandContext(ctx, "go", "run", "./hack/imagebuild", "-product",
		"-bin-dir", binDir, "-out-dir", outDir, "-tag", imageTag)
	cmd.Dir = repoDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("hack/imagebuild -product: %w: %s", err, strings.TrimSpace(string(out)))
	}
	var imgs Images
	for _, f := range []string{"nodecache.tar", "webhook.tar", "stub.tar"} {
		imgs = append(imgs, filepath.Join(outDir, f))
	}
	return imgs, nil
}

// Install imports the images, tags the harness's pause image as the one
// the uninstall DaemonSet names, applies the real overlay of the cluster's
// IP families (OverlayOf) and waits until the node cache, its standby and
// the webhook are ready and the webhook mutates.
func Install(ctx context.Context, c *cluster.Cluster, repoDir string, imgs Images) error {
	if err := importImages(ctx, c, imgs); err != nil {
		return err
	}
	return ApplyOverlay(ctx, c, repoDir, OverlayOf(c.IPFamilies()))
}

// ApplyOverlay applies a kustomization of the repository (`kubectl apply
// -k`) and waits as Install does.
func ApplyOverlay(ctx context.Context, c *cluster.Cluster, repoDir, overlay string) error {
	if err := c.Step("kubectl apply -k "+overlay, func() error {
		_, err := c.Kubectl(ctx, nil, "apply", "-k", filepath.Join(repoDir, overlay))
		return err
	}); err != nil {
		return err
	}
	return WaitReady(ctx, c)
}

// WaitReady waits for the node cache's and its standby's DaemonSets and the
// webhook Deployment to be rolled out, and for the webhook to mutate a pod (a
// server-side dry run in a scratch opted-in namespace): with failurePolicy
// Ignore a webhook that is not serving yet lets pods through unchanged,
// silently.
func WaitReady(ctx context.Context, c *cluster.Cluster) error {
	if err := c.Step("node cache and standby DaemonSets and webhook Deployment rolled out", func() error {
		for _, workload := range []string{"daemonset/" + NodeCacheDS, "daemonset/" + StandbyDS, "deployment/" + WebhookDeploy} {
			if _, err := c.Kubectl(ctx, nil, "-n", Namespace, "rollout", "status", workload, "--timeout=3m"); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	return c.Step("webhook mutates pods (server-side dry run)", func() error {
		const ns = "localdns-e2e-probe"
		if err := EnsureNamespace(ctx, c, ns, true); err != nil {
			return err
		}
		return poll(ctx, 2*time.Minute, func() error {
			pod, err := dryRunPod(ctx, c, ns)
			if err != nil {
				return err
			}
			if pod.Metadata.Annotations[InjectedAnnotation] == "" {
				return errors.New("dry-run pod not mutated yet")
			}
			return nil
		})
	})
}

// dryRunPod creates a busybox pod in ns with a server-side dry run and
// returns what the API server would store.
func dryRunPod(ctx context.Context, c *cluster.Cluster, ns string) (Pod, error) {
	manifest := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"dry-run","namespace":%q},
"spec":{"containers":[{"name":"c","image":%q,"imagePullPolicy":"Never"}]}}`, ns, cluster.BusyboxImage)
	out, err := c.Kubectl(ctx, strings.NewReader(manifest), "create", "--dry-run=server", "-o", "json", "-f", "-")
	if err != nil {
		return Pod{}, err
	}
	var p Pod
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		return Pod{}, fmt.Errorf("decode dry-run pod: %w", err)
	}
	return p, nil
}

// EnsureNamespace creates ns if needed and sets (or removes) its opt-in label.
func EnsureNamespace(ctx context.Context, c *cluster.Cluster, ns string, optIn bool) error {
	manifest := fmt.Sprintf(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":%q}}`, ns)
	if err := c.Apply(ctx, []byte(manifest)); err != nil {
		return err
	}
	label := InjectLabel + "-"
	if optIn {
		label = InjectLabel + "=enabled"
	}
	_, err := c.Kubectl(ctx, nil, "label", "namespace", ns, label, "--overwrite")
	return err
}

// NodeState is what the node cache set up on the node.
type NodeState struct {
	// Addresses are the node's interfaces holding LocalIP or LocalIPv6, as
	// `ip -o addr` shows them: localdns0, or lo on a kernel without dummy
	// interfaces (this one), where the node cache falls back to.
	Addresses string
	// Rules are the node's iptables and ip6tables rules (both backends)
	// naming localdns, each prefixed with the tool that listed it.
	Rules []string
	// families are the cluster's: HasSetup wants each one's address and rules.
	families []cluster.Family
}

// HasSetup reports whether an interface carries the node cache's address
// of each of the cluster's families, and rules of that family exist.
func (s NodeState) HasSetup() bool {
	for _, f := range s.families {
		if !strings.Contains(s.Addresses, " "+NodeCacheIP(f)+"/") || !slices.ContainsFunc(s.Rules, isRuleOf(f)) {
			return false
		}
	}
	return len(s.families) > 0
}

// IsClean reports whether neither the address nor any rule is left.
func (s NodeState) IsClean() bool { return s.Addresses == "" && len(s.Rules) == 0 }

// ReadNodeState reads the interfaces holding LocalIP or LocalIPv6 and the
// localdns rules in the node's network namespace, from both iptables
// backends of both families (--iptables-mode auto follows what kube-proxy
// uses).
func ReadNodeState(ctx context.Context, c *cluster.Cluster) (NodeState, error) {
	s := NodeState{families: c.Families()}
	for _, to := range []string{LocalIP + "/32", LocalIPv6 + "/128"} {
		out, err := c.NodeCommand(ctx, "ip", "-o", "addr", "show", "to", to).CombinedOutput()
		if err != nil {
			return s, fmt.Errorf("ip addr show to %s: %w: %s", to, err, out)
		}
		s.Addresses = strings.TrimSpace(s.Addresses + "\n" + strings.TrimSpace(string(out)))
	}
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"} {
		out, err := c.NodeCommand(ctx, save).CombinedOutput()
		if err != nil {
			return s, fmt.Errorf("%s: %w: %s", save, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, RuleComment) {
				s.Rules = append(s.Rules, save+": "+line)
			}
		}
	}
	return s, nil
}

// Uninstall runs the sequence of docs/deploy.md "Uninstalling safely"
// (what `make undeploy` runs) for a kustomization of the repository: stop
// injecting, remove the node cache with its standby and clean the node
// (RemoveNodeCache), delete the overlay, and wait until no pod of localdns
// is left.
func Uninstall(ctx context.Context, c *cluster.Cluster, repoDir, overlay string) error {
	if err := kubectlSteps(ctx, c, repoDir, []string{"delete", "mutatingwebhookconfiguration", WebhookConfig, "--ignore-not-found"}); err != nil {
		return err
	}
	if err := RemoveNodeCache(ctx, c, repoDir); err != nil {
		return err
	}
	if err := kubectlSteps(ctx, c, repoDir, []string{"delete", "-k", filepath.Join(repoDir, overlay), "--ignore-not-found", "--wait=false"}); err != nil {
		return err
	}
	return waitPodsGone(ctx, c)
}

// waitPodsGone waits until the namespace has no pod left. The namespace
// itself goes later: its controller checks again only after the pods' grace
// period (30 s), however soon they stopped, which would add half a minute
// to every uninstall here and prove nothing of localdns.
func waitPodsGone(ctx context.Context, c *cluster.Cluster) error {
	return c.Step("no pod left in "+Namespace, func() error {
		return poll(ctx, 2*time.Minute, func() error {
			out, err := c.Kubectl(ctx, nil, "-n", Namespace, "get", "pods", "-o", "name")
			if err != nil {
				return err
			}
			if pods := strings.Fields(out); len(pods) > 0 {
				return fmt.Errorf("pods left: %v", pods)
			}
			return nil
		})
	})
}

// RemoveNodeCache removes the node cache from the node the way the uninstall
// does: the standby's DaemonSet, then the node cache's (each waiting until its
// pods are gone: the node cache serves until the standby has left, so nothing
// takes the address over), then the cleanup DaemonSet of manifests/uninstall
// on every node, until it ran, and deleted. The node has no LocalIP and no
// rules afterwards; the webhook and the rest stay.
func RemoveNodeCache(ctx context.Context, c *cluster.Cluster, repoDir string) error {
	if err := DeleteNodeCacheDaemonSets(ctx, c); err != nil {
		return err
	}
	return kubectlSteps(ctx, c, repoDir,
		[]string{"apply", "-k", filepath.Join(repoDir, UninstallKustomization)},
		[]string{"-n", Namespace, "rollout", "status", "daemonset", CleanupDS, "--timeout=3m"},
		[]string{"delete", "-k", filepath.Join(repoDir, UninstallKustomization), "--ignore-not-found", "--wait"},
	)
}

// DeleteNodeCacheDaemonSets deletes the standby's DaemonSet, then the node
// cache's, each until its pods are gone (step 3 of the uninstall).
func DeleteNodeCacheDaemonSets(ctx context.Context, c *cluster.Cluster) error {
	return kubectlSteps(ctx, c, "",
		[]string{"-n", Namespace, "delete", "daemonset", StandbyDS, "--cascade=foreground", "--wait", "--ignore-not-found"},
		[]string{"-n", Namespace, "delete", "daemonset", NodeCacheDS, "--cascade=foreground", "--wait", "--ignore-not-found"},
	)
}

// kubectlSteps runs kubectl commands one after the other, each a progress
// step, and stops at the first failure.
func kubectlSteps(ctx context.Context, c *cluster.Cluster, repoDir string, steps ...[]string) error {
	for _, args := range steps {
		if err := c.Step("kubectl "+strings.Join(shortPaths(args, repoDir), " "), func() error {
			_, err := c.Kubectl(ctx, nil, args...)
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}

// shortPaths shows repository paths relative, for readable progress lines.
func shortPaths(args []string, repoDir string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.TrimPrefix(a, repoDir+"/")
	}
	return out
}

// poll calls check every 250 ms until it succeeds or d passes.
func poll(ctx context.Context, d time.Duration, check func() error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

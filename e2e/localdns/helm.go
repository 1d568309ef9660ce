package localdns

import (
	"bytes"
	"context"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/localdns/localdns/e2e/cluster"
)

// The chart, and the release the e2e installs from it.
const (
	// Chart is the Helm chart, relative to the repository.
	Chart = "charts/localdns"
	// Release is the Helm release's name (in Namespace).
	Release = "localdns"
)

// helmBinary is the helm that hack/install-deps.sh installs (GOPATH/bin),
// else one on PATH.
func helmBinary() (string, error) {
	if p := filepath.Join(build.Default.GOPATH, "bin", "helm"); isExecutable(p) {
		return p, nil
	}
	p, err := exec.LookPath("helm")
	if err != nil {
		return "", fmt.Errorf("helm not installed (run hack/install-deps.sh): %w", err)
	}
	return p, nil
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// helmRun runs helm inside the node's network namespace (the API server is
// reachable only there) as cluster admin, with helm's configuration and caches
// in a directory of its own; it returns standard output, the error carries
// standard error.
func helmRun(ctx context.Context, c *cluster.Cluster, args ...string) (string, error) {
	bin, err := helmBinary()
	if err != nil {
		return "", err
	}
	home, err := os.MkdirTemp("", "localdns-helm-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(home)
	cmd := c.NodeCommand(ctx, append([]string{bin, "--kubeconfig=" + c.Kubeconfig()}, args...)...)
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home+"/config", "HELM_CACHE_HOME="+home+"/cache", "HELM_DATA_HOME="+home+"/data")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// valueArgs turns "key=value" settings into helm --set arguments.
func valueArgs(values []string) []string {
	var args []string
	for _, v := range values {
		args = append(args, "--set", v)
	}
	return args
}

// InstallWithHelm is Install through the chart: it imports the images,
// tags the harness's pause image as the one the cleanup DaemonSet names,
// installs (or upgrades to) release localdns from charts/localdns with the
// chart's defaults and values ("key=value", as helm --set takes them), and
// waits until the node cache and the webhook are ready and the webhook
// mutates. The images are tagged dev, the chart's appVersion.
func InstallWithHelm(ctx context.Context, c *cluster.Cluster, repoDir string, imgs Images, values ...string) error {
	if err := importImages(ctx, c, imgs); err != nil {
		return err
	}
	args := append([]string{"upgrade", "--install", Release, filepath.Join(repoDir, Chart),
		"--namespace", Namespace, "--create-namespace", "--reset-values"}, valueArgs(values)...)
	if err := c.Step("helm upgrade --install "+Release+" "+Chart+" "+strings.Join(values, " "), func() error {
		_, err := helmRun(ctx, c, args...)
		return err
	}); err != nil {
		return err
	}
	return WaitReady(ctx, c)
}

// importImages imports the product images into the node's containerd and
// tags the harness's pause image as the one the cleanup DaemonSet names: the
// first step of every install.
func importImages(ctx context.Context, c *cluster.Cluster, imgs Images) error {
	return c.Step("import localdns images (nodecache, webhook, stub)", func() error {
		if err := c.ImportImages(ctx, imgs...); err != nil {
			return err
		}
		return c.TagImage(ctx, cluster.PauseImage, cleanupPauseImage)
	})
}

// UninstallWithHelm is Uninstall for a release installed by InstallWithHelm
// with the same values: stop injecting, remove the standby and then the node
// cache and wait for their pods, run the chart's cleanup DaemonSet (rendered
// with the release's values, so it removes what that node cache set up) on
// every node, delete it, then `helm uninstall`, and wait until no pod of
// localdns is left.
func UninstallWithHelm(ctx context.Context, c *cluster.Cluster, repoDir string, values ...string) error {
	if err := kubectlSteps(ctx, c, repoDir, []string{"delete", "mutatingwebhookconfiguration", WebhookConfig, "--ignore-not-found"}); err != nil {
		return err
	}
	if err := DeleteNodeCacheDaemonSets(ctx, c); err != nil {
		return err
	}
	var cleanup string
	if err := c.Step("helm template the cleanup DaemonSet and apply it", func() error {
		args := append([]string{"template", Release, filepath.Join(repoDir, Chart), "--namespace", Namespace,
			"--set", "nodeCleanup.render=true", "--show-only", "templates/cleanup.yaml"}, valueArgs(values)...)
		out, err := helmRun(ctx, c, args...)
		if err != nil {
			return err
		}
		cleanup = out
		return c.Apply(ctx, []byte(cleanup))
	}); err != nil {
		return err
	}
	steps := []struct {
		what string
		run  func() error
	}{
		{"kubectl -n " + Namespace + " rollout status daemonset " + CleanupDS, func() error {
			_, err := c.Kubectl(ctx, nil, "-n", Namespace, "rollout", "status", "daemonset", CleanupDS, "--timeout=3m")
			return err
		}},
		{"kubectl delete the cleanup DaemonSet", func() error {
			_, err := c.Kubectl(ctx, strings.NewReader(cleanup), "delete", "-f", "-", "--ignore-not-found", "--wait")
			return err
		}},
		{"helm uninstall " + Release, func() error {
			_, err := helmRun(ctx, c, "uninstall", Release, "--namespace", Namespace)
			return err
		}},
	}
	for _, s := range steps {
		if err := c.Step(s.what, s.run); err != nil {
			return err
		}
	}
	return waitPodsGone(ctx, c)
}

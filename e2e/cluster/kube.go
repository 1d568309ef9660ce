package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// defaultTimeout bounds every wait of the boot; the slowest (the first
// CoreDNS pods) takes about 25 s on this machine.
const defaultTimeout = 3 * time.Minute

// NodeCommand returns argv run inside the node's network namespace (the
// node's iptables, conntrack, ip, curl to a ClusterIP...).
func (c *Cluster) NodeCommand(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "/usr/bin/nsenter", append([]string{"--net=" + c.netnsPath(), "--"}, argv...)...)
}

// KubectlCommand returns kubectl of the cluster's version, run inside the
// node namespace (the API server is reachable only there) as cluster admin.
func (c *Cluster) KubectlCommand(ctx context.Context, args ...string) *exec.Cmd {
	return c.NodeCommand(ctx, append([]string{c.k8sBin("kubectl"), "--kubeconfig=" + c.Kubeconfig()}, args...)...)
}

// Kubectl runs kubectl with stdin (may be nil) and returns its stdout; the
// error carries stderr.
func (c *Cluster) Kubectl(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	cmd := c.KubectlCommand(ctx, args...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Apply applies a manifest.
func (c *Cluster) Apply(ctx context.Context, manifest []byte) error {
	_, err := c.Kubectl(ctx, bytes.NewReader(manifest), "apply", "-f", "-")
	return err
}

// errDaemonExited marks a wait ended early because a daemon died: waiting
// on a dead kubelet only wastes minutes.
var errDaemonExited = errors.New("a cluster daemon exited")

// waitFor calls check until it succeeds, ctx ends or defaultTimeout
// passes, and fails at once when a daemon of the cluster has exited. The
// error carries check's last error from before the end (the one cut short
// by the deadline says nothing).
func (c *Cluster) waitFor(ctx context.Context, what string, check func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, defaultTimeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if err := c.checkDaemons(); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		err := check(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %w)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// checkDaemons returns errDaemonExited naming each recorded daemon that no
// longer runs, with the end of its log.
func (c *Cluster) checkDaemons() error {
	recs, err := readDaemons(c.dir("pids"))
	if err != nil {
		return err
	}
	var dead []error
	for _, r := range recs {
		if !r.alive() {
			dead = append(dead, fmt.Errorf("%s (pid %d) exited; %s ends:\n%s", r.name, r.pid, c.logPath(r.name), logTail(c.logPath(r.name), 5)))
		}
	}
	if len(dead) > 0 {
		return fmt.Errorf("%w: %w", errDaemonExited, errors.Join(dead...))
	}
	return nil
}

// logTail returns the last n lines of a log file.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (c *Cluster) waitAPIServer(ctx context.Context) error {
	return c.waitFor(ctx, "kube-apiserver", func(ctx context.Context) error {
		_, err := c.Kubectl(ctx, nil, "get", "--raw", "/readyz")
		return err
	})
}

func (c *Cluster) applyKubeDNS(ctx context.Context) error {
	manifest, err := render("coredns.yaml.tmpl", c.templateData())
	if err != nil {
		return err
	}
	return c.Apply(ctx, manifest)
}

func (c *Cluster) waitNodeReady(ctx context.Context) error {
	return c.waitFor(ctx, "node Ready", func(ctx context.Context) error {
		out, err := c.Kubectl(ctx, nil, "get", "node", c.cfg.Name,
			"-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if out != "True" {
			return fmt.Errorf("node Ready=%q", out)
		}
		return nil
	})
}

func (c *Cluster) waitKubeDNS(ctx context.Context) error {
	return c.waitFor(ctx, "kube-dns", func(ctx context.Context) error {
		out, err := c.Kubectl(ctx, nil, "-n", "kube-system", "get", "deployment", "coredns",
			"-o", "jsonpath={.status.readyReplicas}")
		if err != nil {
			return err
		}
		if out != "2" {
			return fmt.Errorf("coredns ready replicas %q, want 2", out)
		}
		return nil
	})
}

// checkNodeToService looks a name up from the node itself through each
// kube-dns ClusterIP: node-originated traffic to a pod-backed Service of
// each family, the path the API server takes to an admission webhook.
func (c *Cluster) checkNodeToService(ctx context.Context) error {
	name := "kubernetes.default.svc." + ClusterDomain
	want := "Address: " + c.Primary().APIServiceIP.String()
	for _, ip := range c.KubeDNSIPs() {
		if err := c.waitFor(ctx, "node to kube-dns ClusterIP "+ip.String(), func(ctx context.Context) error {
			out, err := c.NodeCommand(ctx, c.cfg.BusyboxBinary, "nslookup", name, ip.String()).CombinedOutput()
			if err != nil || !strings.Contains(string(out), want) {
				return fmt.Errorf("nslookup %s %s from the node: %v: %s", name, ip, err, out)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// CheckDNS runs a busybox pod that looks up kubernetes.default.svc through
// each kube-dns ClusterIP and returns its output (the pod's resolv.conf and
// the answer). It fails unless the lookup succeeds.
func (c *Cluster) CheckDNS(ctx context.Context) (string, error) {
	manifest, err := render("dnscheck.yaml.tmpl", c.templateData())
	if err != nil {
		return "", err
	}
	return c.RunPod(ctx, "default", "dnscheck", manifest)
}

// RunPod applies the manifest of a pod with restartPolicy Never (replacing
// an earlier one of the same name), waits until it has finished and returns
// its logs; an error unless it Succeeded.
func (c *Cluster) RunPod(ctx context.Context, namespace, name string, manifest []byte) (string, error) {
	// A namespace's default ServiceAccount appears shortly after it.
	if err := c.waitFor(ctx, "ServiceAccount "+namespace+"/default", func(ctx context.Context) error {
		_, err := c.Kubectl(ctx, nil, "-n", namespace, "get", "serviceaccount", "default")
		return err
	}); err != nil {
		return "", err
	}
	if _, err := c.Kubectl(ctx, nil, "-n", namespace, "delete", "pod", name, "--ignore-not-found", "--wait=true"); err != nil {
		return "", err
	}
	if err := c.Apply(ctx, manifest); err != nil {
		return "", err
	}
	var phase string
	if err := c.waitFor(ctx, "pod "+namespace+"/"+name+" to finish", func(ctx context.Context) error {
		out, err := c.Kubectl(ctx, nil, "-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}")
		if err != nil {
			return err
		}
		phase = out
		if phase != "Succeeded" && phase != "Failed" {
			return fmt.Errorf("phase %q", phase)
		}
		return nil
	}); err != nil {
		return "", err
	}
	logs, err := c.Kubectl(ctx, nil, "-n", namespace, "logs", name)
	if err != nil {
		return "", err
	}
	if phase != "Succeeded" {
		return logs, fmt.Errorf("pod %s/%s %s: %s", namespace, name, phase, logs)
	}
	return logs, nil
}

// deletePods deletes every workload and pod and waits until the kubelet
// has stopped their containers.
func (c *Cluster) deletePods(ctx context.Context) error {
	var errs []error
	if _, err := c.Kubectl(ctx, nil, "delete", "deployments,daemonsets,statefulsets,replicasets,jobs",
		"--all", "--all-namespaces", "--wait=false"); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.Kubectl(ctx, nil, "delete", "pods", "--all", "--all-namespaces",
		"--grace-period=2", "--wait=true", "--timeout=50s"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

// poll calls check until it succeeds, ctx ends or timeout passes; the
// error then carries check's last error.
func poll(ctx context.Context, timeout time.Duration, what string, check func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %w)", what, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

func (c *Cluster) waitAPIServer(ctx context.Context) error {
	return poll(ctx, defaultTimeout, "kube-apiserver", func(ctx context.Context) error {
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
	return poll(ctx, defaultTimeout, "node Ready", func(ctx context.Context) error {
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
	return poll(ctx, defaultTimeout, "kube-dns", func(ctx context.Context) error {
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

// CheckDNS runs a busybox pod that looks up kubernetes.default through the
// kube-dns ClusterIP and returns its output (the pod's resolv.conf and the
// answer). It fails unless the lookup succeeds.
func (c *Cluster) CheckDNS(ctx context.Context) (string, error) {
	manifest, err := render("dnscheck.yaml.tmpl", c.templateData())
	if err != nil {
		return "", err
	}
	// The namespace's default ServiceAccount appears shortly after boot.
	if err := poll(ctx, defaultTimeout, "default ServiceAccount", func(ctx context.Context) error {
		_, err := c.Kubectl(ctx, nil, "get", "serviceaccount", "default")
		return err
	}); err != nil {
		return "", err
	}
	if _, err := c.Kubectl(ctx, nil, "delete", "pod", "dnscheck", "--ignore-not-found", "--wait=true"); err != nil {
		return "", err
	}
	if err := c.Apply(ctx, manifest); err != nil {
		return "", err
	}
	var phase string
	if err := poll(ctx, defaultTimeout, "dnscheck pod to finish", func(ctx context.Context) error {
		out, err := c.Kubectl(ctx, nil, "get", "pod", "dnscheck", "-o", "jsonpath={.status.phase}")
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
	logs, err := c.Kubectl(ctx, nil, "logs", "dnscheck")
	if err != nil {
		return "", err
	}
	if phase != "Succeeded" {
		return logs, fmt.Errorf("dnscheck pod %s: %s", phase, logs)
	}
	return logs, nil
}

// deletePods deletes every workload and pod and waits until the kubelet
// has stopped their containers.
func (c *Cluster) deletePods(ctx context.Context) error {
	if _, err := c.Kubectl(ctx, nil, "get", "--raw", "/readyz"); err != nil {
		return fmt.Errorf("API server unreachable, pods are left to the forced cleanup: %w", err)
	}
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

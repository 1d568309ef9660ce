package testenv

import (
	"testing"

	"k8s.io/client-go/discovery"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// The provisioned API server must report its real version: native sidecar
// detection in the webhook depends on it, and an unstamped build says v0.0.0.
func TestBootReportsStampedVersion(t *testing.T) {
	cfg := Start(t, &envtest.Environment{})
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := dc.ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != KubernetesVersion {
		t.Fatalf("kube-apiserver reports %q, want %q", v.GitVersion, KubernetesVersion)
	}
}

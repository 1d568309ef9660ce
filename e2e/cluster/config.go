// Package cluster boots a real single-node Kubernetes cluster (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, containerd,
// kubelet, kube-proxy and CoreDNS as kube-dns) inside one network namespace
// with no route out, and tears it down again.
//
// Everything the cluster creates is named after Config.Name: the network
// namespace, the run directory and the pid files. A later Up with the same
// name first removes what a crashed earlier run left behind.
package cluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/localdns/localdns/internal/contract"
)

// Versions the harness is built and tested against.
const (
	KubernetesVersion = "v1.37.2"
	CoreDNSVersion    = "v1.15.0"
)

// The IPv4 family's addresses (IPv4Family) by the names they had before the
// cluster knew IPv6: the default cluster is IPv4. Code that serves every
// family asks the cluster (Families, Primary).
var (
	NodeIP       = IPv4Family.NodeIP
	UpstreamIP   = IPv4Family.UpstreamIP
	NodePrefix   = IPv4Family.NodePrefix
	PodCIDR      = IPv4Family.PodCIDR
	ServiceCIDR  = IPv4Family.ServiceCIDR
	APIServiceIP = IPv4Family.APIServiceIP
	KubeDNSIP    = IPv4Family.KubeDNSIP
)

// ClusterDomain is the cluster's DNS domain.
const ClusterDomain = contract.ClusterDomain

// Proxy modes of kube-proxy the harness supports (ipvs is not in this kernel).
const (
	ProxyIPTables = "iptables"
	ProxyNFTables = "nftables"
)

// Config describes one cluster. Zero fields take the defaults of
// DefaultConfig.
type Config struct {
	// Name names the network namespace, the run directory and the node.
	Name string
	// BaseDir holds one run directory per cluster name.
	BaseDir string
	// K8sBinDir holds kube-apiserver, kubectl, kubelet, kube-proxy,
	// kube-controller-manager and kube-scheduler of KubernetesVersion.
	K8sBinDir string
	// CoreDNSBinary is a static coredns of CoreDNSVersion.
	CoreDNSBinary string
	// BusyboxBinary is a static busybox; it makes the pause and client images.
	BusyboxBinary string
	// RepoDir is the localdns module's root; its hack/imagebuild builds the
	// test images.
	RepoDir string
	// ProxyMode is kube-proxy's mode: ProxyIPTables or ProxyNFTables.
	ProxyMode string
	// IPFamilies are the cluster's IP families: IPv4, IPv6 or DualStack.
	IPFamilies string
	// Progress receives one line per boot or teardown step, with timings.
	Progress io.Writer
}

// validName keeps names short enough for interface and socket paths and free
// of characters that the tools parsing them would choke on.
var validName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,19}$`)

// DefaultConfig returns the configuration of the provisioning scripts' cache
// layout (LOCALDNS_CACHE, else ~/.cache/localdns).
func DefaultConfig() Config {
	cache := os.Getenv("LOCALDNS_CACHE")
	if cache == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cache = filepath.Join(home, ".cache", "localdns")
		}
	}
	return Config{
		Name:          "localdns-e2e",
		BaseDir:       filepath.Join(os.TempDir(), "localdns-e2e"),
		K8sBinDir:     filepath.Join(cache, "k8s", KubernetesVersion, "bin"),
		CoreDNSBinary: filepath.Join(cache, "coredns", CoreDNSVersion, "coredns"),
		BusyboxBinary: "/bin/busybox",
		RepoDir:       moduleRoot(),
		ProxyMode:     ProxyIPTables,
		IPFamilies:    IPv4,
		Progress:      os.Stdout,
	}
}

// withDefaults fills zero fields from DefaultConfig and validates the result.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.Name == "" {
		c.Name = d.Name
	}
	if c.BaseDir == "" {
		c.BaseDir = d.BaseDir
	}
	if c.K8sBinDir == "" {
		c.K8sBinDir = d.K8sBinDir
	}
	if c.CoreDNSBinary == "" {
		c.CoreDNSBinary = d.CoreDNSBinary
	}
	if c.BusyboxBinary == "" {
		c.BusyboxBinary = d.BusyboxBinary
	}
	if c.ProxyMode == "" {
		c.ProxyMode = d.ProxyMode
	}
	if c.IPFamilies == "" {
		c.IPFamilies = d.IPFamilies
	}
	if c.RepoDir == "" {
		c.RepoDir = d.RepoDir
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if !validName.MatchString(c.Name) {
		return c, fmt.Errorf("cluster name %q: want %s", c.Name, validName)
	}
	if c.ProxyMode != ProxyIPTables && c.ProxyMode != ProxyNFTables {
		return c, fmt.Errorf("proxy mode %q: want %s or %s", c.ProxyMode, ProxyIPTables, ProxyNFTables)
	}
	if _, err := familiesOf(c.IPFamilies); err != nil {
		return c, err
	}
	if c.RepoDir == "" {
		return c, errors.New("localdns repository not found: run from inside it or set RepoDir")
	}
	return c, nil
}

// moduleRoot is the directory of the go.mod governing the working
// directory, or "" outside a module.
func moduleRoot() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return ""
	}
	return filepath.Dir(gomod)
}

// ErrMissingBinaries means a binary the cluster needs is not provisioned.
var ErrMissingBinaries = errors.New("cluster binaries missing (run hack/install-deps.sh, " +
	"hack/provision-k8s.sh kubelet kube-proxy kube-controller-manager kube-scheduler, " +
	"e2e/hack/provision-coredns.sh)")

// checkBinaries reports every missing binary at once, wrapping ErrMissingBinaries.
func (c Config) checkBinaries() error {
	want := []string{c.CoreDNSBinary, c.BusyboxBinary}
	for _, b := range k8sBinaries {
		want = append(want, filepath.Join(c.K8sBinDir, b))
	}
	want = append(want, hostTools...)
	var missing []error
	if c.ProxyMode == ProxyNFTables {
		want = append(want, "/usr/sbin/nft")
	}
	for _, path := range want {
		if st, err := os.Stat(path); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, fmt.Errorf("not executable: %s", path))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %w", ErrMissingBinaries, errors.Join(missing...))
	}
	return nil
}

var k8sBinaries = []string{"kube-apiserver", "kubectl", "kubelet", "kube-proxy",
	"kube-controller-manager", "kube-scheduler"}

// hostTools are the Debian binaries (hack/install-deps.sh) the node runs.
var hostTools = []string{"/usr/bin/etcd", "/usr/bin/containerd", "/usr/bin/ctr",
	"/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc", "/usr/bin/nsenter", "/usr/sbin/ip",
	"/usr/sbin/iptables", "/usr/sbin/ip6tables", "/usr/sbin/conntrack",
	"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/portmap", "/usr/lib/cni/loopback"}

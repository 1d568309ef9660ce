package cluster

import (
	"bytes"
	"embed"
	"encoding/base64"
	"fmt"
	"os"
	"text/template"
)

//go:embed templates/*.tmpl
var templateFS embed.FS

var templates = template.Must(template.New("").Funcs(template.FuncMap{
	"b64": func(b []byte) string { return base64.StdEncoding.EncodeToString(b) },
}).ParseFS(templateFS, "templates/*.tmpl"))

// Image references of the test images; pods use them with
// imagePullPolicy Never, since no registry is reachable.
const (
	PauseImage   = "localdns.test/e2e/pause:1"
	BusyboxImage = "localdns.test/e2e/busybox:1"
	CoreDNSImage = "localdns.test/e2e/coredns:" + CoreDNSVersion
)

// LargeAnswerName has LargeAnswerRecords A records at the fake upstream:
// its answer (about 1.7 kB) fits neither a plain 512-byte UDP response nor
// Go's 1232-byte EDNS0 one, so every client gets it truncated over UDP and
// must retry over TCP.
const (
	LargeAnswerName    = "big.large.test"
	LargeAnswerRecords = 100
)

// templateData is what every template may use.
type templateData struct {
	Name, Dir, ContainerdSocket, ProxyMode, ClusterDomain string
	PauseImage, BusyboxImage, CoreDNSImage                string
	NodeIP, UpstreamIP, KubeDNSIP, PodCIDR                string
	LargeAnswerName                                       string
	LargeAnswerIPs                                        []string
}

func (c *Cluster) templateData() templateData {
	return templateData{
		Name:             c.cfg.Name,
		Dir:              c.runDir,
		ContainerdSocket: c.containerdSocket(),
		ProxyMode:        c.cfg.ProxyMode,
		ClusterDomain:    ClusterDomain,
		PauseImage:       PauseImage,
		BusyboxImage:     BusyboxImage,
		CoreDNSImage:     CoreDNSImage,
		NodeIP:           NodeIP.String(),
		UpstreamIP:       UpstreamIP.String(),
		KubeDNSIP:        KubeDNSIP.String(),
		PodCIDR:          PodCIDR.String(),
		LargeAnswerName:  LargeAnswerName,
		LargeAnswerIPs:   largeAnswerIPs(),
	}
}

// largeAnswerIPs are the addresses of LargeAnswerName, in 10.100.1.0/24
// (inside the node, never routed anywhere).
func largeAnswerIPs() []string {
	ips := make([]string, LargeAnswerRecords)
	for i := range ips {
		ips[i] = fmt.Sprintf("10.100.1.%d", i+1)
	}
	return ips
}

// render executes the named template with data.
func render(name string, data any) ([]byte, error) {
	var b bytes.Buffer
	if err := templates.ExecuteTemplate(&b, name, data); err != nil {
		return nil, fmt.Errorf("render %s: %w", name, err)
	}
	return b.Bytes(), nil
}

// renderFile renders the named template into path.
func renderFile(name, path string, data any) error {
	b, err := render(name, data)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// kubeconfigData fills kubeconfig.tmpl for one client identity.
type kubeconfigData struct {
	Name, NodeIP, User     string
	CAPEM, CertPEM, KeyPEM []byte
}

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

// templateData is what every template may use.
type templateData struct {
	Name, Dir, ContainerdSocket, ProxyMode, ClusterDomain string
	PauseImage, BusyboxImage, CoreDNSImage                string
	NodeIP, UpstreamIP, KubeDNSIP, PodCIDR                string
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
	}
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

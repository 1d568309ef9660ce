package cluster

import (
	"bytes"
	"embed"
	"encoding/base64"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/template"
	"time"
)

//go:embed templates/*.tmpl
var templateFS embed.FS

var templates = template.Must(template.New("").Funcs(template.FuncMap{
	"b64":  func(b []byte) string { return base64.StdEncoding.EncodeToString(b) },
	"join": strings.Join,
	// quoted is a YAML flow sequence's items: IPv6 addresses hold colons.
	"quoted": func(items []string) string {
		q := make([]string, len(items))
		for i, s := range items {
			q[i] = strconv.Quote(s)
		}
		return strings.Join(q, ", ")
	},
	// addrType is the record type of an address: A, or AAAA for IPv6.
	"addrType": func(ip string) string {
		if strings.Contains(ip, ":") {
			return "AAAA"
		}
		return "A"
	},
}).ParseFS(templateFS, "templates/*.tmpl"))

// Image references of the test images; pods use them with
// imagePullPolicy Never, since no registry is reachable.
const (
	PauseImage   = "localdns.test/e2e/pause:1"
	BusyboxImage = "localdns.test/e2e/busybox:1"
	CoreDNSImage = "localdns.test/e2e/coredns:" + CoreDNSVersion
)

// LargeAnswerName has LargeAnswerRecords records of each of the cluster's
// families at the fake upstream (A in 10.100.1.0/24, AAAA in
// fd00:10:101::/64): either answer (about 1.7 kB of A, 2.9 kB of AAAA) fits
// neither a plain 512-byte UDP response nor Go's 1232-byte EDNS0 one, so
// every client gets it truncated over UDP and must retry over TCP.
const (
	LargeAnswerName    = "big.large.test"
	LargeAnswerRecords = 100
)

// External names: kube-dns forwards them to the fake upstream, as it
// forwards every name outside the cluster domain, and the fake upstream
// answers them the way the world's resolvers do, slowly (10-300 ms), or
// never. Each zone answers every name in it (CoreDNS's erratic plugin: A
// SlowZoneA, AAAA 2001:db8::53), so load clients can ask unique names.
var SlowZones = []SlowZone{
	{Name: "slow100.ext.test", Delay: 100 * time.Millisecond},
	{Name: "slow200.ext.test", Delay: 200 * time.Millisecond},
	{Name: "slow300.ext.test", Delay: 300 * time.Millisecond},
}

// SlowZone is a zone of the fake upstream answered after Delay.
type SlowZone struct {
	Name  string
	Delay time.Duration
}

// SlowZoneA is the address of every name in the slow zones (erratic's).
const SlowZoneA = "192.0.2.53"

// UnansweredZone's queries are dropped by the fake upstream: kube-dns
// gives up on its names after its forward timeout.
const UnansweredZone = "never.ext.test"

// NoCacheZone is answered by kube-dns itself, at once, with TTL 0 (its own
// server block, without the cache plugin): every name has the A record
// NoCacheA and no AAAA (an SOA of TTL 0). A node cache does not cache TTL
// 0, so a load of its names keeps reaching kube-dns, the way cluster-name
// misses do.
const (
	NoCacheZone = "nocache.test"
	NoCacheA    = "10.100.2.1" // inside the node, never routed anywhere
)

// BigZone's every name has BigZoneRecords A and as many AAAA records at the
// fake upstream (a wildcard of its zone file, TTL 30): about 4 kB and 7 kB
// answers, under a node cache's largest cached answer (16 KiB), so a load
// of unique names in it grows a node cache's memory by ~11 kB a name, the
// working set that OOM-kills one whose memory limit is below its cache
// budget. Its records are the same whatever the cluster's families.
const (
	BigZone        = "big.test"
	BigZoneRecords = 250
)

// templateData is what every template may use. Single values are the
// primary family's; lists hold one entry per family, primary first.
type templateData struct {
	Name, Dir, ContainerdSocket, ProxyMode, ClusterDomain string
	PauseImage, BusyboxImage, CoreDNSImage                string
	// APIServer is the node's primary IP and the API server's port.
	APIServer                        string
	NodeIP, UpstreamIP, KubeDNSIP    string
	NodeIPs, UpstreamIPs, KubeDNSIPs []string
	PodCIDRs, DefaultRoutes          []string
	IPFamilies                       []string // as Kubernetes spells them
	IPFamilyPolicy                   string   // of the kube-dns Service
	LargeAnswerName                  string
	LargeAnswerIPs                   []string // every family's
	SlowZones                        []SlowZone
	UnansweredZone, NoCacheZone      string
	NoCacheA                         string
	BigZone                          string
	BigZoneA, BigZoneAAAA            []string
}

func (c *Cluster) templateData() templateData {
	primary := c.Primary()
	d := templateData{
		Name:             c.cfg.Name,
		Dir:              c.runDir,
		ContainerdSocket: c.containerdSocket(),
		ProxyMode:        c.cfg.ProxyMode,
		ClusterDomain:    ClusterDomain,
		PauseImage:       PauseImage,
		BusyboxImage:     BusyboxImage,
		CoreDNSImage:     CoreDNSImage,
		APIServer:        c.apiServer(),
		NodeIP:           primary.NodeIP.String(),
		UpstreamIP:       primary.UpstreamIP.String(),
		KubeDNSIP:        primary.KubeDNSIP.String(),
		IPFamilyPolicy:   "SingleStack",
		LargeAnswerName:  LargeAnswerName,
		SlowZones:        SlowZones,
		UnansweredZone:   UnansweredZone,
		NoCacheZone:      NoCacheZone,
		NoCacheA:         NoCacheA,
		BigZone:          BigZone,
		BigZoneA:         bigZoneA(),
		BigZoneAAAA:      bigZoneAAAA(),
	}
	if len(c.families) > 1 {
		d.IPFamilyPolicy = "RequireDualStack"
	}
	for _, f := range c.families {
		d.NodeIPs = append(d.NodeIPs, f.NodeIP.String())
		d.UpstreamIPs = append(d.UpstreamIPs, f.UpstreamIP.String())
		d.KubeDNSIPs = append(d.KubeDNSIPs, f.KubeDNSIP.String())
		d.PodCIDRs = append(d.PodCIDRs, f.PodCIDR.String())
		d.DefaultRoutes = append(d.DefaultRoutes, f.defaultRoute())
		d.IPFamilies = append(d.IPFamilies, f.Name)
		d.LargeAnswerIPs = append(d.LargeAnswerIPs, f.largeAnswerIPs()...)
	}
	return d
}

// bigZoneA and bigZoneAAAA are BigZone's addresses, in 10.101.0.0/16 and
// 2001:db8:b16::/64 (never routed anywhere).
func bigZoneA() []string {
	ips := make([]string, BigZoneRecords)
	for i := range ips {
		ips[i] = fmt.Sprintf("10.101.%d.%d", i/250, i%250+1)
	}
	return ips
}

func bigZoneAAAA() []string {
	ips := make([]string, BigZoneRecords)
	for i := range ips {
		ips[i] = fmt.Sprintf("2001:db8:b16::%x", i+1)
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
	Name, Server, User     string
	CAPEM, CertPEM, KeyPEM []byte
}

// Package nodecache is localdns-nodecache: a caching DNS forwarder on every
// node at a link-local address. It prepares the node (an interface holding
// the listen IPs and iptables rules that keep DNS out of conntrack), keeps
// that setup repaired, and serves DNS through the shared dnsengine in front
// of kube-dns.
package nodecache

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/localdns/localdns/dnsengine"
	"github.com/localdns/localdns/dnsengine/forward"
	"github.com/localdns/localdns/internal/contract"
	"github.com/localdns/localdns/internal/flagutil"
)

// Command is what the process was asked to do.
type Command int

const (
	// CommandServe prepares the node and serves DNS until signalled.
	CommandServe Command = iota
	// CommandCleanup removes the interface and rules, then exits.
	CommandCleanup
	// CommandReady reports whether the instance of this container is ready
	// (its ReadyFile exists): the DaemonSet's readiness probe.
	CommandReady
	// CommandStandby waits beside the node cache and serves its listen IPs
	// whenever no node cache does (see handover.go).
	CommandStandby
)

// Subcommand names on the command line.
const (
	cleanupCommand = "cleanup"
	readyCommand   = "ready"
	standbyCommand = "standby"
)

// IptablesMode selects the iptables backend.
type IptablesMode string

// The iptables backends: auto detects the one the node's kube-proxy uses.
const (
	IptablesAuto   IptablesMode = "auto"
	IptablesNFT    IptablesMode = "nft"
	IptablesLegacy IptablesMode = "legacy"
)

// Upstream transports; TCP is the default because it reuses connections and
// never goes through UDP conntrack.
const (
	TransportTCP = forward.TCP
	TransportUDP = forward.UDP
)

// SetupConfig describes the node setup, shared by serving and cleanup.
type SetupConfig struct {
	Interface     bool         // manage the interface holding the listen IPs
	Rules         bool         // manage the NOTRACK and ACCEPT rules
	InterfaceName string       // e.g. "localdns0"
	IptablesMode  IptablesMode // auto, nft or legacy
}

// Config is a validated command line.
type Config struct {
	Command Command

	Listen            []netip.AddrPort // where DNS is served (UDP and TCP)
	ClusterDomain     string           // FQDN, lower case, e.g. "cluster.local."
	Upstream          []netip.AddrPort // kube-dns; empty means discover it
	UpstreamExternal  []netip.AddrPort // optional servers for "."
	UpstreamTransport forward.Transport
	CacheSize         int
	CacheMaxBytes     int64
	MaxCachedAnswer   int
	StaleMax          time.Duration
	Limits            Limits
	MetricsAddr       string
	Setup             SetupConfig
	ReconcileInterval time.Duration
	ShutdownTimeout   time.Duration
	// HandoverSocket names the abstract unix socket of the handover between
	// the node cache and its standby; empty = none.
	HandoverSocket string
	// LogFormat is text or json (serve, standby, cleanup).
	LogFormat string
	// ReadyFile, when set, is created once this process serves DNS and an
	// upstream has answered, and removed when it stops. /readyz cannot tell
	// the instances of a surge rolling update apart (they share the node's
	// port through SO_REUSEPORT), this file, in the container's own volume,
	// can.
	ReadyFile string
	// StartupTaint, when set, is the key of a taint the node cache removes
	// from its own Node (NodeName) once it is ready: workload pods wait for
	// it on a new node (see taint.go). Empty: off.
	StartupTaint string
	NodeName     string
}

// Limits are the bounds that keep one pod, or a slow kube-dns, from taking
// what the node cache needs for everyone else. Zero means the default.
type Limits struct {
	MaxInflightMisses          int // misses being resolved at once
	MaxInflightMissesPerClient int // of them, by one client address
	MaxTCPConns                int // client TCP connections open
	MaxTCPConnsPerClient       int // of them, from one client address
	UpstreamMaxConns           int // TCP connections to each kube-dns address
	// ExternalMaxInflight caps the queries for names outside the cluster
	// zones in flight at once, so that slow external names leave connections
	// for cluster names.
	ExternalMaxInflight int
}

// Defaults.
const (
	DefaultListen = contract.NodeCacheIPv4 + ":53"
	// DefaultListenIPv6 is the node cache's IPv6 address in IPv6 and
	// dual-stack clusters (passed with --listen; the chart does); see
	// contract.NodeCacheIPv6 for why it cannot collide.
	DefaultListenIPv6      = "[" + contract.NodeCacheIPv6 + "]:53"
	DefaultClusterDomain   = contract.ClusterDomain
	DefaultCacheSize       = dnsengine.DefaultCacheSize
	DefaultCacheMaxBytes   = dnsengine.DefaultCacheMaxBytes
	DefaultMaxCachedAnswer = dnsengine.DefaultMaxCachedAnswer
	DefaultStaleMax        = dnsengine.DefaultStaleMax
	// DefaultExternalMaxInflight is three quarters of the connections to a
	// kube-dns address: the last quarter is always there for cluster names.
	DefaultExternalMaxInflight = forward.DefaultMaxConnsPerServer * 3 / 4
	DefaultMetricsAddr         = ":9253"
	// The standby's own defaults: another metrics port on the node, and a
	// cache for the minutes it serves, not the hours.
	DefaultStandbyMetricsAddr   = ":9254"
	DefaultStandbyCacheMaxBytes = 4 << 20
	DefaultInterfaceName        = "localdns0"
	DefaultReconcileInterval    = 5 * time.Second
	DefaultShutdownTimeout      = 5 * time.Second
	dnsPort                     = 53
	maxInterfaceNameLen         = 15 // IFNAMSIZ - 1
)

// Parse reads the command line without the program name. A first argument
// "cleanup" selects the cleanup subcommand, which takes the setup flags only;
// "ready" the readiness check, which takes --ready-file only.
// Usage goes to output; -h/--help returns flag.ErrHelp.
func Parse(args []string, output io.Writer) (Config, error) {
	if len(args) > 0 {
		switch args[0] {
		case cleanupCommand:
			return parseCleanup(args[1:], output)
		case readyCommand:
			return parseReady(args[1:], output)
		case standbyCommand:
			return parseServe(args[1:], output, CommandStandby)
		}
	}
	return parseServe(args, output, CommandServe)
}

// setupFlags holds the raw values of the flags serving and cleanup share.
type setupFlags struct {
	listen        flagutil.List
	iface         bool
	rules         bool
	interfaceName string
	iptablesMode  string
}

func (s *setupFlags) register(fs *flag.FlagSet, setupDefault bool) {
	s.listen = flagutil.List{Values: []string{DefaultListen}}
	fs.Var(&s.listen, "listen", "address `ip[:port]` to serve DNS on, UDP and TCP (port 53 when omitted); repeat the flag or give a comma-separated list; IPv6 and dual-stack clusters add "+DefaultListenIPv6)
	fs.BoolVar(&s.iface, "setup-interface", setupDefault, "create (or adopt) the interface holding the listen IPs; falls back to adding them to lo where the kernel has no dummy interfaces")
	fs.BoolVar(&s.rules, "setup-rules", setupDefault, "install iptables rules that skip conntrack (raw NOTRACK) and accept DNS to and from the listen IPs")
	fs.StringVar(&s.interfaceName, "interface-name", DefaultInterfaceName, "name of the dummy interface holding the listen IPs")
	fs.StringVar(&s.iptablesMode, "iptables-mode", string(IptablesAuto), "iptables backend: auto (the one kube-proxy uses), nft or legacy")
}

// validate turns the shared flags into listen addresses and a SetupConfig.
func (s *setupFlags) validate() ([]netip.AddrPort, SetupConfig, error) {
	var errs []error
	listen, err := flagutil.ParseAddrPorts("--listen", s.listen.Values)
	if err != nil {
		errs = append(errs, err)
	}
	if len(s.listen.Values) == 0 {
		errs = append(errs, errors.New("--listen: at least one address is required"))
	}
	setup := SetupConfig{
		Interface:     s.iface,
		Rules:         s.rules,
		InterfaceName: s.interfaceName,
		IptablesMode:  IptablesMode(s.iptablesMode),
	}
	switch setup.IptablesMode {
	case IptablesAuto, IptablesNFT, IptablesLegacy:
	default:
		errs = append(errs, fmt.Errorf("--iptables-mode: %q is not auto, nft or legacy", s.iptablesMode))
	}
	if setup.Interface {
		if err := validInterfaceName(setup.InterfaceName); err != nil {
			errs = append(errs, fmt.Errorf("--interface-name: %w", err))
		}
	}
	for _, ap := range listen {
		ip := ap.Addr()
		if (setup.Interface || setup.Rules) && (ip.IsLoopback() || ip.IsUnspecified()) {
			errs = append(errs, fmt.Errorf("--listen %s: node setup needs a dedicated IP, not a loopback or wildcard one (pass --setup-interface=false --setup-rules=false)", ap))
		}
		if setup.Rules && ap.Port() == 0 {
			errs = append(errs, fmt.Errorf("--listen %s: --setup-rules needs a fixed port", ap))
		}
	}
	return listen, setup, errors.Join(errs...)
}

// parseServe reads the flags of the node cache (CommandServe) or of its
// standby (CommandStandby), which takes the same flags with its own defaults
// and does no node setup.
func parseServe(args []string, output io.Writer, command Command) (Config, error) {
	name, about := "localdns-nodecache", "Usage: localdns-nodecache [flags]\n       localdns-nodecache standby [flags]\n"+
		"       localdns-nodecache cleanup [setup flags]\n       localdns-nodecache ready --ready-file PATH\n\n"+
		"A node-local caching DNS forwarder in front of kube-dns. SIGTERM drains and exits, leaving\n"+
		"the interface and rules in place for the next instance; \"standby\" serves the listen IPs\n"+
		"whenever no node cache does; \"cleanup\" removes the interface and rules; \"ready\" exits 0\n"+
		"when the instance that writes --ready-file is ready (a readiness probe).\n\nFlags:\n"
	metricsDefault, cacheBytesDefault := DefaultMetricsAddr, int64(DefaultCacheMaxBytes)
	if command == CommandStandby {
		name, about = "localdns-nodecache standby", "Usage: localdns-nodecache standby [flags]\n\n"+
			"The node cache's hot standby: it links to every node cache on the node through\n"+
			"--handover-socket and binds the listen IPs the moment none is linked (killed, OOM-killed,\n"+
			"crash-looping, stopping), then stands down when one is back. It does no node setup.\n\nFlags:\n"
		metricsDefault, cacheBytesDefault = DefaultStandbyMetricsAddr, DefaultStandbyCacheMaxBytes
	}
	fs := flagutil.NewFlagSet(name, about)
	var (
		setup             setupFlags
		clusterDomain     string
		upstream          flagutil.List
		upstreamExternal  flagutil.List
		upstreamTransport string
		cacheSize         int
		cacheMaxBytes     = flagutil.Bytes(cacheBytesDefault)
		maxCachedAnswer   = flagutil.Bytes(DefaultMaxCachedAnswer)
		staleMax          time.Duration
		limits            Limits
		metricsAddr       string
		reconcileInterval time.Duration
		shutdownTimeout   time.Duration
		readyFile         string
		handoverSocket    string
		startupTaint      string
		nodeName          string
	)
	setup.register(fs, command == CommandServe)
	fs.StringVar(&clusterDomain, "cluster-domain", DefaultClusterDomain, "the cluster's DNS domain; it, in-addr.arpa and ip6.arpa go to --upstream")
	fs.Var(&upstream, "upstream", "kube-dns `ip[:port]` for the cluster zones and \".\" (port 53 when omitted); repeatable or comma-separated; when empty, discovered once at start from the kube-dns Service in kube-system")
	fs.Var(&upstreamExternal, "upstream-external", "optional `ip[:port]` servers for names outside the cluster zones (\".\"); repeatable or comma-separated")
	fs.StringVar(&upstreamTransport, "upstream-transport", string(TransportTCP), "transport to the upstreams: tcp (pooled connections, one query in flight on each) or udp")
	fs.IntVar(&cacheSize, "cache-size", DefaultCacheSize, "maximum number of cached answers")
	fs.Var(&cacheMaxBytes, "cache-max-bytes", "memory the cache may hold, stale answers included (`bytes`, e.g. 16Mi)")
	fs.Var(&maxCachedAnswer, "max-cached-answer", "largest answer cached, in wire `bytes` (at most 64Ki); larger ones are served, not cached")
	fs.IntVar(&limits.MaxInflightMisses, "max-inflight-misses", dnsengine.DefaultMaxInflightMisses, "cache misses being resolved at once; beyond it queries get SERVFAIL")
	fs.IntVar(&limits.MaxInflightMissesPerClient, "max-inflight-misses-per-client", dnsengine.DefaultMaxInflightMissesPerClient, "of those, the most one client address may hold")
	fs.IntVar(&limits.MaxTCPConns, "max-tcp-conns", dnsengine.DefaultMaxTCPConns, "client TCP connections open at once; more are closed")
	fs.IntVar(&limits.MaxTCPConnsPerClient, "max-tcp-conns-per-client", dnsengine.DefaultMaxTCPConnsPerClient, "of those, the most one client address may hold")
	fs.IntVar(&limits.UpstreamMaxConns, "upstream-max-conns", forward.DefaultMaxConnsPerServer, "TCP connections to each upstream address (one query in flight on each); more queries wait for one")
	fs.IntVar(&limits.ExternalMaxInflight, "upstream-external-max-inflight", DefaultExternalMaxInflight, "queries for names outside the cluster zones in flight at once; 0 = no cap of their own")
	fs.DurationVar(&staleMax, "stale-max", DefaultStaleMax, "serve expired answers up to this old when every upstream fails (RFC 8767); 0 disables")
	fs.StringVar(&metricsAddr, "metrics-addr", metricsDefault, "`host:port` serving /metrics, /healthz and /readyz")
	fs.StringVar(&handoverSocket, "handover-socket", DefaultHandoverSocket, "abstract unix socket `name` linking the node cache and its standby; empty = no standby")
	fs.DurationVar(&reconcileInterval, "reconcile-interval", DefaultReconcileInterval, "how often the interface and rules are checked and repaired")
	fs.DurationVar(&shutdownTimeout, "shutdown-timeout", DefaultShutdownTimeout, "on SIGTERM, how long in-flight queries may drain before connections are closed")
	fs.StringVar(&readyFile, "ready-file", "", "`path` created once this instance serves DNS and an upstream answered, removed when it stops (for `localdns-nodecache ready`); empty: none")
	fs.StringVar(&startupTaint, "startup-taint", "", "taint `key` removed from this node (--node-name) once this instance serves DNS and an upstream answered, so workload pods wait for it on a new node (e.g. "+DefaultStartupTaint+"); empty: off. Needs get and update on the Node")
	fs.StringVar(&nodeName, "node-name", "", "this node's `name` (the pod's spec.nodeName), for --startup-taint")
	var logFormat string
	flagutil.LogFormatVar(fs, &logFormat)
	if err := flagutil.Parse(fs, args, output); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q (flags only; subcommands %q, %q and %q come first)",
			fs.Arg(0), standbyCommand, cleanupCommand, readyCommand)
	}

	var errs []error
	if err := flagutil.ValidLogFormat(logFormat); err != nil {
		errs = append(errs, err)
	}
	listen, setupCfg, err := setup.validate()
	if err != nil {
		errs = append(errs, err)
	}
	if command == CommandStandby {
		if setupCfg.Interface || setupCfg.Rules {
			errs = append(errs, errors.New("--setup-interface, --setup-rules: the standby does no node setup; the node cache owns it"))
		}
		if handoverSocket == "" {
			errs = append(errs, errors.New("--handover-socket: a standby needs one"))
		}
		if startupTaint != "" {
			errs = append(errs, errors.New("--startup-taint: the node cache removes the startup taint, not the standby"))
		}
	}
	if startupTaint != "" {
		if msgs := validation.IsQualifiedName(startupTaint); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("--startup-taint: %q is not a taint key: %s", startupTaint, strings.Join(msgs, "; ")))
		}
		if nodeName == "" {
			errs = append(errs, errors.New("--node-name: --startup-taint needs this node's name (the pod's spec.nodeName)"))
		}
	}
	if msgs := validation.IsDNS1123Subdomain(nodeName); nodeName != "" && len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("--node-name: %q is not a node name: %s", nodeName, strings.Join(msgs, "; ")))
	}
	domain, err := flagutil.ParseDomain(clusterDomain)
	if err != nil {
		errs = append(errs, fmt.Errorf("--cluster-domain: %w", err))
	}
	up, err := flagutil.ParseAddrPorts("--upstream", upstream.Values)
	if err != nil {
		errs = append(errs, err)
	}
	external, err := flagutil.ParseAddrPorts("--upstream-external", upstreamExternal.Values)
	if err != nil {
		errs = append(errs, err)
	}
	transport := forward.Transport(upstreamTransport)
	if transport != TransportTCP && transport != TransportUDP {
		errs = append(errs, fmt.Errorf("--upstream-transport: %q is not tcp or udp", upstreamTransport))
	}
	if cacheSize <= 0 {
		errs = append(errs, fmt.Errorf("--cache-size: %d is not positive", cacheSize))
	}
	if cacheMaxBytes <= 0 {
		errs = append(errs, fmt.Errorf("--cache-max-bytes: %s is not positive", &cacheMaxBytes))
	}
	if maxCachedAnswer <= 0 || maxCachedAnswer > dns.MaxMsgSize {
		errs = append(errs, fmt.Errorf("--max-cached-answer: %s is not in 1..%d", &maxCachedAnswer, dns.MaxMsgSize))
	}
	for name, v := range map[string]int{
		"--max-inflight-misses":            limits.MaxInflightMisses,
		"--max-inflight-misses-per-client": limits.MaxInflightMissesPerClient,
		"--max-tcp-conns":                  limits.MaxTCPConns,
		"--max-tcp-conns-per-client":       limits.MaxTCPConnsPerClient,
		"--upstream-max-conns":             limits.UpstreamMaxConns,
	} {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s: %d is not positive", name, v))
		}
	}
	if limits.ExternalMaxInflight < 0 {
		errs = append(errs, fmt.Errorf("--upstream-external-max-inflight: %d is negative", limits.ExternalMaxInflight))
	}
	if staleMax < 0 {
		errs = append(errs, fmt.Errorf("--stale-max: %v is negative", staleMax))
	}
	if err := flagutil.ValidHostPort(metricsAddr); err != nil {
		errs = append(errs, fmt.Errorf("--metrics-addr: %w", err))
	}
	if reconcileInterval <= 0 {
		errs = append(errs, fmt.Errorf("--reconcile-interval: %v is not positive", reconcileInterval))
	}
	if shutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--shutdown-timeout: %v is not positive", shutdownTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return Config{
		Command:           command,
		Listen:            listen,
		ClusterDomain:     domain,
		Upstream:          up,
		UpstreamExternal:  external,
		UpstreamTransport: transport,
		CacheSize:         cacheSize,
		CacheMaxBytes:     int64(cacheMaxBytes),
		MaxCachedAnswer:   int(maxCachedAnswer),
		StaleMax:          staleMax,
		Limits:            limits,
		MetricsAddr:       metricsAddr,
		Setup:             setupCfg,
		ReconcileInterval: reconcileInterval,
		ShutdownTimeout:   shutdownTimeout,
		ReadyFile:         readyFile,
		HandoverSocket:    handoverSocket,
		StartupTaint:      startupTaint,
		NodeName:          nodeName,
		LogFormat:         logFormat,
	}, nil
}

func parseReady(args []string, output io.Writer) (Config, error) {
	fs := flagutil.NewFlagSet("localdns-nodecache ready", "Usage: localdns-nodecache ready --ready-file PATH\n\n"+
		"Exits 0 when PATH exists: the node cache of this container (run with the same\n"+
		"--ready-file) serves DNS and an upstream has answered.\n\nFlags:\n")
	var readyFile string
	fs.StringVar(&readyFile, "ready-file", "", "`path` the serving instance writes (required)")
	if err := flagutil.Parse(fs, args, output); err != nil {
		return Config{}, err
	}
	switch {
	case fs.NArg() > 0:
		return Config{}, fmt.Errorf("ready: unexpected argument %q", fs.Arg(0))
	case readyFile == "":
		return Config{}, errors.New("ready: --ready-file is required")
	}
	return Config{Command: CommandReady, ReadyFile: readyFile}, nil
}

func parseCleanup(args []string, output io.Writer) (Config, error) {
	fs := flagutil.NewFlagSet("localdns-nodecache cleanup", "Usage: localdns-nodecache cleanup [flags]\n\n"+
		"Removes what the node cache set up: rules whose comment starts with \"localdns:\", the\n"+
		"interface (or, where it fell back to lo, the listen IPs' /32 and /128 on lo).\n\nFlags:\n")
	var setup setupFlags
	setup.register(fs, true)
	var logFormat string
	flagutil.LogFormatVar(fs, &logFormat)
	if err := flagutil.Parse(fs, args, output); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("cleanup: unexpected argument %q", fs.Arg(0))
	}
	listen, setupCfg, err := setup.validate()
	if err := errors.Join(err, flagutil.ValidLogFormat(logFormat)); err != nil {
		return Config{}, err
	}
	return Config{Command: CommandCleanup, Listen: listen, Setup: setupCfg, LogFormat: logFormat}, nil
}

func validInterfaceName(name string) error {
	switch {
	case name == "":
		return errors.New("must not be empty")
	case len(name) > maxInterfaceNameLen:
		return fmt.Errorf("%q is longer than %d bytes", name, maxInterfaceNameLen)
	case name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("%q is not a valid interface name", name)
	}
	return nil
}

// Package sidecar is localdns-stub: a small caching DNS stub that runs inside
// a pod on 127.0.0.1:53 (and [::1]:53 where the pod's primary family is
// IPv6), for musl (Alpine) workloads. musl ignores the resolver options that
// avoid the conntrack race and queries every nameserver at once, so such a
// pod cannot list the kube-dns ClusterIP safely. The stub owns the fallback
// instead: it asks the node cache (UDP with a short timeout, then TCP) and,
// when the node cache fails, kube-dns over TCP only, over whatever family
// those addresses have. It serves through the same dnsengine and forwarder as
// the node cache.
package sidecar

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/localdns/localdns/dnsengine"
	"github.com/localdns/localdns/internal/contract"
	"github.com/localdns/localdns/internal/flagutil"
)

// Command is what the process was asked to do.
type Command int

const (
	// CommandServe serves DNS until signalled.
	CommandServe Command = iota
	// CommandProbe asks a running stub one question and reports whether it answered.
	CommandProbe
)

// probeCommand is the subcommand name on the command line.
const probeCommand = "probe"

// Config is a validated command line.
type Config struct {
	Command Command

	Listen              []netip.AddrPort // where DNS is served (UDP and TCP)
	NodeCache           netip.AddrPort   // the node-local cache
	Fallback            netip.AddrPort   // kube-dns ClusterIP, reached over TCP only; zero = none
	ClusterDomain       string           // FQDN; queried (SOA) to probe an upstream marked down
	CacheSize           int
	CacheMaxBytes       int64
	StaleMax            time.Duration
	NodeCacheUDPTimeout time.Duration
	NodeCacheTCPTimeout time.Duration
	FallbackTimeout     time.Duration
	UDPSockets          int
	MetricsAddr         string // empty = no metrics listener
	LogFormat           string // text or json
	ShutdownTimeout     time.Duration

	Probe ProbeConfig // CommandProbe only
}

// ProbeConfig describes the probe subcommand's single query.
type ProbeConfig struct {
	Addr    netip.AddrPort // the stub's listen address
	Name    string         // FQDN asked (type SOA)
	Timeout time.Duration
}

// Defaults.
const (
	DefaultListenV4            = "127.0.0.1:53"
	DefaultListenV6            = "[::1]:53"
	DefaultNodeCache           = contract.NodeCacheIPv4 + ":53"
	DefaultClusterDomain       = contract.ClusterDomain
	DefaultCacheSize           = 1000
	DefaultCacheMaxBytes       = 1 << 20
	DefaultNodeCacheUDPTimeout = 250 * time.Millisecond
	// DefaultNodeCacheTCPTimeout outlasts the node cache's own wait for
	// kube-dns, so the stub never gives up on a node cache that is still
	// waiting for a slow answer: the node cache, not the stub, decides when
	// kube-dns has failed (and may answer stale before).
	DefaultNodeCacheTCPTimeout = dnsengine.DefaultUpstreamTimeout + 500*time.Millisecond
	DefaultFallbackTimeout     = time.Second
	DefaultUDPSockets          = 1
	DefaultShutdownTimeout     = 5 * time.Second
	// DefaultProbeTimeout stays under the one second kubelet gives an exec
	// probe by default, so a slow stub fails the probe rather than the exec.
	DefaultProbeTimeout = 800 * time.Millisecond
	// DefaultGCPercent is the stub's GOGC when the environment sets none.
	DefaultGCPercent = 50
)

// Parse reads the command line without the program name. A first argument
// "probe" selects the probe subcommand. Usage goes to output; -h/--help
// returns flag.ErrHelp. Without --listen, the stub listens on 127.0.0.1:53,
// and on [::1]:53 too when IPv6 loopback is up in this network namespace.
func Parse(args []string, output io.Writer) (Config, error) {
	return parse(args, output, ipv6LoopbackUp)
}

// ipv6LoopbackUp reports whether ::1 can be bound here: pods in IPv4-only
// clusters often have IPv6 disabled, and a default must not fail there.
func ipv6LoopbackUp() bool {
	c, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func parse(args []string, output io.Writer, ipv6Up func() bool) (Config, error) {
	if len(args) > 0 && args[0] == probeCommand {
		return parseProbe(args[1:], output)
	}
	return parseServe(args, output, ipv6Up)
}

func parseServe(args []string, output io.Writer, ipv6Up func() bool) (Config, error) {
	fs := flagutil.NewFlagSet("localdns-stub", "Usage: localdns-stub [flags]\n       localdns-stub probe [probe flags]\n\n"+
		"An in-pod DNS stub: answers on loopback from a small cache, asks the node cache (UDP, then\n"+
		"TCP) and, when it fails, kube-dns over TCP only. SIGTERM drains and exits. \"probe\" asks the\n"+
		"stub one question and exits 0 when it answers (the container's exec probe).\n\nFlags:\n")
	var (
		listen              flagutil.List
		nodeCache           string
		fallback            string
		clusterDomain       string
		cacheSize           int
		cacheMaxBytes       = flagutil.Bytes(DefaultCacheMaxBytes)
		staleMax            time.Duration
		nodeCacheUDPTimeout time.Duration
		nodeCacheTCPTimeout time.Duration
		fallbackTimeout     time.Duration
		udpSockets          int
		metricsAddr         string
		shutdownTimeout     time.Duration
	)
	fs.Var(&listen, "listen", "address `ip[:port]` to serve DNS on, UDP and TCP (port 53 when omitted); repeat the flag or give a comma-separated list (default "+DefaultListenV4+", plus "+DefaultListenV6+" when IPv6 loopback is up)")
	fs.StringVar(&nodeCache, "node-cache", DefaultNodeCache, "the node cache `ip[:port]`, asked first: over UDP, then over TCP")
	fs.StringVar(&fallback, "fallback", "", "kube-dns ClusterIP `ip[:port]`, asked over TCP only when the node cache fails; empty = no fallback")
	fs.StringVar(&clusterDomain, "cluster-domain", DefaultClusterDomain, "the cluster's DNS domain; its SOA is what an upstream marked down is probed with")
	fs.IntVar(&cacheSize, "cache-size", DefaultCacheSize, "maximum number of cached answers")
	fs.Var(&cacheMaxBytes, "cache-max-bytes", "memory the cache may hold, stale answers included (`bytes`, e.g. 1Mi)")
	fs.DurationVar(&staleMax, "stale-max", dnsengine.DefaultStaleMax, "serve expired answers up to this old when every upstream fails (RFC 8767); 0 disables")
	fs.DurationVar(&nodeCacheUDPTimeout, "node-cache-udp-timeout", DefaultNodeCacheUDPTimeout, "how long one UDP query to the node cache may take before its TCP is tried")
	fs.DurationVar(&nodeCacheTCPTimeout, "node-cache-tcp-timeout", DefaultNodeCacheTCPTimeout, "how long one TCP query to the node cache may take before the fallback is tried")
	fs.DurationVar(&fallbackTimeout, "fallback-timeout", DefaultFallbackTimeout, "how long one TCP query to the fallback may take")
	fs.IntVar(&udpSockets, "udp-sockets", DefaultUDPSockets, "SO_REUSEPORT UDP sockets per listen address (each holds its own read and write buffers)")
	fs.StringVar(&metricsAddr, "metrics-addr", "", "`host:port` serving /metrics, /healthz and /readyz; empty = off")
	fs.DurationVar(&shutdownTimeout, "shutdown-timeout", DefaultShutdownTimeout, "on SIGTERM, how long in-flight queries may drain before connections are closed")
	var logFormat string
	flagutil.LogFormatVar(fs, &logFormat)
	if err := flagutil.Parse(fs, args, output); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q (flags only; the only subcommand is %q, given first)", fs.Arg(0), probeCommand)
	}

	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	listenValues := listen.Values
	if !listen.Given {
		listenValues = []string{DefaultListenV4}
		if ipv6Up() {
			listenValues = append(listenValues, DefaultListenV6)
		}
	}
	var cfg Config
	var err error
	cfg.Listen, err = flagutil.ParseAddrPorts("--listen", listenValues)
	check(err)
	if len(listenValues) == 0 {
		check(errors.New("--listen: at least one address is required"))
	}
	cfg.NodeCache, err = flagutil.ParseAddrPort(nodeCache)
	check(prefixed("--node-cache", err))
	if fallback != "" {
		cfg.Fallback, err = flagutil.ParseAddrPort(fallback)
		check(prefixed("--fallback", err))
		if cfg.Fallback == cfg.NodeCache && cfg.NodeCache.IsValid() {
			// One address has one health state in the forwarder: the
			// fallback would be skipped with the node cache, and asked over UDP.
			check(fmt.Errorf("--fallback %s: must differ from --node-cache", cfg.Fallback))
		}
	}
	cfg.ClusterDomain, err = flagutil.ParseDomain(clusterDomain)
	check(prefixed("--cluster-domain", err))
	for name, v := range map[string]time.Duration{
		"--node-cache-udp-timeout": nodeCacheUDPTimeout,
		"--node-cache-tcp-timeout": nodeCacheTCPTimeout,
		"--fallback-timeout":       fallbackTimeout,
		"--shutdown-timeout":       shutdownTimeout,
	} {
		if v <= 0 {
			check(fmt.Errorf("%s: %v is not positive", name, v))
		}
	}
	if cacheSize <= 0 {
		check(fmt.Errorf("--cache-size: %d is not positive", cacheSize))
	}
	if cacheMaxBytes <= 0 {
		check(fmt.Errorf("--cache-max-bytes: %s is not positive", &cacheMaxBytes))
	}
	if staleMax < 0 {
		check(fmt.Errorf("--stale-max: %v is negative", staleMax))
	}
	if udpSockets <= 0 {
		check(fmt.Errorf("--udp-sockets: %d is not positive", udpSockets))
	}
	if metricsAddr != "" {
		check(prefixed("--metrics-addr", flagutil.ValidHostPort(metricsAddr)))
	}
	check(flagutil.ValidLogFormat(logFormat))
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	cfg.Command = CommandServe
	cfg.CacheSize = cacheSize
	cfg.CacheMaxBytes = int64(cacheMaxBytes)
	cfg.StaleMax = staleMax
	cfg.NodeCacheUDPTimeout = nodeCacheUDPTimeout
	cfg.NodeCacheTCPTimeout = nodeCacheTCPTimeout
	cfg.FallbackTimeout = fallbackTimeout
	cfg.UDPSockets = udpSockets
	cfg.MetricsAddr = metricsAddr
	cfg.LogFormat = logFormat
	cfg.ShutdownTimeout = shutdownTimeout
	return cfg, nil
}

func parseProbe(args []string, output io.Writer) (Config, error) {
	fs := flagutil.NewFlagSet("localdns-stub probe", "Usage: localdns-stub probe [flags]\n\n"+
		"Sends one SOA query over UDP to the stub and exits 0 when a well-formed reply to it comes\n"+
		"back, whatever its RCODE (that proves the stub serves); else prints why and exits 1. It is\n"+
		"the container's exec probe: kubelet's own probes cannot reach the pod's 127.0.0.1.\n\nFlags:\n")
	var (
		listen  string
		name    string
		timeout time.Duration
	)
	fs.StringVar(&listen, "listen", DefaultListenV4, "the stub's listen `ip[:port]` to query")
	fs.StringVar(&name, "name", DefaultClusterDomain, "the name asked (type SOA)")
	fs.DurationVar(&timeout, "timeout", DefaultProbeTimeout, "how long to wait for the reply")
	if err := flagutil.Parse(fs, args, output); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("probe: unexpected argument %q", fs.Arg(0))
	}
	var errs []error
	addr, err := flagutil.ParseAddrPort(listen)
	if err != nil {
		errs = append(errs, fmt.Errorf("--listen: %w", err))
	} else if addr.Port() == 0 {
		errs = append(errs, fmt.Errorf("--listen %s: a port is needed to query", addr))
	}
	fqdn, err := flagutil.ParseDomain(name)
	if err != nil {
		errs = append(errs, fmt.Errorf("--name: %w", err))
	}
	if timeout <= 0 {
		errs = append(errs, fmt.Errorf("--timeout: %v is not positive", timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, fmt.Errorf("probe: %w", err)
	}
	return Config{Command: CommandProbe, Probe: ProbeConfig{Addr: addr, Name: fqdn, Timeout: timeout}}, nil
}

func prefixed(flagName string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", flagName, err)
}

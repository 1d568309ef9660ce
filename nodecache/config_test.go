package nodecache

import (
	"errors"
	"flag"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func aps(ss ...string) []netip.AddrPort {
	out := make([]netip.AddrPort, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddrPort(s)
	}
	return out
}

func defaultConfig() Config {
	return Config{
		Command:           CommandServe,
		Listen:            aps("169.254.20.10:53"),
		ClusterDomain:     "cluster.local.",
		UpstreamTransport: TransportTCP,
		CacheSize:         DefaultCacheSize,
		CacheMaxBytes:     16 << 20,
		MaxCachedAnswer:   16 << 10,
		StaleMax:          time.Hour,
		Limits: Limits{MaxInflightMisses: 4096, MaxInflightMissesPerClient: 256, MaxTCPConns: 1000, MaxTCPConnsPerClient: 64,
			UpstreamMaxConns: 256, ExternalMaxInflight: 192},
		MetricsAddr:       ":9253",
		Setup:             SetupConfig{Interface: true, Rules: true, InterfaceName: "localdns0", IptablesMode: IptablesAuto},
		ReconcileInterval: DefaultReconcileInterval,
		ShutdownTimeout:   DefaultShutdownTimeout,
		HandoverSocket:    DefaultHandoverSocket,
		LogFormat:         "text",
	}
}

func TestParseGood(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want func(*Config)
	}{
		{"defaults", nil, func(*Config) {}},
		{
			"acceptance command",
			[]string{"--listen", "127.0.0.1:5300", "--upstream", "127.0.0.1:5301", "--setup-interface=false", "--setup-rules=false", "--metrics-addr", "127.0.0.1:9300"},
			func(c *Config) {
				c.Listen = aps("127.0.0.1:5300")
				c.Upstream = aps("127.0.0.1:5301")
				c.Setup.Interface, c.Setup.Rules = false, false
				c.MetricsAddr = "127.0.0.1:9300"
			},
		},
		{
			"repeated and comma lists, default port, duplicates dropped",
			[]string{"--listen", "169.254.20.10,fd00::a", "--listen", "[fd00::b]:5353", "--listen", "169.254.20.10:53",
				"--upstream", "10.96.0.10", "--upstream-external", "192.0.2.53:5353,192.0.2.54"},
			func(c *Config) {
				c.Listen = aps("169.254.20.10:53", "[fd00::a]:53", "[fd00::b]:5353")
				c.Upstream = aps("10.96.0.10:53")
				c.UpstreamExternal = aps("192.0.2.53:5353", "192.0.2.54:53")
			},
		},
		{
			"everything else",
			[]string{"--cluster-domain", "Example.ORG.", "--upstream-transport", "udp", "--cache-size", "1000", "--stale-max", "0",
				"--interface-name", "nodedns", "--iptables-mode", "legacy", "--reconcile-interval", "250ms", "--shutdown-timeout", "30s",
				"--metrics-addr", "[::1]:0"},
			func(c *Config) {
				c.ClusterDomain = "example.org."
				c.UpstreamTransport = TransportUDP
				c.CacheSize = 1000
				c.StaleMax = 0
				c.Setup.InterfaceName = "nodedns"
				c.Setup.IptablesMode = IptablesLegacy
				c.ReconcileInterval = 250 * time.Millisecond
				c.ShutdownTimeout = 30 * time.Second
				c.MetricsAddr = "[::1]:0"
			},
		},
		{
			"limits",
			[]string{"--cache-max-bytes", "8Mi", "--max-cached-answer", "4096", "--max-inflight-misses", "100",
				"--max-inflight-misses-per-client", "10", "--max-tcp-conns", "50", "--max-tcp-conns-per-client", "5",
				"--upstream-max-conns", "64", "--upstream-external-max-inflight", "0"},
			func(c *Config) {
				c.CacheMaxBytes, c.MaxCachedAnswer = 8<<20, 4096
				c.Limits = Limits{MaxInflightMisses: 100, MaxInflightMissesPerClient: 10, MaxTCPConns: 50,
					MaxTCPConnsPerClient: 5, UpstreamMaxConns: 64, ExternalMaxInflight: 0}
			},
		},
		{
			"ready takes the ready file",
			[]string{"ready", "--ready-file", "/run/localdns/ready"},
			func(c *Config) { *c = Config{Command: CommandReady, ReadyFile: "/run/localdns/ready"} },
		},
		{
			"serve with a ready file",
			[]string{"--ready-file", "/run/localdns/ready"},
			func(c *Config) { c.ReadyFile = "/run/localdns/ready" },
		},
		{
			"cleanup takes the setup flags",
			[]string{"cleanup", "--listen", "169.254.20.11", "--interface-name", "x0", "--iptables-mode", "nft", "--setup-rules=false"},
			func(c *Config) {
				*c = Config{
					Command:   CommandCleanup,
					Listen:    aps("169.254.20.11:53"),
					Setup:     SetupConfig{Interface: true, Rules: false, InterfaceName: "x0", IptablesMode: IptablesNFT},
					LogFormat: "text",
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.args, io.Discard)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.args, err)
			}
			want := defaultConfig()
			tc.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", tc.args, got, want)
			}
		})
	}
}

func TestParseBad(t *testing.T) {
	t.Parallel()
	noSetup := []string{"--setup-interface=false", "--setup-rules=false"}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"bad listen", []string{"--listen", "169.254.20.10:99999"}, `--listen: "169.254.20.10:99999"`},
		{"hostname listen", []string{"--listen", "localhost:53"}, "hostname is not accepted"},
		{"empty listen", []string{"--listen", ","}, "--listen: at least one address is required"},
		{"loopback listen with setup", []string{"--listen", "127.0.0.1:5300"}, "node setup needs a dedicated IP"},
		{"wildcard listen with setup", []string{"--listen", "0.0.0.0"}, "node setup needs a dedicated IP"},
		{"port 0 with rules", []string{"--listen", "169.254.20.10:0"}, "--setup-rules needs a fixed port"},
		{"bad upstream", append([]string{"--upstream", "kube-dns"}, noSetup...), `--upstream: "kube-dns"`},
		{"bad external", []string{"--upstream-external", "1.2.3"}, "--upstream-external"},
		{"bad transport", []string{"--upstream-transport", "tls"}, `--upstream-transport: "tls"`},
		{"bad duration", []string{"--stale-max", "10"}, "invalid value \"10\" for flag -stale-max"},
		{"negative stale", []string{"--stale-max", "-1s"}, "--stale-max: -1s is negative"},
		{"ready without a file", []string{"ready"}, "ready: --ready-file is required"},
		{"ready with an argument", []string{"ready", "--ready-file", "/x", "extra"}, `ready: unexpected argument "extra"`},
		{"zero reconcile", []string{"--reconcile-interval", "0s"}, "--reconcile-interval"},
		{"zero shutdown timeout", []string{"--shutdown-timeout", "0s"}, "--shutdown-timeout"},
		{"zero cache", []string{"--cache-size", "0"}, "--cache-size"},
		{"bad cache bytes", []string{"--cache-max-bytes", "16MB"}, "invalid value \"16MB\" for flag -cache-max-bytes"},
		{"zero cache bytes", []string{"--cache-max-bytes", "0"}, "--cache-max-bytes: 0 is not positive"},
		{"cached answer over 64 KiB", []string{"--max-cached-answer", "65536"}, "--max-cached-answer: 64Ki is not in 1..65535"},
		{"zero miss limit", []string{"--max-inflight-misses-per-client", "0"}, "--max-inflight-misses-per-client: 0 is not positive"},
		{"zero tcp limit", []string{"--max-tcp-conns-per-client", "0"}, "--max-tcp-conns-per-client"},
		{"zero upstream conns", []string{"--upstream-max-conns", "0"}, "--upstream-max-conns"},
		{"negative external cap", []string{"--upstream-external-max-inflight", "-1"}, "--upstream-external-max-inflight: -1 is negative"},
		{"bad cluster domain", []string{"--cluster-domain", "a..b"}, "--cluster-domain"},
		{"root cluster domain", []string{"--cluster-domain", "."}, "--cluster-domain"},
		{"bad metrics addr", []string{"--metrics-addr", "9253"}, "--metrics-addr"},
		{"hostname metrics addr", []string{"--metrics-addr", "example.com:9253"}, "--metrics-addr"},
		{"bad iptables mode", []string{"--iptables-mode", "ipvs"}, `--iptables-mode: "ipvs"`},
		{"long interface name", []string{"--interface-name", "a-very-long-name0"}, "--interface-name"},
		{"unknown flag", []string{"--listen-addr", "x"}, "flag provided but not defined"},
		{"stray argument", []string{"serve"}, `unexpected argument "serve"`},
		{"cleanup with serve flag", []string{"cleanup", "--upstream", "10.96.0.10"}, "flag provided but not defined"},
		{"cleanup bad listen", []string{"cleanup", "--listen", "nope"}, "--listen"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			_, err := Parse(tc.args, &out)
			if err == nil {
				t.Fatalf("Parse(%q) succeeded, want an error containing %q", tc.args, tc.wantErr)
			}
			if out.Len() > 0 {
				t.Errorf("Parse(%q) printed %q; errors are for the caller to report once", tc.args, out.String())
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Parse(%q) = %v, want an error containing %q", tc.args, err, tc.wantErr)
			}
		})
	}
}

func TestParseReportsEveryError(t *testing.T) {
	t.Parallel()
	_, err := Parse([]string{"--cache-size", "-1", "--upstream-transport", "quic"}, io.Discard)
	for _, want := range []string{"--cache-size", "--upstream-transport"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}

func TestHelpListsEveryFlag(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	if _, err := Parse([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v, want flag.ErrHelp", err)
	}
	for _, name := range []string{"listen", "cluster-domain", "upstream", "upstream-external", "upstream-transport",
		"cache-size", "cache-max-bytes", "max-cached-answer", "max-inflight-misses", "max-inflight-misses-per-client",
		"max-tcp-conns", "max-tcp-conns-per-client", "upstream-max-conns", "upstream-external-max-inflight", "stale-max", "metrics-addr", "setup-interface", "setup-rules", "interface-name",
		"iptables-mode", "reconcile-interval", "shutdown-timeout"} {
		if !strings.Contains(out.String(), "  -"+name+" ") && !strings.Contains(out.String(), "  -"+name+"\n") {
			t.Errorf("--help does not list -%s:\n%s", name, out.String())
		}
	}
	if !strings.Contains(out.String(), "localdns-nodecache cleanup") {
		t.Errorf("--help does not mention the cleanup subcommand:\n%s", out.String())
	}
}

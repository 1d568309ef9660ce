package sidecar

import (
	"bytes"
	"errors"
	"flag"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	t.Parallel()
	ap := netip.MustParseAddrPort
	defaults := Config{
		Command:             CommandServe,
		Listen:              []netip.AddrPort{ap("127.0.0.1:53")},
		NodeCache:           ap("169.254.20.10:53"),
		ClusterDomain:       "cluster.local.",
		CacheSize:           1000,
		CacheMaxBytes:       1 << 20,
		StaleMax:            time.Hour,
		NodeCacheUDPTimeout: 250 * time.Millisecond,
		NodeCacheTCPTimeout: 2500 * time.Millisecond,
		FallbackTimeout:     time.Second,
		UDPSockets:          1,
		LogFormat:           "text",
		ShutdownTimeout:     5 * time.Second,
	}
	with := func(edit func(*Config)) Config {
		c := defaults
		c.Listen = append([]netip.AddrPort(nil), defaults.Listen...)
		edit(&c)
		return c
	}
	tests := []struct {
		name    string
		args    []string
		ipv6Up  bool
		want    Config
		wantErr string // substring; empty = success
	}{
		{name: "defaults, IPv6 loopback down", want: defaults},
		{name: "defaults, IPv6 loopback up", ipv6Up: true, want: with(func(c *Config) {
			c.Listen = append(c.Listen, ap("[::1]:53"))
		})},
		{name: "explicit --listen replaces the default, even with IPv6 up", ipv6Up: true,
			args: []string{"--listen", "127.0.0.1:53"}, want: defaults},
		{
			name: "IPv4 upstreams",
			args: []string{"--listen", "127.0.0.1:53", "--node-cache", "169.254.20.10:53", "--fallback", "10.96.0.10:53", "--cache-size", "1000"},
			want: with(func(c *Config) { c.Fallback = ap("10.96.0.10:53") }),
		},
		{
			name: "IPv6 upstreams, served on both loopbacks",
			args: []string{"--listen", "[::1]:53", "--listen", "127.0.0.1:53", "--node-cache", "[fd6c:6f63:616c::10]:53", "--fallback", "fd00:10:96::a"},
			want: with(func(c *Config) {
				c.Listen = []netip.AddrPort{ap("[::1]:53"), ap("127.0.0.1:53")}
				c.NodeCache, c.Fallback = ap("[fd6c:6f63:616c::10]:53"), ap("[fd00:10:96::a]:53")
			}),
		},
		{
			name: "every flag",
			args: []string{"--listen", "127.0.0.1:5353,::1", "--listen", "127.0.0.2", "--listen", "127.0.0.1:5353",
				"--node-cache", "169.254.20.11", "--fallback", "fd00::10", "--cluster-domain", "Corp.Example",
				"--cache-size", "50", "--cache-max-bytes", "256Ki", "--stale-max", "0", "--node-cache-udp-timeout", "100ms", "--node-cache-tcp-timeout", "2s",
				"--fallback-timeout", "3s", "--udp-sockets", "2", "--metrics-addr", "127.0.0.1:9254", "--shutdown-timeout", "1s"},
			want: Config{
				Command:             CommandServe,
				Listen:              []netip.AddrPort{ap("127.0.0.1:5353"), ap("[::1]:53"), ap("127.0.0.2:53")},
				NodeCache:           ap("169.254.20.11:53"),
				Fallback:            ap("[fd00::10]:53"),
				ClusterDomain:       "corp.example.",
				CacheSize:           50,
				CacheMaxBytes:       256 << 10,
				NodeCacheUDPTimeout: 100 * time.Millisecond,
				NodeCacheTCPTimeout: 2 * time.Second,
				FallbackTimeout:     3 * time.Second,
				UDPSockets:          2,
				MetricsAddr:         "127.0.0.1:9254",
				LogFormat:           "text",
				ShutdownTimeout:     time.Second,
			},
		},
		{name: "IPv4-mapped addresses unmapped", args: []string{"--fallback", "::ffff:10.96.0.10"},
			want: with(func(c *Config) { c.Fallback = ap("10.96.0.10:53") })},
		{name: "metrics on every interface", args: []string{"--metrics-addr", ":9254"},
			want: with(func(c *Config) { c.MetricsAddr = ":9254" })},

		{name: "host name refused", args: []string{"--fallback", "kube-dns.kube-system"}, wantErr: "--fallback: \"kube-dns.kube-system\" is not an ip"},
		{name: "bad listen", args: []string{"--listen", "127.0.0.1:99999"}, wantErr: "--listen:"},
		{name: "empty listen", args: []string{"--listen", ","}, wantErr: "--listen: at least one address"},
		{name: "zoned address", args: []string{"--node-cache", "fe80::1%eth0"}, wantErr: "zoned"},
		{name: "fallback equals node cache", args: []string{"--fallback", "169.254.20.10"}, wantErr: "must differ from --node-cache"},
		{name: "root as cluster domain", args: []string{"--cluster-domain", "."}, wantErr: "--cluster-domain"},
		{name: "zero cache", args: []string{"--cache-size", "0"}, wantErr: "--cache-size: 0 is not positive"},
		{name: "negative stale", args: []string{"--stale-max", "-1s"}, wantErr: "--stale-max"},
		{name: "zero udp timeout", args: []string{"--node-cache-udp-timeout", "0s"}, wantErr: "--node-cache-udp-timeout: 0s is not positive"},
		{name: "duration without unit", args: []string{"--fallback-timeout", "5"}, wantErr: "invalid value"},
		{name: "zero sockets", args: []string{"--udp-sockets", "0"}, wantErr: "--udp-sockets"},
		{name: "bad metrics addr", args: []string{"--metrics-addr", "metrics:http"}, wantErr: "--metrics-addr"},
		{name: "stray argument", args: []string{"serve"}, wantErr: `unexpected argument "serve"`},
		{name: "unknown flag", args: []string{"--upstream", "10.0.0.1"}, wantErr: "flag provided but not defined"},
		{name: "every error reported at once", args: []string{"--cache-size", "-1", "--udp-sockets", "-1"},
			wantErr: "--cache-size: -1 is not positive\n--udp-sockets: -1 is not positive"},

		{name: "probe defaults", args: []string{"probe"}, want: Config{Command: CommandProbe,
			Probe: ProbeConfig{Addr: ap("127.0.0.1:53"), Name: "cluster.local.", Timeout: 800 * time.Millisecond}}},
		{name: "probe --listen", args: []string{"probe", "--listen", "127.0.0.1:53"}, want: Config{Command: CommandProbe,
			Probe: ProbeConfig{Addr: ap("127.0.0.1:53"), Name: "cluster.local.", Timeout: 800 * time.Millisecond}}},
		{name: "probe flags", args: []string{"probe", "--listen", "::1", "--name", "example.org", "--timeout", "2s"}, want: Config{Command: CommandProbe,
			Probe: ProbeConfig{Addr: ap("[::1]:53"), Name: "example.org.", Timeout: 2 * time.Second}}},
		{name: "probe port 0", args: []string{"probe", "--listen", "127.0.0.1:0"}, wantErr: "a port is needed"},
		{name: "probe bad name", args: []string{"probe", "--name", "a..b"}, wantErr: "--name"},
		{name: "probe zero timeout", args: []string{"probe", "--timeout", "0s"}, wantErr: "--timeout"},
		{name: "probe takes no serve flags", args: []string{"probe", "--fallback", "10.96.0.10"}, wantErr: "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var usage bytes.Buffer
			got, err := parse(tc.args, &usage, func() bool { return tc.ipv6Up })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parse(%q) error %v, want one containing %q", tc.args, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parse(%q): %v", tc.args, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parse(%q)\n got %+v\nwant %+v", tc.args, got, tc.want)
			}
		})
	}
}

// TestHelpListsEveryFlag keeps --help and the flag set in step: every flag
// shows up, and -h is flag.ErrHelp (exit 0), not a failure.
func TestHelpListsEveryFlag(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args  []string
		flags []string
	}{
		{[]string{"--help"}, []string{"-listen", "-node-cache", "-fallback", "-cluster-domain", "-cache-size", "-stale-max",
			"-node-cache-udp-timeout", "-node-cache-tcp-timeout", "-fallback-timeout", "-udp-sockets", "-metrics-addr", "-shutdown-timeout"}},
		{[]string{"probe", "-h"}, []string{"-listen", "-name", "-timeout"}},
	}
	for _, tc := range tests {
		var usage bytes.Buffer
		if _, err := parse(tc.args, &usage, func() bool { return false }); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("parse(%q) = %v, want flag.ErrHelp", tc.args, err)
		}
		for _, f := range tc.flags {
			if !strings.Contains(usage.String(), "  "+f+" ") {
				t.Errorf("%q usage lacks %s:\n%s", tc.args, f, usage.String())
			}
		}
	}
}

// TestIPv6LoopbackDetection checks the detector against the addresses the
// kernel lists, so the default is right here whether IPv6 is up or not.
func TestIPv6LoopbackDetection(t *testing.T) {
	t.Parallel()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	listed := false
	for _, a := range addrs {
		if ipnet, ok := a.(*net.IPNet); ok && ipnet.IP.Equal(net.IPv6loopback) {
			listed = true
		}
	}
	if got := ipv6LoopbackUp(); got != listed {
		t.Errorf("ipv6LoopbackUp() = %v, but ::1 listed on an interface = %v", got, listed)
	}
}

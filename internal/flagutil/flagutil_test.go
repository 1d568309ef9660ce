package flagutil

import (
	"flag"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestList(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		initial   []string
		args      []string
		want      []string
		wantGiven bool
	}{
		{"default kept when not given", []string{"a"}, nil, []string{"a"}, false},
		{"first Set replaces the default", []string{"a"}, []string{"-l", "b"}, []string{"b"}, true},
		{"repeats and comma lists append, trimmed, empties dropped", nil, []string{"-l", "b, c,", "-l", " d"}, []string{"b", "c", "d"}, true},
		{"given but empty", []string{"a"}, []string{"-l", ","}, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := List{Values: slices.Clone(tc.initial)}
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			fs.Var(&l, "l", "list")
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(l.Values, tc.want) || l.Given != tc.wantGiven {
				t.Errorf("after %q: %q given=%v, want %q given=%v", tc.args, l.Values, l.Given, tc.want, tc.wantGiven)
			}
			if got, want := l.String(), strings.Join(tc.want, ","); got != want {
				t.Errorf("String() = %q, want %q", got, want)
			}
		})
	}
}

func TestParseAddrPorts(t *testing.T) {
	t.Parallel()
	ap := netip.MustParseAddrPort
	tests := []struct {
		name    string
		values  []string
		want    []netip.AddrPort
		wantErr []string // substrings, each on its own line of the error
	}{
		{"forms and default port", []string{"10.0.0.1", "10.0.0.2:5353", "fd00::1", "[fd00::2]:5353"},
			[]netip.AddrPort{ap("10.0.0.1:53"), ap("10.0.0.2:5353"), ap("[fd00::1]:53"), ap("[fd00::2]:5353")}, nil},
		{"duplicates dropped in order", []string{"10.0.0.2", "10.0.0.1:53", "10.0.0.2:53"},
			[]netip.AddrPort{ap("10.0.0.2:53"), ap("10.0.0.1:53")}, nil},
		{"IPv4-mapped unmapped", []string{"::ffff:10.0.0.1", "[::ffff:10.0.0.2]:54"},
			[]netip.AddrPort{ap("10.0.0.1:53"), ap("10.0.0.2:54")}, nil},
		{"every bad value reported, each with the flag", []string{"localhost:53", "10.0.0.1", "fe80::1%eth0", "[fe80::1%eth0]:53", "10.0.0.1:99999"},
			[]netip.AddrPort{ap("10.0.0.1:53")},
			[]string{`--x: "localhost:53" is not an ip or ip:port (a hostname is not accepted)`,
				`--x: "fe80::1%eth0": zoned addresses are not supported`,
				`--x: "[fe80::1%eth0]:53": zoned addresses are not supported`,
				`--x: "10.0.0.1:99999" is not an ip`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAddrPorts("--x", tc.values)
			if !slices.Equal(got, tc.want) {
				t.Errorf("ParseAddrPorts(%q) = %v, want %v", tc.values, got, tc.want)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Errorf("ParseAddrPorts(%q): %v", tc.values, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseAddrPorts(%q) succeeded, want errors %q", tc.values, tc.wantErr)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tc.wantErr) {
				t.Fatalf("error has %d lines, want %d:\n%v", len(lines), len(tc.wantErr), err)
			}
			for i, want := range tc.wantErr {
				if !strings.HasPrefix(lines[i], want) {
					t.Errorf("error line %d = %q, want it to start with %q", i, lines[i], want)
				}
			}
		})
	}
}

func TestParseDomain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want, wantErr string
	}{
		{"cluster.local", "cluster.local.", ""},
		{" Corp.Example. ", "corp.example.", ""},
		{"", "", "must not be empty or the root"},
		{".", "", "must not be empty or the root"},
		{"a..b", "", `"a..b" is not a domain name`},
	}
	for _, tc := range tests {
		got, err := ParseDomain(tc.in)
		if got != tc.want || (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("ParseDomain(%q) = %q, %v; want %q, error containing %q", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestValidHostPort(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, wantErr string
	}{
		{":9253", ""},
		{"127.0.0.1:0", ""},
		{"[::1]:9253", ""},
		{"localhost:9253", ""},
		{"9253", "is not host:port"},
		{"example.com:9253", "host must be an IP, localhost or empty"},
		{"127.0.0.1:http", `bad port "http"`},
		{"127.0.0.1:65536", `bad port "65536"`},
	}
	for _, tc := range tests {
		err := ValidHostPort(tc.in)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("ValidHostPort(%q) = %v, want an error containing %q", tc.in, err, tc.wantErr)
		}
	}
}

func TestNewFlagSet(t *testing.T) {
	t.Parallel()
	fs := NewFlagSet("cmd", "Usage: cmd [flags]\n\nFlags:\n")
	var out strings.Builder
	fs.SetOutput(&out)
	fs.String("name", "x", "the `thing` asked")
	if err := fs.Parse([]string{"-h"}); err != flag.ErrHelp {
		t.Fatalf("-h: %v, want flag.ErrHelp returned", err)
	}
	want := "Usage: cmd [flags]\n\nFlags:\n  -name thing\n    \tthe thing asked (default \"x\")\n"
	if out.String() != want {
		t.Errorf("usage:\n%q\nwant\n%q", out.String(), want)
	}
	if err := fs.Parse([]string{"-nope"}); err == nil || !strings.Contains(err.Error(), "flag provided but not defined") {
		t.Errorf("unknown flag: %v, want it returned", err)
	}
}

func TestBytes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    int64
		wantErr bool
		str     string
	}{
		{"1048576", 1 << 20, false, "1Mi"},
		{"16Mi", 16 << 20, false, "16Mi"},
		{"16MiB", 16 << 20, false, "16Mi"},
		{"512Ki", 512 << 10, false, "512Ki"},
		{"1Gi", 1 << 30, false, "1Gi"},
		{"1000", 1000, false, "1000"},
		{"0", 0, false, "0"},
		{"16M", 0, true, ""},
		{"-1", 0, true, ""},
		{"1.5Mi", 0, true, ""},
		{"Mi", 0, true, ""},
		{"99999999999Gi", 0, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var b Bytes
			err := b.Set(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Set(%q): %v, want error %v", tt.in, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if int64(b) != tt.want || b.String() != tt.str {
				t.Fatalf("Set(%q) = %d (%s), want %d (%s)", tt.in, int64(b), b.String(), tt.want, tt.str)
			}
		})
	}
}

// Package flagutil holds the command-line helpers the localdns DNS binaries
// share: a repeatable, comma-separated list flag, and parsers for the
// addresses and names their flags take. Each parser returns a plain error;
// the caller prefixes the flag's name.
package flagutil

import (
	"errors"
	"flag"
	"fmt"
	"github.com/localdns/localdns/internal/contract"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// DNSPort is the port of an address given without one.
const DNSPort = contract.DNSPort

// NewFlagSet returns a flag set that returns its errors (ContinueOnError)
// and whose usage is the text about followed by every flag's default,
// written to the set's output.
func NewFlagSet(name, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), about)
		fs.PrintDefaults()
	}
	return fs
}

// Parse parses args with fs, the one way every localdns binary parses its
// command line: the usage goes to output only when asked for with -h/--help
// (flag.ErrHelp is returned); any other error is returned, not printed, so
// that the caller (internal/cli) reports it exactly once.
func Parse(fs *flag.FlagSet, args []string, output io.Writer) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(output)
		fs.Usage()
	}
	return err
}

// Log formats, the values of every binary's --log-format.
const (
	LogFormatText = "text"
	LogFormatJSON = "json"
)

// LogFormatVar registers --log-format, the same flag with the same default
// in every binary.
func LogFormatVar(fs *flag.FlagSet, p *string) {
	fs.StringVar(p, "log-format", LogFormatText, "log format: text (key=value) or json, one line per event either way")
}

// ValidLogFormat checks a --log-format value.
func ValidLogFormat(format string) error {
	if format != LogFormatText && format != LogFormatJSON {
		return fmt.Errorf("--log-format: %q is not %s or %s", format, LogFormatText, LogFormatJSON)
	}
	return nil
}

// List collects values from repeated flags and comma-separated lists,
// trimming spaces and dropping empty items. Values set before parsing are the
// default: the first Set replaces them, later ones append.
type List struct {
	Values []string
	Given  bool // Set was called: the flag is on the command line
}

func (f *List) String() string { return strings.Join(f.Values, ",") }

// Set implements flag.Value.
func (f *List) Set(s string) error {
	if !f.Given {
		f.Values, f.Given = nil, true
	}
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			f.Values = append(f.Values, part)
		}
	}
	return nil
}

// ParseAddrPorts parses every value with ParseAddrPort and drops duplicates,
// keeping the first-seen order. Each bad value is one error, prefixed with
// flagName; all of them are returned joined.
func ParseAddrPorts(flagName string, values []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	seen := map[netip.AddrPort]bool{}
	var errs []error
	for _, v := range values {
		ap, err := ParseAddrPort(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flagName, err))
			continue
		}
		if !seen[ap] {
			seen[ap] = true
			out = append(out, ap)
		}
	}
	return out, errors.Join(errs...)
}

// ParseAddrPort accepts "ip", "ip:port", "ipv6" and "[ipv6]:port"; the port
// defaults to 53 and IPv4-mapped IPv6 addresses are unmapped. Host names are
// refused (a DNS server must not need DNS to start), and so are zones.
func ParseAddrPort(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		ip, ipErr := netip.ParseAddr(s)
		if ipErr != nil {
			return netip.AddrPort{}, fmt.Errorf("%q is not an ip or ip:port (a hostname is not accepted)", s)
		}
		ap = netip.AddrPortFrom(ip, DNSPort)
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%q: zoned addresses are not supported", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// ParseAddr accepts a plain IP address: no zone (a resolv.conf cannot use
// one); an IPv4-mapped IPv6 address is taken as the IPv4 address it maps.
func ParseAddr(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address (a hostname is not accepted)", s)
	}
	if ip.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q: zoned addresses are not supported", s)
	}
	return ip.Unmap(), nil
}

// ParseDomain validates a domain name (not the root) and returns it
// canonical: lower case, fully qualified.
func ParseDomain(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "." {
		return "", errors.New("must not be empty or the root")
	}
	if _, ok := dns.IsDomainName(s); !ok {
		return "", fmt.Errorf("%q is not a domain name", s)
	}
	return dns.CanonicalName(s), nil
}

// ValidHostPort checks a listen address "host:port" whose host is an IP,
// "localhost" or empty (every interface).
func ValidHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", s, err)
	}
	if _, err := netip.ParseAddr(host); err != nil && host != "" && host != "localhost" {
		return fmt.Errorf("%q: host must be an IP, localhost or empty", s)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: bad port %q", s, port)
	}
	return nil
}

// Bytes is a size flag: a plain number of bytes or one with a binary suffix
// (Ki, Mi, Gi, optionally followed by B), as Kubernetes quantities write
// memory: "16Mi", "512KiB", "1048576".
type Bytes int64

var byteUnits = []struct {
	suffix string
	shift  uint
}{{"Gi", 30}, {"Mi", 20}, {"Ki", 10}}

func (b *Bytes) String() string {
	for _, u := range byteUnits {
		if v := int64(*b); v != 0 && v%(1<<u.shift) == 0 {
			return strconv.FormatInt(v>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(*b), 10)
}

// Set implements flag.Value.
func (b *Bytes) Set(s string) error {
	num, shift := strings.TrimSuffix(strings.TrimSpace(s), "B"), uint(0)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, shift = n, u.shift
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 0 || v > (1<<62)>>shift {
		return fmt.Errorf("%q is not a size in bytes (e.g. 1048576, 512Ki, 16Mi)", s)
	}
	*b = Bytes(v << shift)
	return nil
}

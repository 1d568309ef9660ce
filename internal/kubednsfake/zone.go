// Package kubednsfake is a fake kube-dns: the behaviours of the CoreDNS that
// clusters run which matter to a DNS cache in front of it, on real sockets.
// The test helper internal/dnstest and the stand-in binary hack/fakedns both
// serve it; it never forwards anything anywhere.
//
// What it copies from CoreDNS 1.15:
//   - the cluster zone answered at once, authoritative, TTL 5, the SOA on
//     NXDOMAIN and NODATA (the kubernetes and file plugins);
//   - external zones answered after a latency, fixed or random in a range
//     (kube-dns forwarding to slower resolvers, or `erratic { delay }`);
//   - zones that never answer (`erratic { drop }`, a dead upstream);
//   - zones answering with very large records (a zone a pod controls);
//   - replies over UDP truncated to the client's buffer size (request.Scrub);
//   - one query at a time per TCP connection: the handler runs in the
//     connection's goroutine (miekg/dns serveTCPConn), so a slow answer holds
//     up every query behind it on that connection;
//   - CoreDNS's TCP server settings (unlimited queries per connection, 10 s
//     idle timeout).
package kubednsfake

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"

	"github.com/miekg/dns"
)

// ClusterTTL is the TTL CoreDNS's kubernetes plugin gives Service records.
const ClusterTTL = 5

// ClusterZone is a cluster's DNS zone as CoreDNS's kubernetes plugin answers
// it: kubernetes.default, kube-dns.kube-system and Services svc-<i>.default,
// each with an A, an AAAA and an _http._tcp SRV record. Names below existing
// ones answer NXDOMAIN, existing names without the asked type NODATA, both
// with the zone's SOA (RFC 2308), as the search-list expansions of a pod's
// lookups get from kube-dns.
type ClusterZone struct {
	origin  string
	soa     dns.RR
	records map[string][]dns.RR // by lower-case owner name
	exists  map[string]bool     // every owner and empty non-terminal
}

// NewClusterZone builds the zone origin (e.g. "cluster.local") holding
// services Services, every record with TTL ttl.
func NewClusterZone(origin string, services int, ttl uint32) (*ClusterZone, error) {
	origin = dns.CanonicalName(origin)
	if _, ok := dns.IsDomainName(origin); !ok || origin == "." {
		return nil, fmt.Errorf("cluster zone %q is not a domain", origin)
	}
	if services < 0 || services > 1<<16 {
		return nil, fmt.Errorf("%d Services is not in 0..65536", services)
	}
	z := &ClusterZone{origin: origin, records: map[string][]dns.RR{}, exists: map[string]bool{}}
	hdr := func(name string, t uint16) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	z.soa = soa(origin, ttl)
	z.add(z.soa)
	z.add(&dns.NS{Hdr: hdr(origin, dns.TypeNS), Ns: "ns.dns." + origin})
	z.add(&dns.A{Hdr: hdr("ns.dns."+origin, dns.TypeA), A: netip.MustParseAddr("10.96.0.10").AsSlice()})
	z.add(&dns.A{Hdr: hdr("kubernetes.default.svc."+origin, dns.TypeA), A: netip.MustParseAddr("10.96.0.1").AsSlice()})
	z.add(&dns.A{Hdr: hdr("kube-dns.kube-system.svc."+origin, dns.TypeA), A: netip.MustParseAddr("10.96.0.10").AsSlice()})
	for i := range services {
		name := ServiceName(i, origin)
		v4 := netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)})
		v6 := netip.AddrFrom16([16]byte{0: 0xfd, 3: 0x97, 14: byte(i >> 8), 15: byte(i)})
		z.add(&dns.A{Hdr: hdr(name, dns.TypeA), A: v4.AsSlice()})
		z.add(&dns.AAAA{Hdr: hdr(name, dns.TypeAAAA), AAAA: v6.AsSlice()})
		z.add(&dns.SRV{Hdr: hdr("_http._tcp."+name, dns.TypeSRV), Priority: 0, Weight: 100, Port: 80, Target: name})
	}
	return z, nil
}

// ServiceName is the name of the Service svc-<i> in namespace default of the
// cluster zone origin.
func ServiceName(i int, origin string) string {
	return fmt.Sprintf("svc-%d.default.svc.%s", i, dns.CanonicalName(origin))
}

// Origin is the zone's name, fully qualified.
func (z *ClusterZone) Origin() string { return z.origin }

func (z *ClusterZone) add(rr dns.RR) {
	name := strings.ToLower(rr.Header().Name)
	z.records[name] = append(z.records[name], rr)
	for n := name; dns.IsSubDomain(z.origin, n); {
		z.exists[n] = true
		i, end := dns.NextLabel(n, 0)
		if end {
			break
		}
		n = n[i:]
	}
}

// answer fills reply for q, a name inside the zone.
func (z *ClusterZone) answer(q dns.Question, reply *dns.Msg) bool {
	reply.Authoritative = true
	name := strings.ToLower(q.Name)
	if !z.exists[name] {
		reply.Rcode = dns.RcodeNameError
		reply.Ns = []dns.RR{z.soa}
		return true
	}
	for _, rr := range z.records[name] {
		if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
			reply.Answer = append(reply.Answer, withOwner(rr, q.Name))
		}
	}
	if len(reply.Answer) == 0 {
		reply.Ns = []dns.RR{z.soa} // NODATA
	}
	return true
}

// WriteMasterFile writes the zone as an RFC 1035 master file, SOA first, for
// CoreDNS's file plugin to serve the same records the fake does.
func (z *ClusterZone) WriteMasterFile(w io.Writer) error {
	names := make([]string, 0, len(z.records))
	for name := range z.records {
		names = append(names, name)
	}
	sort.Strings(names)
	if _, err := fmt.Fprintln(w, z.soa); err != nil {
		return err
	}
	for _, name := range names {
		for _, rr := range z.records[name] {
			if rr == z.soa {
				continue
			}
			if _, err := fmt.Fprintln(w, rr); err != nil {
				return err
			}
		}
	}
	return nil
}

// soa is a zone's SOA record; its minimum, the negative TTL, is ttl.
func soa(origin string, ttl uint32) dns.RR {
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: origin, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:  "ns.dns." + origin, Mbox: "hostmaster." + origin,
		Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: ttl,
	}
}

// withOwner copies rr with the query's spelling of its owner name, as
// servers keep the case a client asked with.
func withOwner(rr dns.RR, name string) dns.RR {
	c := dns.Copy(rr)
	c.Header().Name = name
	return c
}

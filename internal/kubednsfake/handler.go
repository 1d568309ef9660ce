package kubednsfake

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ExternalZone is a zone outside the cluster whose names kube-dns forwards to
// a resolver that answers after Latency. Every name has A 192.0.2.53 and AAAA
// 2001:db8::53 (the records CoreDNS's erratic plugin answers), TTL
// ExternalTTL; other types are NODATA.
type ExternalZone struct {
	Name    string
	Latency Latency
}

// ExternalTTL is the TTL of an external zone's answers.
const ExternalTTL = 30

// BigZone answers every TXT query for a name in it with one TXT record of
// Size bytes of text (in 255-byte strings), TTL BigTTL: a zone a pod
// controls, used to fill a cache's memory. Other types are NODATA.
type BigZone struct {
	Name string
	Size int
}

// BigTTL is the TTL of a big zone's answers: long, as a hostile zone would set it.
const BigTTL = 3600

// MaxBigSize keeps a big answer, with its header, question and OPT record,
// inside a 65,535-byte DNS message.
const MaxBigSize = 64000

// Config says which zones the fake serves; names in none of them are REFUSED,
// as CoreDNS refuses names outside its server blocks. The longest matching
// zone answers, so a zone may sit inside another.
type Config struct {
	Cluster  *ClusterZone   // answered at once; nil for none
	External []ExternalZone // answered after their latency
	Silent   []string       // never answered
	Big      []BigZone      // answered with huge TXT records
}

// Handler answers queries the way Config says; ServeDNS is a dns.HandlerFunc.
type Handler struct {
	zones map[string]zone // by lower-case origin
}

// zone answers one question for a name inside it; false means no reply.
type zone interface {
	answer(q dns.Question, reply *dns.Msg) bool
}

// New checks cfg and builds its handler.
func New(cfg Config) (*Handler, error) {
	h := &Handler{zones: map[string]zone{}}
	var errs []error
	add := func(name string, z zone) {
		origin := strings.ToLower(dns.CanonicalName(name))
		if _, ok := dns.IsDomainName(origin); !ok {
			errs = append(errs, fmt.Errorf("zone %q is not a domain", name))
			return
		}
		if _, dup := h.zones[origin]; dup {
			errs = append(errs, fmt.Errorf("zone %q given twice", name))
			return
		}
		h.zones[origin] = z
	}
	if cfg.Cluster != nil {
		add(cfg.Cluster.origin, cfg.Cluster)
	}
	for _, e := range cfg.External {
		add(e.Name, &externalZone{soa: soa(dns.CanonicalName(e.Name), ExternalTTL), latency: e.Latency})
	}
	for _, name := range cfg.Silent {
		add(name, silentZone{})
	}
	for _, b := range cfg.Big {
		if err := b.check(); err != nil {
			errs = append(errs, err)
			continue
		}
		add(b.Name, newBigZone(b))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return h, nil
}

// ServeDNS answers req. It runs in the TCP connection's goroutine, so a zone's
// latency holds up the queries behind it on that connection, as in CoreDNS.
// Replies over UDP are truncated to the client's buffer size (512 bytes
// without EDNS), as CoreDNS's request.Scrub does.
func (h *Handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	reply := new(dns.Msg)
	reply.SetReply(req)
	switch {
	case len(req.Question) != 1:
		reply.Rcode = dns.RcodeFormatError
	case req.Question[0].Qclass != dns.ClassINET:
		reply.Rcode = dns.RcodeRefused
	default:
		z := h.zoneOf(req.Question[0].Name)
		if z == nil {
			reply.Rcode = dns.RcodeRefused
		} else if !z.answer(req.Question[0], reply) {
			return
		}
	}
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		reply.SetEdns0(opt.UDPSize(), false)
		size = int(opt.UDPSize())
	}
	if w.LocalAddr().Network() == "udp" {
		reply.Truncate(size)
	}
	_ = w.WriteMsg(reply)
}

// zoneOf returns the longest zone holding name, nil when none does.
func (h *Handler) zoneOf(name string) zone {
	name = strings.ToLower(dns.CanonicalName(name))
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		if z, ok := h.zones[name[off:]]; ok {
			return z
		}
	}
	return h.zones["."]
}

type externalZone struct {
	soa     dns.RR
	latency Latency
}

var (
	externalA    = netip.MustParseAddr("192.0.2.53")
	externalAAAA = netip.MustParseAddr("2001:db8::53")
)

func (z *externalZone) answer(q dns.Question, reply *dns.Msg) bool {
	time.Sleep(z.latency.pick())
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: ExternalTTL}
	switch q.Qtype {
	case dns.TypeA:
		reply.Answer = append(reply.Answer, &dns.A{Hdr: hdr, A: externalA.AsSlice()})
	case dns.TypeAAAA:
		reply.Answer = append(reply.Answer, &dns.AAAA{Hdr: hdr, AAAA: externalAAAA.AsSlice()})
	default:
		reply.Ns = []dns.RR{z.soa}
	}
	return true
}

type silentZone struct{}

func (silentZone) answer(dns.Question, *dns.Msg) bool { return false }

func (b BigZone) check() error {
	if b.Size <= 0 || b.Size > MaxBigSize {
		return fmt.Errorf("big zone %q: size %d is not in 1..%d", b.Name, b.Size, MaxBigSize)
	}
	return nil
}

type bigZone struct {
	soa dns.RR
	txt []string // the record's strings, each at most 255 bytes
}

func newBigZone(b BigZone) *bigZone {
	z := &bigZone{soa: soa(dns.CanonicalName(b.Name), BigTTL)}
	for left := b.Size; left > 0; left -= 255 {
		n := min(left, 255)
		z.txt = append(z.txt, strings.Repeat(string(rune('a'+len(z.txt)%26)), n))
	}
	return z
}

func (z *bigZone) answer(q dns.Question, reply *dns.Msg) bool {
	reply.Authoritative = true
	if q.Qtype != dns.TypeTXT {
		reply.Ns = []dns.RR{z.soa}
		return true
	}
	reply.Answer = append(reply.Answer, z.record(q.Name))
	return true
}

func (z *bigZone) record(name string) dns.RR {
	return &dns.TXT{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: BigTTL}, Txt: z.txt}
}

// WriteBigZoneFile writes b as an RFC 1035 master file, the SOA and a
// wildcard TXT record, for CoreDNS's file plugin to answer every name in the
// zone the way the fake does.
func WriteBigZoneFile(w io.Writer, b BigZone) error {
	if err := b.check(); err != nil {
		return err
	}
	z := newBigZone(b)
	_, err := fmt.Fprintf(w, "%s\n%s\n", z.soa, z.record("*."+dns.CanonicalName(b.Name)))
	return err
}

package dnsengine

import (
	"encoding/binary"
	"net/netip"

	"github.com/miekg/dns"
)

// request is one parsed query. Byte slices point into the packet or into the
// request's own arrays, so a request is reused per socket without allocating.
type request struct {
	id      uint16
	flags   uint16 // the query's header flags; RD and CD are echoed in the reply
	qname   []byte // wire form, case as sent
	qtype   uint16
	qclass  uint16
	edns    bool
	do      bool
	udpSize int        // largest UDP reply the client accepts
	key     []byte     // cache key: lowercase qname, qtype, qclass, DO and CD flags
	client  netip.Addr // set for misses: whose share of the in-flight misses it holds
	// expired is, for a miss, the entry serve found expired but within
	// StaleMax: the answer to serve stale if the upstream cannot be reached.
	expired *entry

	keyBuf  [keyMaxLen]byte
	nameBuf [maxNameLen]byte // qname storage when parsed by parseFull
}

// parseResult tells the caller which path a packet takes.
type parseResult int

const (
	parsedFast     parseResult = iota // r holds a plain query
	needsFullParse                    // the header is readable but something is unusual: parseFull with dns.Msg
	dropPacket                        // not a query to answer: too short, or a response
)

// parseQuery parses the common query by hand: one question and at most an OPT RR
// without options. Everything else is left to parseFull.
func parseQuery(pkt []byte, r *request) parseResult {
	if len(pkt) < headerLen {
		return dropPacket
	}
	flags := binary.BigEndian.Uint16(pkt[2:])
	if flags>>8&flagQR != 0 {
		return dropPacket // never answer a response: that is how reflection loops start
	}
	if flags>>8&maskOpcode != 0 || binary.BigEndian.Uint16(pkt[4:]) != 1 ||
		binary.BigEndian.Uint16(pkt[6:]) != 0 || binary.BigEndian.Uint16(pkt[8:]) != 0 {
		return needsFullParse
	}
	arcount := binary.BigEndian.Uint16(pkt[10:])
	if arcount > 1 {
		return needsFullParse
	}
	off := headerLen
	for {
		if off >= len(pkt) {
			return needsFullParse
		}
		l := int(pkt[off])
		off += 1 + l
		if l == 0 {
			break
		}
		if l > 63 || off-headerLen >= maxNameLen {
			return needsFullParse // compression pointer, reserved label type, or too long
		}
	}
	if off+4 > len(pkt) {
		return needsFullParse
	}
	r.id = binary.BigEndian.Uint16(pkt)
	r.flags = flags
	r.qname = pkt[headerLen:off]
	r.qtype = binary.BigEndian.Uint16(pkt[off:])
	r.qclass = binary.BigEndian.Uint16(pkt[off+2:])
	off += 4
	r.edns, r.do, r.udpSize = false, false, minUDPReply
	if arcount == 1 {
		// OPT: root owner, TYPE 41, CLASS = payload size, TTL = ext-rcode|version|flags, RDLENGTH.
		if off+optRRLen > len(pkt) || pkt[off] != 0 || binary.BigEndian.Uint16(pkt[off+1:]) != dns.TypeOPT ||
			pkt[off+6] != 0 || binary.BigEndian.Uint16(pkt[off+9:]) != 0 {
			return needsFullParse // not OPT, EDNS version other than 0, or options
		}
		r.setEDNS(binary.BigEndian.Uint16(pkt[off+3:]), binary.BigEndian.Uint16(pkt[off+7:])&ednsFlagDO != 0)
		off += optRRLen
	}
	if off != len(pkt) || unsupportedType(r.qtype) {
		return needsFullParse
	}
	r.buildKey()
	return parsedFast
}

func (r *request) setEDNS(payload uint16, do bool) {
	r.edns, r.do = true, do
	r.udpSize = min(max(int(payload), minUDPReply), maxUDPReply)
}

// unsupportedType reports query types a forwarding cache refuses: zone transfers,
// transaction signatures and the other meta types (RFC 6895 3.1), except ANY.
func unsupportedType(t uint16) bool {
	return t == dns.TypeOPT || (t >= dns.TypeTKEY && t < dns.TypeANY)
}

// buildKey fills r.key from r.qname (ASCII-lowercased; length octets are at
// most 63 and so never change), r.qtype, r.qclass and the DO and CD flags:
// an answer to a query with checking disabled may hold data that validation
// would have rejected, so it must not answer a query without (RFC 4035 3.2.2).
func (r *request) buildKey() {
	k := r.keyBuf[:0]
	for _, b := range r.qname {
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		k = append(k, b)
	}
	flags := byte(0)
	if r.do {
		flags |= keyFlagDO
	}
	if r.checkingDisabled() {
		flags |= keyFlagCD
	}
	r.key = append(k, byte(r.qtype>>8), byte(r.qtype), byte(r.qclass>>8), byte(r.qclass), flags)
}

// The last byte of a cache key.
const (
	keyFlagDO = 1 << iota
	keyFlagCD
)

// checkingDisabled reports whether the query has the CD bit set.
func (r *request) checkingDisabled() bool { return byte(r.flags)&flagCD != 0 }

// limit is the largest reply r may get over protocol p.
func (r *request) limit(p proto) int {
	if p == protoTCP {
		return maxTCPReply
	}
	return r.udpSize
}

// parseFull parses a packet the hand-written parser declined, with miekg/dns.
// For a query the cache can answer it fills r and returns answerable; otherwise
// it returns the error reply to send.
func (e *Engine) parseFull(pkt, dst []byte, r *request, c *counters) (reply []byte, answerable bool) {
	r.qtype = 0 // counted as "other" unless a question is found
	var m dns.Msg
	if err := m.Unpack(pkt); err != nil {
		c.malformed.Add(1)
		return writeFormErr(dst, pkt), false
	}
	opt := m.IsEdns0()
	rcode := dns.RcodeSuccess
	switch {
	case m.Opcode != dns.OpcodeQuery:
		rcode = dns.RcodeNotImplemented
	case len(m.Question) != 1, countOPT(m.Extra) > 1: // RFC 6891 6.1.1: more than one OPT is FORMERR
		c.malformed.Add(1)
		rcode = dns.RcodeFormatError
	case opt != nil && opt.Version() != 0:
		rcode = dns.RcodeBadVers
	case unsupportedType(m.Question[0].Qtype):
		rcode = dns.RcodeRefused
	}
	if len(m.Question) > 0 {
		r.qtype = m.Question[0].Qtype
	}
	if rcode != dns.RcodeSuccess {
		resp := new(dns.Msg)
		resp.SetRcode(&m, rcode)
		// Recursion is what a standard query may ask for; a reply to another
		// opcode claims nothing about it.
		resp.RecursionAvailable = m.Opcode == dns.OpcodeQuery
		if opt != nil {
			resp.SetEdns0(ednsPayload, opt.Do())
		}
		out, err := resp.PackBuffer(dst[:cap(dst)]) // miekg sizes by len, not cap
		if err != nil {
			c.malformed.Add(1)
			return writeFormErr(dst, pkt), false
		}
		return out, false
	}
	q := m.Question[0]
	n, err := dns.PackDomainName(q.Name, r.nameBuf[:], 0, nil, false)
	if err != nil {
		c.malformed.Add(1)
		return writeFormErr(dst, pkt), false
	}
	r.id = m.Id
	r.flags = binary.BigEndian.Uint16(pkt[2:])
	r.qname = r.nameBuf[:n]
	r.qtype, r.qclass = q.Qtype, q.Qclass
	r.edns, r.do, r.udpSize = false, false, minUDPReply
	if opt != nil {
		r.setEDNS(opt.UDPSize(), opt.Do())
	}
	r.buildKey()
	return nil, true
}

// countOPT counts the OPT records among rrs.
func countOPT(rrs []dns.RR) int {
	n := 0
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			n++
		}
	}
	return n
}

// detach copies r so that it outlives the packet buffer it was parsed from.
func (r *request) detach() *request {
	d := new(request)
	*d = *r
	d.qname = append(d.nameBuf[:0], r.qname...)
	d.key = d.keyBuf[:len(r.key)]
	return d
}

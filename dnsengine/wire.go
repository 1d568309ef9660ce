package dnsengine

import (
	"encoding/binary"
	"errors"

	"github.com/miekg/dns"
)

// Wire-format constants for the hand-written hit path (RFC 1035 4.1, RFC 6891 6.1).
const (
	headerLen  = 12
	maxNameLen = 255
	// keyMaxLen is the longest cache key: qname, qtype, qclass, DO and CD flags.
	keyMaxLen = maxNameLen + 5
	// maxUDPReply caps UDP replies whatever the client advertises; larger answers
	// are truncated (whole records, TC set) so that the client retries over TCP.
	maxUDPReply = 4096
	minUDPReply = 512
	// ednsPayload is the UDP payload size we advertise, the DNS flag day 2020 value.
	ednsPayload = 1232
	maxTCPReply = dns.MaxMsgSize
	optRRLen    = 11

	// Header flag bits, high byte (byte 2) and low byte (byte 3).
	flagQR     = 0x80
	maskOpcode = 0x78
	flagTC     = 0x02
	flagRD     = 0x01
	flagRA     = 0x80
	flagCD     = 0x10
	maskRcode  = 0x0f
	ednsFlagDO = 0x8000
)

// answer is a reply in wire format as the upstream gave it, prepared for patching:
// ID 0, no OPT RR, the question name lowercase.
type answer struct {
	wire    []byte
	ttlOffs []uint16 // every RR's TTL field; nil when TTLs are passed through unchanged
}

// writeAnswer builds in dst the reply to r from a: the query's ID, flags and
// name case, every TTL set to ttl (when a.ttlOffs is set), an OPT RR when the
// query had one. A reply longer than limit becomes a truncated one.
func writeAnswer(dst []byte, a *answer, r *request, ttl uint32, limit int) []byte {
	size := len(a.wire)
	if r.edns {
		size += optRRLen
	}
	if size > limit {
		return writeTruncated(dst, a, r, ttl, limit)
	}
	return patchAnswer(dst, a, r, ttl)
}

// patchAnswer builds in dst the whole reply to r from a; see writeAnswer.
func patchAnswer(dst []byte, a *answer, r *request, ttl uint32) []byte {
	dst = append(dst[:0], a.wire...)
	binary.BigEndian.PutUint16(dst, r.id)
	dst[2] = dst[2]&^flagRD | byte(r.flags>>8)&flagRD
	dst[3] = dst[3]&^flagCD | byte(r.flags)&flagCD
	copy(dst[headerLen:], r.qname)
	for _, off := range a.ttlOffs {
		binary.BigEndian.PutUint32(dst[off:], ttl)
	}
	if r.edns {
		dst = appendOPT(dst, r.do)
		binary.BigEndian.PutUint16(dst[10:], binary.BigEndian.Uint16(dst[10:])+1)
	}
	return dst
}

// writeTruncated builds in dst the reply to r from a cut to fit limit as
// miekg/dns (*Msg).Truncate (and so CoreDNS) cuts: as many whole records as
// fit, TC set, the OPT RR kept. A question-only reply would leave clients
// without TCP fallback (musl before 1.2.4) with no address at all; a partial
// answer is usable. Over-size replies are rare, so this path may allocate.
func writeTruncated(dst []byte, a *answer, r *request, ttl uint32, limit int) []byte {
	full := patchAnswer(make([]byte, 0, len(a.wire)+optRRLen), a, r, ttl)
	var m dns.Msg
	if err := m.Unpack(full); err == nil {
		m.Truncate(limit)
		out, err := m.PackBuffer(dst[:cap(dst)]) // miekg sizes by len, not cap
		if err == nil && len(out) <= limit {
			return out
		}
	}
	// Not expected, as a.wire was packed by miekg/dns; the client can still retry over TCP.
	return writeQuestionReply(dst, r, int(a.wire[3]&maskRcode), true)
}

// writeQuestionReply builds in dst a reply holding only r's question: SERVFAIL,
// or a truncated answer (TC set) that sends the client to TCP.
func writeQuestionReply(dst []byte, r *request, rcode int, truncated bool) []byte {
	b2 := byte(flagQR) | byte(r.flags>>8)&flagRD
	if truncated {
		b2 |= flagTC
	}
	arcount := byte(0)
	if r.edns {
		arcount = 1
	}
	dst = binary.BigEndian.AppendUint16(dst[:0], r.id)
	dst = append(dst, b2, flagRA|byte(r.flags)&flagCD|byte(rcode)&maskRcode, 0, 1, 0, 0, 0, 0, 0, arcount)
	dst = append(dst, r.qname...)
	dst = binary.BigEndian.AppendUint16(dst, r.qtype)
	dst = binary.BigEndian.AppendUint16(dst, r.qclass)
	if r.edns {
		dst = appendOPT(dst, r.do)
	}
	return dst
}

// writeFormErr builds in dst a header-only FORMERR reply to a packet whose
// header is readable but whose body is not.
func writeFormErr(dst, pkt []byte) []byte {
	return append(dst[:0], pkt[0], pkt[1], flagQR|pkt[2]&(maskOpcode|flagRD), dns.RcodeFormatError,
		0, 0, 0, 0, 0, 0, 0, 0)
}

// appendOPT appends our OPT RR: version 0, no options, the DO flag echoed (RFC 3225).
func appendOPT(dst []byte, do bool) []byte {
	flags := byte(0)
	if do {
		flags = ednsFlagDO >> 8
	}
	return append(dst, 0, byte(dns.TypeOPT>>8), byte(dns.TypeOPT), byte(ednsPayload>>8), byte(ednsPayload&0xff),
		0, 0, flags, 0, 0, 0)
}

var errBadWire = errors.New("malformed message")

// ttlOffsets returns the offset of the TTL field of every resource record in
// msg, a message packed by miekg/dns (so its structure is already known good).
func ttlOffsets(msg []byte) ([]uint16, error) {
	if len(msg) < headerLen {
		return nil, errBadWire
	}
	qd := int(binary.BigEndian.Uint16(msg[4:]))
	rrs := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
	offs := make([]uint16, 0, rrs)
	off := headerLen
	var err error
	for range qd {
		if off, err = skipName(msg, off); err != nil {
			return nil, err
		}
		off += 4
	}
	for range rrs {
		if off, err = skipName(msg, off); err != nil {
			return nil, err
		}
		if off+10 > len(msg) {
			return nil, errBadWire
		}
		offs = append(offs, uint16(off+4))
		off += 10 + int(binary.BigEndian.Uint16(msg[off+8:]))
	}
	if off != len(msg) {
		return nil, errBadWire
	}
	return offs, nil
}

// skipName returns the offset just past the (possibly compressed) name at off.
func skipName(msg []byte, off int) (int, error) {
	for off < len(msg) {
		l := int(msg[off])
		switch l & 0xc0 {
		case 0x00:
			off += 1 + l
			if l == 0 {
				return off, nil
			}
		case 0xc0:
			return off + 2, nil
		default:
			return 0, errBadWire
		}
	}
	return 0, errBadWire
}

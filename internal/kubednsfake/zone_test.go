package kubednsfake

import (
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// parseZone reads a master file back into records.
func parseZone(t *testing.T, text, origin string) []dns.RR {
	t.Helper()
	zp := dns.NewZoneParser(strings.NewReader(text), origin, "")
	var rrs []dns.RR
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		rrs = append(rrs, rr)
	}
	if err := zp.Err(); err != nil {
		t.Fatalf("parse master file: %v\n%s", err, text)
	}
	return rrs
}

// TestWriteMasterFile checks that the master file holds exactly the zone's
// records, SOA first, so CoreDNS's file plugin serves what the fake serves.
func TestWriteMasterFile(t *testing.T) {
	z, err := NewClusterZone("cluster.local", 2, ClusterTTL)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := z.WriteMasterFile(&b); err != nil {
		t.Fatal(err)
	}
	rrs := parseZone(t, b.String(), z.Origin())
	if len(rrs) == 0 || rrs[0].Header().Rrtype != dns.TypeSOA {
		t.Fatalf("master file does not start with the SOA:\n%s", b.String())
	}
	var got, want []string
	for _, rr := range rrs {
		got = append(got, rr.String())
	}
	for _, rrset := range z.records {
		for _, rr := range rrset {
			want = append(want, rr.String())
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("master file records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(want) != 2+3+2*3 { // SOA, NS; ns.dns, kubernetes, kube-dns; 2 Services x A, AAAA, SRV
		t.Errorf("%d records, want 11", len(want))
	}
}

func TestWriteBigZoneFile(t *testing.T) {
	var b strings.Builder
	if err := WriteBigZoneFile(&b, BigZone{Name: "big.test", Size: 1000}); err != nil {
		t.Fatal(err)
	}
	rrs := parseZone(t, b.String(), "big.test.")
	if len(rrs) != 2 || rrs[0].Header().Rrtype != dns.TypeSOA {
		t.Fatalf("want the SOA and one wildcard TXT record, got %v", rrs)
	}
	txt, ok := rrs[1].(*dns.TXT)
	if !ok || txt.Hdr.Name != "*.big.test." || len(strings.Join(txt.Txt, "")) != 1000 {
		t.Errorf("second record %.100v, want a *.big.test. TXT of 1000 bytes", rrs[1])
	}
	if err := WriteBigZoneFile(&b, BigZone{Name: "big.test"}); err == nil {
		t.Error("a big zone of size 0: no error")
	}
}

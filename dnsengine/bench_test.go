package dnsengine

import (
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func BenchmarkCacheLookup(b *testing.B) {
	const names = 10000
	c := newCache(2*names, DefaultCacheMaxBytes, time.Hour) // room to spare: uneven shards must not evict
	now := time.Now().UnixNano()
	keys := make([][]byte, names)
	for i := range keys {
		var r request
		if parseQuery(packQuery(b, 1, fmt.Sprintf("svc%d.ns.svc.cluster.local.", i), dns.TypeA), &r) != parsedFast {
			b.Fatal("not a fast-path query")
		}
		keys[i] = append([]byte(nil), r.key...)
		c.put(keys[i], newEntry(answer{}, 30, now), now)
	}
	var seed atomic.Uint32
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seed.Add(7919))
		for pb.Next() {
			if c.get(keys[i%names]) == nil {
				b.Fatal("miss")
			}
			i++
		}
	})
}

// BenchmarkServeHit measures the whole hit path: query bytes in, reply bytes out.
func BenchmarkServeHit(b *testing.B) {
	e, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Upstream: newFakeUpstream()})
	if err != nil {
		b.Fatal(err)
	}
	plain := packQuery(b, 0x1234, "www.Example.", dns.TypeA)
	edns := question("www.Example.", dns.TypeA)
	edns.SetEdns0(1232, false)
	ednsPkt, err := edns.Pack()
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		pkt  []byte
	}{{"plain", plain}, {"edns", ednsPkt}} {
		b.Run(bc.name, func(b *testing.B) {
			r := new(request)
			dst := make([]byte, 0, maxUDPReply)
			if _, o := e.serve(bc.pkt, dst, r, protoUDP, e.shared, e.nowNanos()); o == needsUpstream {
				e.answerMiss(r.detach(), protoUDP, e.shared) // warm the cache
			}
			now := e.nowNanos()
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.pkt)))
			b.ResetTimer()
			for b.Loop() {
				reply, o := e.serve(bc.pkt, dst, r, protoUDP, e.shared, now)
				if o != replyNow || len(reply) < headerLen {
					b.Fatal("not a hit")
				}
			}
		})
	}
}

// BenchmarkServeUDPLoopback measures real round trips of cached answers over
// loopback UDP, several clients in parallel.
func BenchmarkServeUDPLoopback(b *testing.B) {
	te := startEngine(b, func(c *Config) { c.Now = nil })
	te.query(b, "udp", question("www.example.", dns.TypeA))
	pkt := packQuery(b, 0x4242, "www.example.", dns.TypeA)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("udp", te.udp)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		buf := make([]byte, 512)
		for pb.Next() {
			if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
				b.Error(err)
				return
			}
			if _, err := c.Write(pkt); err != nil {
				b.Error(err)
				return
			}
			if _, err := c.Read(buf); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// TestCacheHitsDoNotAllocate holds the hit path to what BenchmarkServeHit
// reports: a cached answer is written without a single allocation.
func TestCacheHitsDoNotAllocate(t *testing.T) { // not parallel: AllocsPerRun forbids it
	e, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Upstream: newFakeUpstream()})
	if err != nil {
		t.Fatal(err)
	}
	edns := question("www.Example.", dns.TypeA)
	edns.SetEdns0(1232, true)
	ednsPkt, err := edns.Pack()
	if err != nil {
		t.Fatal(err)
	}
	for name, pkt := range map[string][]byte{"plain": packQuery(t, 0x1234, "www.Example.", dns.TypeA), "edns": ednsPkt} {
		t.Run(name, func(t *testing.T) {
			r := new(request)
			dst := make([]byte, 0, maxUDPReply)
			if _, o := e.serve(pkt, dst, r, protoUDP, e.shared, e.nowNanos()); o == needsUpstream {
				e.answerMiss(r.detach(), protoUDP, e.shared)
			}
			now := e.nowNanos()
			allocs := testing.AllocsPerRun(100, func() {
				if _, o := e.serve(pkt, dst, r, protoUDP, e.shared, now); o != replyNow {
					t.Fatal("not a hit")
				}
			})
			if allocs != 0 {
				t.Fatalf("a cache hit allocates %v times", allocs)
			}
		})
	}
}

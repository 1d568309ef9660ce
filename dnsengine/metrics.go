package dnsengine

import (
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

type proto int

const (
	protoUDP proto = iota
	protoTCP
	numProtos
)

var protoNames = [numProtos]string{"udp", "tcp"}

// The qtype and rcode label values are a fixed set, so that the request counter
// is a plain array indexed on the hit path.
var (
	countedQtypes = []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeCNAME, dns.TypeHTTPS, dns.TypeMX, dns.TypeNS,
		dns.TypePTR, dns.TypeSOA, dns.TypeSRV, dns.TypeSVCB, dns.TypeTXT}
	countedRcodes = []int{dns.RcodeSuccess, dns.RcodeFormatError, dns.RcodeServerFailure, dns.RcodeNameError,
		dns.RcodeNotImplemented, dns.RcodeRefused}
)

const (
	numQtypeLabels = 12 // countedQtypes + "other"
	numRcodeLabels = 7  // countedRcodes + "other"
)

func qtypeIndex(t uint16) int {
	for i, c := range countedQtypes {
		if c == t {
			return i
		}
	}
	return len(countedQtypes)
}

// counters are the engine's counts. Each UDP socket has its own (written by
// one goroutine, so the atomics are uncontended); TCP and background work share one.
type counters struct {
	requests   [numProtos][numQtypeLabels][numRcodeLabels]atomic.Uint64
	hits       atomic.Uint64
	misses     atomic.Uint64
	stale      atomic.Uint64
	prefetch   atomic.Uint64
	coalesced  atomic.Uint64
	malformed  atomic.Uint64
	invalid    atomic.Uint64
	overflow   atomic.Uint64
	tcpRefused atomic.Uint64
	tooLarge   atomic.Uint64
	// clientLimited counts, per limit, queries or connections refused
	// because their client was at its own share.
	clientLimited [numClientLimits]atomic.Uint64
	_             [64]byte // no false sharing with the next socket's counters
}

// The per-client limits, a label of client_limited_total.
type clientLimit int

const (
	limitInflightMisses clientLimit = iota
	limitTCPConns
	numClientLimits
)

var clientLimitNames = [numClientLimits]string{"inflight_misses", "tcp_connections"}

// countReply counts one reply by protocol, query type and the reply's rcode
// (countedRcodes holds rcodes 0 to 5 in order, so the rcode is its own index).
func (c *counters) countReply(p proto, qtype uint16, reply []byte) {
	rcode := len(countedRcodes)
	if len(reply) >= headerLen && int(reply[3]&maskRcode) < len(countedRcodes) {
		rcode = int(reply[3] & maskRcode)
	}
	c.requests[p][qtypeIndex(qtype)][rcode].Add(1)
}

// metrics exports the sum of every counters set through a custom collector, so
// the hit path never touches a prometheus vector.
type metrics struct {
	mu       sync.Mutex
	sets     []*counters
	cache    *cache
	duration prometheus.Histogram

	requestsDesc, hitsDesc, missesDesc, staleDesc, prefetchDesc, coalescedDesc, malformedDesc,
	invalidDesc, overflowDesc, tcpRefusedDesc, tooLargeDesc, clientLimitedDesc, entriesDesc, bytesDesc *prometheus.Desc
}

func newMetrics(namespace string, c *cache) *metrics {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	return &metrics{
		cache: c,
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "miss_duration_seconds",
			Help:      "Time to answer a query that missed the cache (hits are not timed, to keep them cheap).",
			Buckets:   []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		requestsDesc:   desc("requests_total", "DNS queries answered, by protocol, query type and response code.", "proto", "qtype", "rcode"),
		hitsDesc:       desc("cache_hits_total", "Queries answered from a fresh cache entry."),
		missesDesc:     desc("cache_misses_total", "Queries that needed the upstream."),
		staleDesc:      desc("cache_stale_total", "Queries answered from an expired entry because the upstream failed (RFC 8767)."),
		prefetchDesc:   desc("cache_prefetch_total", "Popular entries refreshed before they expired."),
		coalescedDesc:  desc("coalesced_total", "Cache misses that joined an identical upstream request already in flight."),
		malformedDesc:  desc("malformed_total", "Client packets dropped or answered FORMERR because they were not valid queries."),
		invalidDesc:    desc("upstream_invalid_total", "Upstream replies rejected because their question did not match."),
		overflowDesc:   desc("miss_overflow_total", "Cache misses answered SERVFAIL because MaxInflightMisses were being resolved already."),
		tcpRefusedDesc: desc("tcp_refused_total", "TCP connections closed at once because MaxTCPConns were open."),
		tooLargeDesc:   desc("cache_too_large_total", "Answers served but not cached because they were larger than MaxCachedAnswer."),
		clientLimitedDesc: desc("client_limited_total",
			"Cache misses answered SERVFAIL, or TCP connections closed, because their client address was at its own limit.", "limit"),
		entriesDesc: desc("cache_entries", "Entries in the cache, stale ones included."),
		bytesDesc:   desc("cache_bytes", "What the cache's entries count against its byte budget: answers, keys and per-entry bookkeeping."),
	}
}

// newCounters returns a counters set that the collector includes.
func (m *metrics) newCounters() *counters {
	c := new(counters)
	m.mu.Lock()
	m.sets = append(m.sets, c)
	m.mu.Unlock()
	return c
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.requestsDesc, m.hitsDesc, m.missesDesc, m.staleDesc, m.prefetchDesc,
		m.coalescedDesc, m.malformedDesc, m.invalidDesc, m.overflowDesc, m.tcpRefusedDesc, m.tooLargeDesc,
		m.clientLimitedDesc, m.entriesDesc, m.bytesDesc} {
		ch <- d
	}
	m.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	var sum struct {
		requests                                                                                     [numProtos][numQtypeLabels][numRcodeLabels]uint64
		hits, misses, stale, prefetch, coalesced, malformed, invalid, overflow, tcpRefused, tooLarge uint64
		clientLimited                                                                                [numClientLimits]uint64
	}
	m.mu.Lock()
	for _, c := range m.sets {
		for p := range c.requests {
			for q := range c.requests[p] {
				for r := range c.requests[p][q] {
					sum.requests[p][q][r] += c.requests[p][q][r].Load()
				}
			}
		}
		sum.hits += c.hits.Load()
		sum.misses += c.misses.Load()
		sum.stale += c.stale.Load()
		sum.prefetch += c.prefetch.Load()
		sum.coalesced += c.coalesced.Load()
		sum.malformed += c.malformed.Load()
		sum.invalid += c.invalid.Load()
		sum.overflow += c.overflow.Load()
		sum.tcpRefused += c.tcpRefused.Load()
		sum.tooLarge += c.tooLarge.Load()
		for l := range c.clientLimited {
			sum.clientLimited[l] += c.clientLimited[l].Load()
		}
	}
	m.mu.Unlock()
	for p := range sum.requests {
		for q := range sum.requests[p] {
			for r, v := range sum.requests[p][q] {
				if v != 0 {
					ch <- prometheus.MustNewConstMetric(m.requestsDesc, prometheus.CounterValue, float64(v),
						protoNames[p], qtypeLabel(q), rcodeLabel(r))
				}
			}
		}
	}
	for _, c := range []struct {
		d *prometheus.Desc
		v uint64
	}{{m.hitsDesc, sum.hits}, {m.missesDesc, sum.misses}, {m.staleDesc, sum.stale}, {m.prefetchDesc, sum.prefetch},
		{m.coalescedDesc, sum.coalesced}, {m.malformedDesc, sum.malformed}, {m.invalidDesc, sum.invalid},
		{m.overflowDesc, sum.overflow}, {m.tcpRefusedDesc, sum.tcpRefused}, {m.tooLargeDesc, sum.tooLarge}} {
		ch <- prometheus.MustNewConstMetric(c.d, prometheus.CounterValue, float64(c.v))
	}
	for l, v := range sum.clientLimited {
		ch <- prometheus.MustNewConstMetric(m.clientLimitedDesc, prometheus.CounterValue, float64(v), clientLimitNames[l])
	}
	entries, bytes := m.cache.size()
	ch <- prometheus.MustNewConstMetric(m.entriesDesc, prometheus.GaugeValue, float64(entries))
	ch <- prometheus.MustNewConstMetric(m.bytesDesc, prometheus.GaugeValue, float64(bytes))
	m.duration.Collect(ch)
}

func qtypeLabel(i int) string {
	if i < len(countedQtypes) {
		return dns.TypeToString[countedQtypes[i]]
	}
	return "other"
}

func rcodeLabel(i int) string {
	if i < len(countedRcodes) {
		return dns.RcodeToString[countedRcodes[i]]
	}
	return "other"
}

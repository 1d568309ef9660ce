package dnsengine

import (
	"hash/maphash"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// evictionSample is how many entries an insert into a full shard looks at to
// choose a victim (random-sample eviction: no global lock, no list to maintain).
const evictionSample = 8

// entry is one cached answer. It is immutable once stored (a refresh replaces
// it), except for the counters that drive prefetch and eviction.
type entry struct {
	answer
	ttl           uint32 // seconds, as stored
	expires       int64  // unix nanoseconds
	prefetchAfter int64  // unix nanoseconds: hits from then on refresh the entry
	hits          atomic.Uint32
	refreshing    atomic.Bool
	refreshFailed atomic.Int64 // unix nanoseconds of the last failed refresh after expiry, 0 = none
}

func newEntry(a answer, ttl uint32, now int64) *entry {
	life := int64(ttl) * int64(time.Second)
	window := max(life/10, int64(time.Second)) // prefetch in the last 10% of the TTL, at least 1s
	return &entry{answer: a, ttl: ttl, expires: now + life, prefetchAfter: now + life - window}
}

// remaining is the TTL left at now, in whole seconds rounded up.
func (en *entry) remaining(now int64) uint32 {
	left := en.expires - now
	if left <= 0 {
		return 0
	}
	return uint32((left + int64(time.Second) - 1) / int64(time.Second))
}

// staleNow reports whether en may be answered stale at now without asking
// the upstream: expired, within staleMax, and its last refresh failed less than
// staleRefreshTime ago.
func (en *entry) staleNow(now, staleMax int64) bool {
	return now >= en.expires && now < en.expires+staleMax && now < en.refreshFailed.Load()+int64(staleRefreshTime)
}

// hit records a hit and reports whether it should trigger a prefetch; the
// caller that gets true owns the refresh. Counting stops at the threshold, so a
// hot entry's cache line is no longer written by every core.
func (en *entry) hit(now int64, prefetchHits uint32) bool {
	if prefetchHits == 0 {
		return false
	}
	h := en.hits.Load()
	if h < prefetchHits {
		h = en.hits.Add(1)
	}
	return h >= prefetchHits && now >= en.prefetchAfter && !en.refreshing.Load() &&
		en.refreshing.CompareAndSwap(false, true)
}

// cache is a sharded map from cache key to entry.
type cache struct {
	shards   []shard
	mask     uint64
	seed     maphash.Seed
	perShard int
	staleMax int64 // nanoseconds an expired entry is kept for serve-stale
}

type shard struct {
	mu      sync.RWMutex
	entries map[string]*entry
	_       [40]byte // keep neighbouring shards' locks off one cache line
}

// newCache makes a cache of at most size entries, with a power of two shards,
// at least four per core so that cores rarely meet on one lock.
func newCache(size int, staleMax time.Duration) *cache {
	n := 1 << bits.Len(uint(4*runtime.GOMAXPROCS(0)-1))
	for n > 1 && n > size {
		n /= 2
	}
	c := &cache{
		shards:   make([]shard, n),
		mask:     uint64(n - 1),
		seed:     maphash.MakeSeed(),
		perShard: size / n,
		staleMax: int64(staleMax),
	}
	for i := range c.shards {
		c.shards[i].entries = make(map[string]*entry)
	}
	return c
}

func (c *cache) shardFor(key []byte) *shard {
	return &c.shards[maphash.Bytes(c.seed, key)&c.mask]
}

// get returns the entry for key, fresh or expired, or nil.
func (c *cache) get(key []byte) *entry {
	s := c.shardFor(key)
	s.mu.RLock()
	en := s.entries[string(key)]
	s.mu.RUnlock()
	return en
}

// put stores en under key, evicting another entry when the shard is full.
func (c *cache) put(key []byte, en *entry, now int64) {
	s := c.shardFor(key)
	s.mu.Lock()
	if _, ok := s.entries[string(key)]; !ok && len(s.entries) >= c.perShard {
		c.evict(s, now)
	}
	s.entries[string(key)] = en
	s.mu.Unlock()
}

// evict removes one entry of s (locked): the first one seen that is past
// serving even stale, else the sampled one with the fewest hits, then the
// earliest expiry.
func (c *cache) evict(s *shard, now int64) {
	var victimKey string
	var victim *entry
	seen := 0
	for k, en := range s.entries {
		if now >= en.expires+c.staleMax {
			delete(s.entries, k)
			return
		}
		if victim == nil || en.hits.Load() < victim.hits.Load() ||
			(en.hits.Load() == victim.hits.Load() && en.expires < victim.expires) {
			victimKey, victim = k, en
		}
		if seen++; seen == evictionSample {
			break
		}
	}
	delete(s.entries, victimKey)
}

// len counts the entries, stale ones included.
func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.entries)
		s.mu.RUnlock()
	}
	return n
}

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

// entryOverhead approximates what an entry costs besides its answer and key:
// the entry struct, its TTL offsets' slice header, the map slot and the key
// string's header. It makes the byte budget hold for many tiny answers too.
const entryOverhead = 160

// cost is what en, stored under a key of keyLen bytes, counts against the
// cache's byte budget.
func (en *entry) cost(keyLen int) int64 {
	return int64(len(en.wire) + 2*len(en.ttlOffs) + keyLen + entryOverhead)
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

// cache is a sharded map from cache key to entry, bounded by entries and by
// bytes (see entry.cost), stale entries included.
type cache struct {
	shards        []shard
	mask          uint64
	seed          maphash.Seed
	perShard      int
	bytesPerShard int64
	staleMax      int64 // nanoseconds an expired entry is kept for serve-stale
}

type shard struct {
	mu      sync.RWMutex
	entries map[string]*entry
	bytes   int64    // the entries' cost
	_       [32]byte // keep neighbouring shards' locks off one cache line
}

// newCache makes a cache of at most size entries and maxBytes, with a power of
// two shards, at least four per core so that cores rarely meet on one lock.
func newCache(size int, maxBytes int64, staleMax time.Duration) *cache {
	n := 1 << bits.Len(uint(4*runtime.GOMAXPROCS(0)-1))
	for n > 1 && n > size {
		n /= 2
	}
	c := &cache{
		shards:        make([]shard, n),
		mask:          uint64(n - 1),
		seed:          maphash.MakeSeed(),
		perShard:      size / n,
		bytesPerShard: maxBytes / int64(n),
		staleMax:      int64(staleMax),
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

// put stores en under key, evicting other entries while the shard is over
// its entries or its bytes. An entry too big for a shard is not stored.
func (c *cache) put(key []byte, en *entry, now int64) {
	cost := en.cost(len(key))
	if cost > c.bytesPerShard {
		return
	}
	s := c.shardFor(key)
	s.mu.Lock()
	if old, ok := s.entries[string(key)]; ok {
		s.bytes -= old.cost(len(key))
	}
	s.entries[string(key)] = en
	s.bytes += cost
	for (len(s.entries) > c.perShard || s.bytes > c.bytesPerShard) && c.evict(s, now, key) {
	}
	s.mu.Unlock()
}

// remove drops the entry for key, if any.
func (c *cache) remove(key []byte) {
	s := c.shardFor(key)
	s.mu.Lock()
	if old, ok := s.entries[string(key)]; ok {
		s.bytes -= old.cost(len(key))
		delete(s.entries, string(key))
	}
	s.mu.Unlock()
}

// evict removes one entry of s (locked) other than the one under keep: the
// first one seen that is past serving even stale, else the sampled one with
// the fewest hits, then the earliest expiry. It reports whether it found one.
func (c *cache) evict(s *shard, now int64, keep []byte) bool {
	var victimKey string
	var victim *entry
	seen := 0
	for k, en := range s.entries {
		if k == string(keep) {
			continue
		}
		if now >= en.expires+c.staleMax {
			victimKey, victim = k, en
			break
		}
		if victim == nil || en.hits.Load() < victim.hits.Load() ||
			(en.hits.Load() == victim.hits.Load() && en.expires < victim.expires) {
			victimKey, victim = k, en
		}
		if seen++; seen == evictionSample {
			break
		}
	}
	if victim == nil {
		return false
	}
	s.bytes -= victim.cost(len(victimKey))
	delete(s.entries, victimKey)
	return true
}

// size counts the entries, stale ones included, and their cost in bytes.
func (c *cache) size() (entries int, bytes int64) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		entries += len(s.entries)
		bytes += s.bytes
		s.mu.RUnlock()
	}
	return entries, bytes
}

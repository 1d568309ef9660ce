package dnsengine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Upstream answers queries the cache cannot. *forward.Forwarder implements it.
type Upstream interface {
	Exchange(ctx context.Context, req *dns.Msg) (*dns.Msg, error)
}

// Defaults applied by New to zero-valued Config fields. Exported so that
// command-line flags can show the same values.
const (
	DefaultCacheSize = 10000
	// DefaultCacheMaxBytes keeps the cache, stale entries included, well
	// inside the node cache's memory limit whatever answers it holds.
	DefaultCacheMaxBytes = 16 << 20
	// DefaultMaxCachedAnswer is the largest answer cached (wire bytes); larger
	// ones are served, not kept. Ordinary answers are far below it (100 A
	// records are 1.7 KB); it stops a zone anyone controls from filling the
	// cache with 60 KB TXT records.
	DefaultMaxCachedAnswer = 16 << 10
	DefaultMaxTTL          = 30 * time.Second
	DefaultMaxNegativeTTL  = 5 * time.Second
	DefaultStaleMax        = time.Hour // StaleMax has no implicit default: 0 switches serve-stale off.
	DefaultUpstreamTimeout = 2 * time.Second
	DefaultPrefetchHits    = 2
	DefaultTCPIdleTimeout  = 10 * time.Second
	DefaultTCPWriteTimeout = 2 * time.Second
	// DefaultStaleAnswerTimeout answers stale before a client with resolv.conf
	// "timeout:1" gives up (RFC 8767's client response timer, scaled down).
	DefaultStaleAnswerTimeout = 500 * time.Millisecond
	// DefaultMaxInflightMisses bounds the memory of misses waiting for the
	// upstream (a goroutine each, ~6 KB): about 25 MB.
	DefaultMaxInflightMisses = 4096
	// DefaultMaxInflightMissesPerClient is more than the seeds' Go client's
	// 200 concurrent lookups, so one pod's burst of distinct names is served,
	// but a sixteenth of the engine's, so one pod cannot take them all.
	DefaultMaxInflightMissesPerClient = 256
	DefaultMaxTCPConns                = 1000
	DefaultMaxTCPConnsPerClient       = 64
)

// Config configures an Engine. Zero values mean the documented default.
type Config struct {
	// Listen holds the addresses served, each on UDP and TCP. Port 0 is
	// allowed (tests): UDP is bound first, TCP on the same port.
	Listen []netip.AddrPort
	// Upstream resolves cache misses. Required.
	Upstream Upstream
	// CacheSize is the maximum number of cached answers, default 10000.
	CacheSize int
	// CacheMaxBytes bounds the cache's memory (answers, keys and the
	// bookkeeping of each entry), default 16 MiB.
	CacheMaxBytes int64
	// MaxCachedAnswer is the largest answer, in wire bytes, that is cached;
	// larger ones are served but not cached. Default 16 KiB, at most 65535.
	MaxCachedAnswer int
	// MaxTTL caps the TTL of positive answers, default 30s.
	MaxTTL time.Duration
	// MaxNegativeTTL caps the TTL of NXDOMAIN/NODATA answers (SOA minimum), default 5s.
	MaxNegativeTTL time.Duration
	// StaleMax is how long past expiry an entry may be served when the upstream
	// fails (RFC 8767). 0 = off; callers usually pass DefaultStaleMax (1h).
	StaleMax time.Duration
	// StaleAnswerTimeout is how long a miss that could be answered stale waits
	// for the upstream before it is (the resolution goes on and refreshes the
	// cache), default 500ms.
	StaleAnswerTimeout time.Duration
	// UpstreamTimeout bounds one upstream resolution, default 2s.
	UpstreamTimeout time.Duration
	// MaxInflightMisses bounds the cache misses being resolved at once (each
	// holds a goroutine); beyond it queries are answered SERVFAIL, so that a
	// flood of unique names cannot exhaust memory. Default 4096.
	MaxInflightMisses int
	// MaxInflightMissesPerClient bounds one client address's share of them,
	// so that one pod's flood cannot make other pods' misses fail. Default 256.
	MaxInflightMissesPerClient int
	// FreeBind lets the listeners bind addresses the host does not have yet
	// (IP_FREEBIND), so that an address can be added only once it is served.
	FreeBind bool
	// UDPSockets is the number of SO_REUSEPORT sockets per UDP listen address,
	// default GOMAXPROCS.
	UDPSockets int
	// PrefetchHits is how many hits in its life make an entry refreshed in the
	// background shortly before it expires, default 2; negative = no prefetch.
	PrefetchHits int
	// TCPIdleTimeout closes a TCP connection that sends no query for this long, default 10s.
	TCPIdleTimeout time.Duration
	// TCPWriteTimeout bounds writing one reply on a TCP connection, default 2s.
	TCPWriteTimeout time.Duration
	// MaxTCPConns bounds the open TCP connections; more are closed at once
	// (clients retry or use UDP), default 1000.
	MaxTCPConns int
	// MaxTCPConnsPerClient bounds one client address's open TCP connections, default 64.
	MaxTCPConnsPerClient int
	// Registerer receives the engine's metrics; nil = no metrics.
	Registerer prometheus.Registerer
	// Namespace prefixes every metric name, e.g. "localdns_nodecache".
	Namespace string
	// Logger receives one line per event (never per query); nil = discard.
	Logger *slog.Logger
	// Now is the clock; nil = time.Now.
	Now func() time.Time
}

// withDefaults validates cfg and returns a copy with defaults applied.
func (cfg Config) withDefaults() (Config, error) {
	var errs []error
	if len(cfg.Listen) == 0 {
		errs = append(errs, errors.New("no listen address"))
	}
	for _, addr := range cfg.Listen {
		if !addr.IsValid() {
			errs = append(errs, errors.New("invalid listen address"))
		}
	}
	if cfg.Upstream == nil {
		errs = append(errs, errors.New("no upstream"))
	}
	if cfg.MaxCachedAnswer > dns.MaxMsgSize {
		errs = append(errs, fmt.Errorf("max cached answer %d is over a DNS message's %d bytes", cfg.MaxCachedAnswer, dns.MaxMsgSize))
	}
	for name, v := range map[string]int64{
		"cache size":                     int64(cfg.CacheSize),
		"cache max bytes":                cfg.CacheMaxBytes,
		"max cached answer":              int64(cfg.MaxCachedAnswer),
		"max inflight misses per client": int64(cfg.MaxInflightMissesPerClient),
		"max TCP conns per client":       int64(cfg.MaxTCPConnsPerClient),
		"max TTL":                        int64(cfg.MaxTTL),
		"max negative TTL":               int64(cfg.MaxNegativeTTL),
		"stale max":                      int64(cfg.StaleMax),
		"stale answer timeout":           int64(cfg.StaleAnswerTimeout),
		"max inflight misses":            int64(cfg.MaxInflightMisses),
		"upstream timeout":               int64(cfg.UpstreamTimeout),
		"UDP sockets":                    int64(cfg.UDPSockets),
		"TCP idle timeout":               int64(cfg.TCPIdleTimeout),
		"TCP write timeout":              int64(cfg.TCPWriteTimeout),
		"max TCP conns":                  int64(cfg.MaxTCPConns),
	} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, fmt.Errorf("dnsengine config: %w", err)
	}
	cfg.CacheSize = cmp.Or(cfg.CacheSize, DefaultCacheSize)
	cfg.CacheMaxBytes = cmp.Or(cfg.CacheMaxBytes, DefaultCacheMaxBytes)
	cfg.MaxCachedAnswer = cmp.Or(cfg.MaxCachedAnswer, DefaultMaxCachedAnswer)
	cfg.MaxInflightMissesPerClient = cmp.Or(cfg.MaxInflightMissesPerClient, DefaultMaxInflightMissesPerClient)
	cfg.MaxTCPConnsPerClient = cmp.Or(cfg.MaxTCPConnsPerClient, DefaultMaxTCPConnsPerClient)
	cfg.MaxTTL = cmp.Or(cfg.MaxTTL, DefaultMaxTTL)
	cfg.MaxNegativeTTL = cmp.Or(cfg.MaxNegativeTTL, DefaultMaxNegativeTTL)
	cfg.UpstreamTimeout = cmp.Or(cfg.UpstreamTimeout, DefaultUpstreamTimeout)
	cfg.StaleAnswerTimeout = cmp.Or(cfg.StaleAnswerTimeout, DefaultStaleAnswerTimeout)
	cfg.MaxInflightMisses = cmp.Or(cfg.MaxInflightMisses, DefaultMaxInflightMisses)
	cfg.UDPSockets = cmp.Or(cfg.UDPSockets, runtime.GOMAXPROCS(0))
	cfg.PrefetchHits = cmp.Or(cfg.PrefetchHits, DefaultPrefetchHits)
	cfg.TCPIdleTimeout = cmp.Or(cfg.TCPIdleTimeout, DefaultTCPIdleTimeout)
	cfg.TCPWriteTimeout = cmp.Or(cfg.TCPWriteTimeout, DefaultTCPWriteTimeout)
	cfg.MaxTCPConns = cmp.Or(cfg.MaxTCPConns, DefaultMaxTCPConns)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg, nil
}

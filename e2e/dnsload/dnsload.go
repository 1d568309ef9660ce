// Package dnsload is the seeds-style DNS load client: N goroutines look a
// name up with net.Resolver.LookupIPAddr for a fixed time, and the result
// counts errors and slow lookups and summarises the latencies.
package dnsload

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// UniqueMark in a host name stands for the lookup's number in the run (1,
// 2, ...): every lookup then asks a name no cache has seen, so each one
// reaches kube-dns. The C client gaiload takes the same mark.
const UniqueMark = "%d"

// Config is one load run.
type Config struct {
	// Host is the name looked up (resolved with the resolver's search path).
	// It may hold UniqueMark once.
	Host string
	// Concurrency is the number of goroutines looking up at once.
	Concurrency int
	// Duration is how long new lookups start; running ones finish.
	Duration time.Duration
	// MaxLookups bounds the run's lookups even when they are fast.
	MaxLookups int64
	// Slow is the latency at or above which a lookup counts as slow.
	Slow time.Duration
	// LookupTimeout abandons one lookup (counted as an error).
	LookupTimeout time.Duration
	// Rate caps the lookups started per second over all goroutines, for a
	// steady load (the stub's footprint at a given QPS); 0 means no cap.
	Rate float64
	// Resolver does the lookups; nil means the pure-Go resolver reading
	// /etc/resolv.conf, the way a CGO_ENABLED=0 client in a pod does.
	Resolver *net.Resolver
	// OwnResolvers gives each goroutine a Resolver of its own, set up as
	// Resolver. One Resolver coalesces concurrent lookups of a name into
	// one resolution (singleflight), as an application sharing
	// net.DefaultResolver does: one lost query then slows every lookup
	// waiting on it. With OwnResolvers each lookup is its own resolution,
	// which a check counting one slow lookup per lost query needs.
	OwnResolvers bool
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.Host == "":
		return errors.New("host is empty")
	case strings.Count(c.Host, "%") > 1 || strings.Contains(c.Host, "%") && !strings.Contains(c.Host, UniqueMark):
		return fmt.Errorf("host %q: the only %% it may hold is one %s", c.Host, UniqueMark)
	case c.Concurrency < 1:
		return fmt.Errorf("concurrency %d: want >= 1", c.Concurrency)
	case c.Duration <= 0:
		return fmt.Errorf("duration %s: want > 0", c.Duration)
	case c.MaxLookups < 1:
		return fmt.Errorf("max lookups %d: want >= 1", c.MaxLookups)
	case c.Slow <= 0:
		return fmt.Errorf("slow threshold %s: want > 0", c.Slow)
	case c.LookupTimeout <= 0:
		return fmt.Errorf("lookup timeout %s: want > 0", c.LookupTimeout)
	case c.Rate < 0 || c.Rate > 1e6:
		return fmt.Errorf("rate %g: want 0 (no cap) to 1e6 lookups/s", c.Rate)
	}
	return nil
}

// Result summarises a run. Latencies cover every lookup, failed ones too:
// a lookup that fails after 5 s is as bad for the user as a slow answer.
type Result struct {
	Host        string        `json:"host"`
	Concurrency int           `json:"concurrency"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	Lookups     int64         `json:"lookups"`
	Errors      int64         `json:"errors"`
	// FirstError is one error's text, to say what kind they were.
	FirstError string `json:"first_error,omitempty"`
	// ErrorKinds counts the errors by kind: the resolver's reason without
	// the name ("server misbehaving" is SERVFAIL, "no such host" NXDOMAIN,
	// "i/o timeout" no answer), or gai_strerror's text for the C client.
	ErrorKinds map[string]int64 `json:"error_kinds,omitempty"`
	Min        time.Duration    `json:"min_ns"`
	Mean       time.Duration    `json:"mean_ns"`
	P99        time.Duration    `json:"p99_ns"`
	Max        time.Duration    `json:"max_ns"`
	Slow       time.Duration    `json:"slow_threshold_ns"`
	SlowCount  int64            `json:"slow"`
	Over1s     int64            `json:"over_1s"`
	Over5s     int64            `json:"over_5s"`
	// SelfStarved counts the lookups of 1 s or more that are under 1 s
	// less the client thread's own wait for a CPU meanwhile: the client
	// was kept off the CPU, DNS was not slow. Only the C client measures
	// it (per thread, /proc/thread-self/schedstat); Go's goroutines move
	// between threads, and its count is 0.
	SelfStarved int64 `json:"self_starved"`
	// StarvedErrors counts the failed lookups during which the client
	// thread waited 1 s or more for a CPU (the pods' per-server timeout):
	// glibc gives up on a server whose deadline passed while the thread
	// waited, without reading a reply that may be there. C client only.
	StarvedErrors int64 `json:"starved_errors"`
	// First is the time from the run's start until every goroutine's first
	// lookup had finished: what an application that resolves names the
	// moment it starts waits at most for its first answers.
	First time.Duration `json:"first_ns"`
	// SlowAt are the start times of the slow lookups, from the run's start
	// (the earliest MaxSlowAt): when, in a drill, the slow ones began.
	SlowAt []time.Duration `json:"slow_at_ns,omitempty"`
	// StartUnixNano is the run's start on the wall clock, which a pod
	// shares with its node: SlowAt's origin.
	StartUnixNano int64 `json:"start_unix_ns"`
}

// DNSOver1s are the lookups of 1 s or more that the client's own waits
// for a CPU do not explain.
func (r Result) DNSOver1s() int64 { return r.Over1s - r.SelfStarved }

// DNSErrors are the failed lookups that the client's own waits for a CPU
// do not explain.
func (r Result) DNSErrors() int64 { return r.Errors - r.StarvedErrors }

// MaxSlowAt bounds Result.SlowAt.
const MaxSlowAt = 100

// String is the one-line summary the seeds' tool printed, and the errors
// by kind.
func (r Result) String() string {
	s := fmt.Sprintf("host=%s c=%d elapsed=%s lookups=%d errors=%d min=%s avg=%s p99=%s max=%s >=%s:%d >=1s:%d >=5s:%d first=%s",
		r.Host, r.Concurrency, r.Elapsed.Round(time.Millisecond), r.Lookups, r.Errors,
		r.Min.Round(time.Microsecond), r.Mean.Round(time.Microsecond), r.P99.Round(time.Microsecond),
		r.Max.Round(time.Microsecond), r.Slow, r.SlowCount, r.Over1s, r.Over5s, r.First.Round(time.Microsecond))
	if r.SelfStarved > 0 {
		s += fmt.Sprintf(" self-starved(>=1s):%d", r.SelfStarved)
	}
	if r.StarvedErrors > 0 {
		s += fmt.Sprintf(" self-starved(errors):%d", r.StarvedErrors)
	}
	for _, kind := range slices.Sorted(maps.Keys(r.ErrorKinds)) {
		s += fmt.Sprintf(" [%s]:%d", kind, r.ErrorKinds[kind])
	}
	return s
}

// errorKind is what an error says without the name looked up and the
// addresses ("read udp 10.244.0.5:33697->10.96.0.10:53: i/o timeout"),
// which make every message of a unique-name run different.
func errorKind(err error) string {
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) {
		return err.Error()
	}
	if i := strings.LastIndex(dnsErr.Err, ": "); i >= 0 {
		return dnsErr.Err[i+2:]
	}
	return dnsErr.Err
}

// Run runs the load until cfg.Duration passes, cfg.MaxLookups have started
// or ctx ends.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	shared := cfg.Resolver
	if shared == nil {
		shared = &net.Resolver{PreferGo: true}
	}
	resolverOf := func() *net.Resolver {
		if !cfg.OwnResolvers {
			return shared
		}
		return &net.Resolver{PreferGo: shared.PreferGo, StrictErrors: shared.StrictErrors, Dial: shared.Dial}
	}
	var (
		started    atomic.Int64
		errCount   atomic.Int64
		firstError atomic.Pointer[string]
		wg         sync.WaitGroup
	)
	perWorker := make([][]time.Duration, cfg.Concurrency)
	firstPerWorker := make([]time.Duration, cfg.Concurrency)
	slowAtPerWorker := make([][]time.Duration, cfg.Concurrency)
	kindsPerWorker := make([]map[string]int64, cfg.Concurrency)
	prefix, suffix, unique := strings.Cut(cfg.Host, UniqueMark)
	begin := time.Now()
	deadline := begin.Add(cfg.Duration)
	rctx, stopRate := context.WithDeadline(ctx, deadline)
	defer stopRate()
	next := paced(rctx, cfg.Rate)
	for w := range cfg.Concurrency {
		wg.Go(func() {
			resolver := resolverOf()
			kinds := map[string]int64{}
			kindsPerWorker[w] = kinds
			for next() && time.Now().Before(deadline) {
				n := started.Add(1)
				if n > cfg.MaxLookups {
					break
				}
				host := cfg.Host
				if unique {
					host = fmt.Sprint(prefix, n, suffix)
				}
				lctx, cancel := context.WithTimeout(ctx, cfg.LookupTimeout)
				t0 := time.Now()
				_, err := resolver.LookupIPAddr(lctx, host)
				took := time.Since(t0)
				perWorker[w] = append(perWorker[w], took)
				if len(perWorker[w]) == 1 {
					firstPerWorker[w] = time.Since(begin)
				}
				if took >= cfg.Slow && len(slowAtPerWorker[w]) < MaxSlowAt {
					slowAtPerWorker[w] = append(slowAtPerWorker[w], t0.Sub(begin))
				}
				cancel()
				if err != nil {
					errCount.Add(1)
					kinds[errorKind(err)]++
					msg := err.Error()
					firstError.CompareAndSwap(nil, &msg)
				}
			}
		})
	}
	wg.Wait()

	res := Result{Host: cfg.Host, Concurrency: cfg.Concurrency, Elapsed: time.Since(begin),
		Errors: errCount.Load(), Slow: cfg.Slow, StartUnixNano: begin.UnixNano()}
	if p := firstError.Load(); p != nil {
		res.FirstError = *p
	}
	for _, kinds := range kindsPerWorker {
		for kind, n := range kinds {
			if res.ErrorKinds == nil {
				res.ErrorKinds = map[string]int64{}
			}
			res.ErrorKinds[kind] += n
		}
	}
	res.First = slices.Max(firstPerWorker)
	if slowAt := slices.Sorted(slices.Values(slices.Concat(slowAtPerWorker...))); len(slowAt) > 0 {
		res.SlowAt = slowAt[:min(len(slowAt), MaxSlowAt)]
	}
	all := slices.Concat(perWorker...)
	res.summarise(all)
	return res, ctx.Err()
}

// paced returns the gate each lookup passes first: false once ctx ends;
// with a rate, it also hands out one start per 1/rate.
func paced(ctx context.Context, rate float64) func() bool {
	if rate == 0 {
		return func() bool { return ctx.Err() == nil }
	}
	ticks := time.NewTicker(time.Duration(float64(time.Second) / rate))
	context.AfterFunc(ctx, ticks.Stop)
	return func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-ticks.C:
			return ctx.Err() == nil
		}
	}
}

// summarise fills the latency fields from every lookup's latency.
func (r *Result) summarise(latencies []time.Duration) {
	r.Lookups = int64(len(latencies))
	if len(latencies) == 0 {
		return
	}
	slices.Sort(latencies)
	var sum time.Duration
	for _, l := range latencies {
		sum += l
		if l >= r.Slow {
			r.SlowCount++
		}
		if l >= time.Second {
			r.Over1s++
		}
		if l >= 5*time.Second {
			r.Over5s++
		}
	}
	r.Min, r.Max = latencies[0], latencies[len(latencies)-1]
	r.Mean = sum / time.Duration(len(latencies))
	// Nearest-rank p99: the smallest latency at or above 99% of lookups.
	rank := (len(latencies)*99 + 99) / 100
	r.P99 = latencies[rank-1]
}

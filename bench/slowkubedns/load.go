package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// loadConfig is the slow-kube-dns load: pods resolving external names, which
// kube-dns answers slowly, while another pod's cluster-name misses are timed.
type loadConfig struct {
	server              netip.AddrPort
	duration            time.Duration
	externalOutstanding int // ext.test queries in flight at once
	externalRate        int // at most, per second
	clusterRate         int // cluster names timed per second
	timeout             time.Duration
}

// defaultLoad: 40 outstanding names at 200 ms each is 200/s.
var defaultLoad = loadConfig{
	duration:            20 * time.Second,
	externalOutstanding: 40,
	externalRate:        200,
	clusterRate:         50,
	timeout:             5 * time.Second,
}

// maxDuration bounds every load.
const maxDuration = 10 * time.Minute

func (c loadConfig) check() error {
	switch {
	case c.duration <= 0 || c.duration > maxDuration:
		return fmt.Errorf("-duration %v is not in (0, %v]", c.duration, maxDuration)
	case c.externalOutstanding <= 0 || c.externalRate <= 0 || c.clusterRate <= 0 || c.timeout <= 0:
		return errors.New("-external-outstanding, -external-rate, -cluster-rate and -timeout must be positive")
	case c.externalRate > 100_000 || c.clusterRate > 10_000:
		return errors.New("-external-rate is at most 100000 and -cluster-rate at most 10000 a second")
	case float64(c.clusterRate)*c.duration.Seconds() > services:
		return fmt.Errorf("-cluster-rate x -duration asks more than the %d Services: names would repeat and hit the cache", services)
	}
	return nil
}

// LoadResult is one server's figures under the slow-kube-dns load.
type LoadResult struct {
	Kind     string  `json:"kind"` // "load"
	Name     string  `json:"name"`
	Seconds  float64 `json:"seconds"`
	Cluster  *Tally  `json:"cluster"`  // the timed cluster-name misses
	External *Tally  `json:"external"` // the ext.test names
}

func (r *LoadResult) summary() string {
	return fmt.Sprintf("%s: cluster names: %v\n%s: external names: %v", r.Name, r.Cluster, r.Name, r.External)
}

// runLoad runs the load for cfg.duration; it returns once every query has
// its reply or has timed out.
func runLoad(ctx context.Context, cfg loadConfig) *LoadResult {
	res := &LoadResult{Kind: "load", Cluster: newTally(), External: newTally()}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()

	var wg sync.WaitGroup
	wg.Go(func() { timeClusterNames(ctx, cfg.server, cfg.clusterRate, cfg.timeout, res.Cluster) })
	pace := time.NewTicker(time.Second / time.Duration(cfg.externalRate))
	defer pace.Stop()
	var next atomic.Int64
	for i := range cfg.externalOutstanding {
		src := externalClients[i%len(externalClients)]
		wg.Go(func() { askExternalNames(ctx, cfg, src, pace.C, &next, res.External) })
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Cluster.finish()
	res.External.finish()
	return res
}

// askExternalNames asks new ext.test names one after another from one UDP
// socket at src, each when pace ticks, until ctx ends.
func askExternalNames(ctx context.Context, cfg loadConfig, src netip.Addr, pace <-chan time.Time, next *atomic.Int64, t *Tally) {
	conn, err := dial("udp", src, cfg.server)
	if err != nil {
		t.record(nil, 0, err)
		return
	}
	defer conn.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case <-pace:
		}
		name := fmt.Sprintf("e%d-%s.%s", next.Add(1), runID, externalZone)
		t.record(ask(conn, name, dns.TypeA, cfg.timeout))
	}
}

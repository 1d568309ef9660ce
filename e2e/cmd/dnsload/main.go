// Command dnsload is the seeds-style DNS load client, for a Go client pod:
//
//	dnsload -host nginx-service.default -c 200 -d 30s -slow 5s
//
// It prints a one-line summary, or JSON with -json, and exits 0 whatever
// the lookups' outcome: judging the numbers is the caller's job.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/localdns/localdns/e2e/dnsload"
)

type options struct {
	cfg     dnsload.Config
	jsonOut bool
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("dnsload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.cfg.Host, "host", "", "name to look up (the resolver applies its search path)")
	fs.IntVar(&o.cfg.Concurrency, "c", 200, "concurrent lookups")
	fs.DurationVar(&o.cfg.Duration, "d", 30*time.Second, "how long to start new lookups")
	fs.Int64Var(&o.cfg.MaxLookups, "max-lookups", 10_000_000, "stop after this many lookups")
	fs.DurationVar(&o.cfg.Slow, "slow", 5*time.Second, "count lookups at or above this latency")
	fs.DurationVar(&o.cfg.LookupTimeout, "lookup-timeout", 30*time.Second, "abandon one lookup after this (counted as an error)")
	fs.Float64Var(&o.cfg.Rate, "rate", 0, "lookups started per second over all goroutines; 0 for no cap")
	fs.BoolVar(&o.cfg.OwnResolvers, "own-resolvers", false, "give each goroutine its own resolver, so that no two lookups share one resolution")
	fs.BoolVar(&o.jsonOut, "json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := o.cfg.Validate(); err != nil {
		return options{}, err
	}
	return o, nil
}

func main() {
	o, err := parseOptions(os.Args[1:], os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsload:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := dnsload.Run(ctx, o.cfg)
	if o.jsonOut {
		_ = json.NewEncoder(os.Stdout).Encode(res)
	} else {
		fmt.Println(res)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsload:", err)
		os.Exit(1)
	}
}

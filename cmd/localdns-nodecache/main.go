// Command localdns-nodecache is the node-local caching DNS forwarder; see
// docs/nodecache.md. `localdns-nodecache cleanup` removes its node setup.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/localdns/localdns/internal/version"
	"github.com/localdns/localdns/nodecache"
)

func main() {
	cfg, err := nodecache.Parse(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "localdns-nodecache: %v\n(see --help)\n", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "localdns-nodecache")
	logger.Info("starting", "version", version.Version)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := nodecache.Execute(ctx, cfg, logger); err != nil {
		logger.Error("exiting", "err", err)
		os.Exit(1)
	}
}

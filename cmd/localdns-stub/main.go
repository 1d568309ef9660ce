// Command localdns-stub is the in-pod DNS stub for musl (Alpine) pods; see
// docs/stub.md. `localdns-stub probe` is its exec startup/readiness probe.
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
	"github.com/localdns/localdns/sidecar"
)

func main() {
	cfg, err := sidecar.Parse(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "localdns-stub:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	if cfg.Command == sidecar.CommandProbe {
		result, err := sidecar.Probe(ctx, cfg.Probe)
		if err != nil {
			fmt.Fprintln(os.Stderr, "localdns-stub probe: failed:", err)
			os.Exit(1)
		}
		fmt.Println("localdns-stub probe: ok:", result)
		return
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "localdns-stub")
	logger.Info("starting", "version", version.Version)
	if err := sidecar.Run(ctx, cfg, logger); err != nil {
		logger.Error("exiting", "err", err)
		os.Exit(1)
	}
}

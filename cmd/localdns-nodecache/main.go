// Command localdns-nodecache is the node-local caching DNS forwarder; see
// docs/nodecache.md. `localdns-nodecache cleanup` removes its node setup.
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/localdns/localdns/internal/cli"
	"github.com/localdns/localdns/nodecache"
)

func main() {
	cfg, err := nodecache.Parse(os.Args[1:], os.Stderr)
	cli.ExitOnParseError("localdns-nodecache", err)
	ctx, stop := cli.SignalContext()
	defer stop()
	cli.Serve(ctx, "localdns-nodecache", cfg.LogFormat, func(ctx context.Context, logger *slog.Logger) error {
		return nodecache.Execute(ctx, cfg, logger)
	})
}

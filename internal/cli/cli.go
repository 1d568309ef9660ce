// Package cli is what the localdns commands' main functions share: the exit
// status and the one message of a bad command line, the signals that stop
// them, the logger --log-format chooses, and how a long-running part is
// started, logged and ended.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/localdns/localdns/internal/flagutil"
	"github.com/localdns/localdns/internal/version"
)

// Exit statuses.
const (
	ExitFailure = 1 // the part failed while running
	ExitUsage   = 2 // bad command line
)

// ParseStatus says whether a command ends after parsing its command line,
// and with which status: 0 after -h/--help (the usage was printed),
// ExitUsage for any other error, which it writes to stderr.
func ParseStatus(command string, err error, stderr io.Writer) (status int, exit bool) {
	switch {
	case err == nil:
		return 0, false
	case errors.Is(err, flag.ErrHelp):
		return 0, true
	default:
		fmt.Fprintf(stderr, "%s: %v (see --help)\n", command, err)
		return ExitUsage, true
	}
}

// ExitOnParseError ends the process unless parsing succeeded; see ParseStatus.
func ExitOnParseError(command string, err error) {
	if status, exit := ParseStatus(command, err, os.Stderr); exit {
		os.Exit(status)
	}
}

// SignalContext is cancelled by SIGTERM (kubelet stopping the container) or
// an interrupt; stop releases the signals.
func SignalContext() (ctx context.Context, stop context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
}

// NewLogger is the logger of every part: to stderr, one line per event, in
// format (flagutil.LogFormatText or LogFormatJSON, validated by the parser),
// labelled with the component.
func NewLogger(format, component string) *slog.Logger {
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if format == flagutil.LogFormatJSON {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	return slog.New(h).With("component", component)
}

// Serve logs the start with the version on NewLogger's logger, runs until
// run returns (it drains and returns nil once ctx ends), and exits
// ExitFailure when it returns an error.
func Serve(ctx context.Context, component, logFormat string, run func(context.Context, *slog.Logger) error) {
	logger := NewLogger(logFormat, component)
	logger.Info("starting", "version", version.Version)
	if err := run(ctx, logger); err != nil {
		logger.Error("exiting", "err", err)
		os.Exit(ExitFailure)
	}
}

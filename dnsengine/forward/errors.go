package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
)

// Errors returned by Exchange (wrapped; test with errors.Is).
var (
	// ErrNoZone means no zone matches the query name and there is no "." zone.
	ErrNoZone = errors.New("no zone matches the query name")
	// ErrNoQuestion means the request has an empty question section.
	ErrNoQuestion = errors.New("forward: query has no question")
	// ErrClosed means the Forwarder was closed.
	ErrClosed = errors.New("forward: forwarder closed")
	// ErrAllDown means every server of the zone is marked down: the query
	// was not sent; the servers' probes bring them back.
	ErrAllDown = errors.New("every server of the zone is marked down")
)

// Errors of one attempt, internal to the package.
var (
	// errConnClosed fails the queries waiting on a TCP connection that closed or broke.
	errConnClosed = errors.New("connection closed")
	// errConnGone means a connection had closed before the query was sent on it.
	errConnGone = fmt.Errorf("%w before the query was sent", errConnClosed)
	// errFailureRcode marks a reply with RCODE SERVFAIL or REFUSED.
	errFailureRcode = errors.New("server replied")
	// errMalformed fails a query whose TCP reply could not be parsed.
	errMalformed = errors.New("malformed reply")
	// errIDsExhausted means a TCP connection has 65536 queries outstanding.
	errIDsExhausted = errors.New("no free message ID on connection")
)

// reason labels upstream_errors_total. The set is fixed.
type reason int

const (
	reasonTimeout reason = iota
	reasonRefused
	reasonClosed
	reasonMismatch
	reasonServfail
	reasonOther
	numReasons
)

var reasonNames = [numReasons]string{"timeout", "refused", "closed", "mismatch", "servfail", "other"}

func (r reason) String() string { return reasonNames[r] }

// classify maps the error of a failed attempt to its reason.
func classify(err error) reason {
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return reasonRefused
	case errors.Is(err, errConnClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return reasonClosed
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout():
		return reasonTimeout
	case errors.Is(err, errFailureRcode):
		return reasonServfail
	default:
		return reasonOther
	}
}

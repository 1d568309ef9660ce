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
	// errConnClosed means the server closed a connection before the reply.
	errConnClosed = errors.New("connection closed by the server")
	// errUnacked means the peer stopped acknowledging what was sent (TCP_USER_TIMEOUT).
	errUnacked = errors.New("peer stopped acknowledging")
	// errDialTimeout means a TCP dial got no answer within DialTimeout.
	errDialTimeout = errors.New("dial timed out")
	// errFailureRcode marks a reply with RCODE SERVFAIL or REFUSED.
	errFailureRcode = errors.New("server replied")
	// errMalformed fails a query whose TCP reply could not be parsed.
	errMalformed = errors.New("malformed reply")
)

// reason labels upstream_errors_total. The set is fixed.
type reason int

const (
	reasonTimeout reason = iota
	reasonRefused
	reasonUnreachable
	reasonClosed
	reasonMismatch
	reasonServfail
	reasonOther
	numReasons
)

var reasonNames = [numReasons]string{"timeout", "refused", "unreachable", "closed", "mismatch", "servfail", "other"}

func (r reason) String() string { return reasonNames[r] }

// classify maps the error of a failed attempt to its reason.
func classify(err error) reason {
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return reasonRefused
	case errors.Is(err, errUnacked), errors.Is(err, errDialTimeout), errors.Is(err, syscall.ETIMEDOUT):
		return reasonUnreachable
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

// wrapConnErr names what failed on a connection, keeping err for classify.
func wrapConnErr(op string, err error) error {
	if errors.Is(err, syscall.ETIMEDOUT) {
		return fmt.Errorf("%s: %w: %w", op, errUnacked, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Package match checks that a DNS reply answers a query: the check the
// engine makes of its upstream's replies, the forwarder of every datagram and
// frame it reads, and the stub's probe of the stub's reply. Names compare
// case-insensitively: some servers do not echo the query's case.
package match

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// Question checks that reply is a response holding exactly the question q.
func Question(q *dns.Question, reply *dns.Msg) error {
	switch {
	case !reply.Response:
		return errors.New("not a response (QR bit clear)")
	case len(reply.Question) != 1:
		return fmt.Errorf("%d questions, want 1", len(reply.Question))
	}
	got := &reply.Question[0]
	if got.Qtype != q.Qtype || got.Qclass != q.Qclass || !strings.EqualFold(got.Name, q.Name) {
		return fmt.Errorf("question %s, want %s", got.String(), q.String())
	}
	return nil
}

// Reply checks that reply answers query: the same ID, and Question.
func Reply(query, reply *dns.Msg) error {
	if reply.Id != query.Id {
		return fmt.Errorf("ID %d, want %d", reply.Id, query.Id)
	}
	if len(query.Question) != 1 {
		return fmt.Errorf("the query has %d questions", len(query.Question))
	}
	return Question(&query.Question[0], reply)
}

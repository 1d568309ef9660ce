package match

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestReply(t *testing.T) {
	t.Parallel()
	query := new(dns.Msg)
	query.SetQuestion("www.Example.", dns.TypeA)
	reply := func(edit func(*dns.Msg)) *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(query)
		if edit != nil {
			edit(m)
		}
		return m
	}
	tests := []struct {
		name  string
		reply *dns.Msg
		want  string // substring of the error; "" = matches
	}{
		{"the reply", reply(nil), ""},
		{"other case", reply(func(m *dns.Msg) { m.Question[0].Name = "WWW.EXAMPLE." }), ""},
		{"other ID", reply(func(m *dns.Msg) { m.Id++ }), "ID"},
		{"not a response", reply(func(m *dns.Msg) { m.Response = false }), "not a response"},
		{"no question", reply(func(m *dns.Msg) { m.Question = nil }), "0 questions"},
		{"two questions", reply(func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), "2 questions"},
		{"other name", reply(func(m *dns.Msg) { m.Question[0].Name = "other.example." }), "question"},
		{"other type", reply(func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAAAA }), "question"},
		{"other class", reply(func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), "question"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Reply(query, tt.reply)
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Reply: %v, want %q", err, tt.want)
			}
		})
	}
}

package sidecar

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// responder is a UDP server that answers each datagram with reply(query):
// a stand-in for something on the stub's port that is not a working stub.
func responder(t *testing.T, reply func(query []byte) []byte) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := reply(buf[:n]); out != nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// edited returns a responder function that answers with the query, edited.
func edited(edit func(reply *dns.Msg)) func([]byte) []byte {
	return func(query []byte) []byte {
		q := new(dns.Msg)
		if err := q.Unpack(query); err != nil {
			return nil
		}
		m := new(dns.Msg)
		m.SetReply(q)
		edit(m)
		out, err := m.Pack()
		if err != nil {
			return nil
		}
		return out
	}
}

func TestProbe(t *testing.T) {
	node := startFake(t, ipv4, "node cache", nodeCacheAnswer)
	up := startStub(t, testConfig(node, nil))
	up6 := startStub(t, testConfig(startFake(t, ipv6, "IPv6 node cache", nodeCacheAnswer), nil))
	deadNode := startFake(t, ipv4, "dead node cache", nodeCacheAnswer)
	deadNode.Stop()
	failing := startStub(t, testConfig(deadNode, nil))
	addrOf := func(s *Stub) netip.AddrPort { return netip.MustParseAddrPort(s.UDPAddrs()[0].String()) }

	tests := []struct {
		name    string
		addr    netip.AddrPort
		timeout time.Duration // default long: only "silent" waits it out
		wantErr string        // substring; empty = success
		wantOK  string
	}{
		{name: "stub up", addr: addrOf(up), wantOK: "SOA: NOERROR"},
		{name: "stub up on ::1", addr: addrOf(up6), wantOK: "[::1]:"},
		{name: "stub up, every upstream failing: SERVFAIL still proves it serves", addr: addrOf(failing), wantOK: "SOA: SERVFAIL"},
		{name: "nothing listening", addr: unusedAddr(t), wantErr: "connection refused"},
		{name: "garbage responder", addr: responder(t, func([]byte) []byte { return []byte("not dns at all") }), wantErr: "malformed reply"},
		{name: "wrong ID", addr: responder(t, edited(func(m *dns.Msg) { m.Id++ })), wantErr: "ID"},
		{name: "not a response", addr: responder(t, edited(func(m *dns.Msg) { m.Response = false })), wantErr: "QR bit clear"},
		{name: "other question", addr: responder(t, edited(func(m *dns.Msg) { m.Question[0].Name = "other.example." })), wantErr: "question"},
		{name: "silent", addr: responder(t, func([]byte) []byte { return nil }), timeout: 100 * time.Millisecond, wantErr: "within 100ms"},
		{name: "truncated header", addr: responder(t, func(q []byte) []byte { return binary.BigEndian.AppendUint16(nil, binary.BigEndian.Uint16(q)) }),
			wantErr: "malformed reply"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			timeout := 10 * time.Second
			if tc.timeout != 0 {
				timeout = tc.timeout
			}
			got, err := Probe(context.Background(), ProbeConfig{Addr: tc.addr, Name: probeTestDomain, Timeout: timeout})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Probe = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !strings.Contains(got, tc.wantOK) {
				t.Fatalf("Probe = %q, %v; want success containing %q", got, err, tc.wantOK)
			}
		})
	}
}

package seeds

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/localdns/localdns/e2e/dnsload"
)

func TestWriteTable(t *testing.T) {
	rows := []Row{
		{Client: "glibc", Result: dnsload.Result{Lookups: 1000, Errors: 1, Mean: 120 * time.Millisecond,
			P99: 5 * time.Second, Max: 5100 * time.Millisecond, Over1s: 20, Over5s: 19, SelfStarved: 3}},
		{Client: "go", Result: dnsload.Result{Lookups: 0}},
	}
	var b bytes.Buffer
	if err := WriteTable(&b, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("table has %d lines, want header + 2:\n%s", len(lines), b.String())
	}
	for _, want := range []string{"glibc", "1000", "120.0ms", "5000.0ms", "5100.0ms", "20 (2.00%)", "19 (1.90%)", "  3"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("glibc row lacks %q: %s", want, lines[1])
		}
	}
	if !strings.Contains(lines[2], "0 (0.00%)") {
		t.Errorf("an empty run must not divide by zero: %s", lines[2])
	}
}

func TestValidate(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default() invalid: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"dotted service": func(c *Config) { c.Service = "a.b" },
		"no threads":     func(c *Config) { c.CThreads = 0 },
		"sub-second run": func(c *Config) { c.GoDuration = time.Millisecond },
		"drop above 1":   func(c *Config) { c.Drop = 2 },
	} {
		c := Default()
		mutate(&c)
		if c.Validate() == nil {
			t.Errorf("%s: Validate() = nil, want an error", name)
		}
	}
}

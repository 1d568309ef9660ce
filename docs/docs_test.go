// Package docs holds the user documentation; its test keeps the README's flag
// tables in step with what each binary's --help prints, so a flag cannot be
// added without being documented.
package docs

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/localdns/localdns/nodecache"
	"github.com/localdns/localdns/sidecar"
	"github.com/localdns/localdns/webhook"
)

// usageFlag matches a flag line of the standard flag package's usage output.
var usageFlag = regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)

func TestREADMEDocumentsEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	parsers := map[string]func(io.Writer) error{
		"localdns-nodecache": func(w io.Writer) error { _, err := nodecache.Parse([]string{"--help"}, w); return err },
		"localdns-nodecache cleanup": func(w io.Writer) error {
			_, err := nodecache.Parse([]string{"cleanup", "--help"}, w)
			return err
		},
		"localdns-stub":       func(w io.Writer) error { _, err := sidecar.Parse([]string{"--help"}, w); return err },
		"localdns-stub probe": func(w io.Writer) error { _, err := sidecar.Parse([]string{"probe", "--help"}, w); return err },
		"localdns-webhook": func(w io.Writer) error {
			_, err := webhook.Parse("localdns-webhook", []string{"--help"}, func(string) string { return "" }, w)
			return err
		},
	}
	for command, parse := range parsers {
		var usage bytes.Buffer
		if err := parse(&usage); !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("%s --help: %v, want flag.ErrHelp", command, err)
		}
		flags := usageFlag.FindAllStringSubmatch(usage.String(), -1)
		if len(flags) == 0 {
			t.Fatalf("%s --help lists no flags:\n%s", command, usage.String())
		}
		for _, m := range flags {
			if !strings.Contains(string(readme), "`--"+m[1]+"`") {
				t.Errorf("README.md does not document %s --%s", command, m[1])
			}
		}
	}
}

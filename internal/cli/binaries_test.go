package cli_test

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/localdns/localdns/internal/systest"
)

// TestBinariesReportBadFlagsAlike runs each real binary with a bad command
// line: every one prints one message, naming itself and the problem, on
// stderr (no usage dump, no second copy), nothing on stdout, and exits 2.
// --help prints the usage and exits 0. The three behave alike.
func TestBinariesReportBadFlagsAlike(t *testing.T) {
	bins := systest.BuildBinaries(t, "github.com/localdns/localdns/cmd/localdns-nodecache",
		"github.com/localdns/localdns/cmd/localdns-stub", "github.com/localdns/localdns/cmd/localdns-webhook")
	tests := []struct {
		bin  string
		args []string
		want string // in the one message
	}{
		{"localdns-nodecache", []string{"--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
		{"localdns-nodecache", []string{"--cache-max-bytes", "lots"}, `invalid value "lots" for flag -cache-max-bytes`},
		{"localdns-nodecache", []string{"--log-format", "xml"}, `--log-format: "xml" is not text or json`},
		{"localdns-stub", []string{"--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
		{"localdns-stub", []string{"--log-format", "xml"}, `--log-format: "xml" is not text or json`},
		{"localdns-webhook", []string{"--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
		{"localdns-webhook", []string{"--log-format", "xml"}, `--log-format: "xml" is not text or json`},
	}
	for _, tc := range tests {
		t.Run(tc.bin+" "+strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := exec.Command(bins[tc.bin], tc.args...)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() != 2 {
				t.Fatalf("exit: %v, want status 2\nstderr: %s", err, stderr.String())
			}
			msg := stderr.String()
			if stdout.Len() != 0 || strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, tc.bin+": ") ||
				!strings.Contains(msg, tc.want) || !strings.HasSuffix(msg, " (see --help)\n") {
				t.Fatalf("stdout %q, stderr %q: want one line %q naming %q", stdout.String(), msg, tc.bin+": ... (see --help)", tc.want)
			}
		})
	}
	for _, bin := range []string{"localdns-nodecache", "localdns-stub", "localdns-webhook"} {
		out, err := exec.Command(bins[bin], "--help").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "-log-format") {
			t.Errorf("%s --help: %v, usage lacks --log-format:\n%s", bin, err, out)
		}
	}
}

package cli

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
)

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantExit   bool
		wantStderr string
	}{
		{"parsed", nil, 0, false, ""},
		{"help", flag.ErrHelp, 0, true, ""},
		{"help, wrapped", fmt.Errorf("cleanup: %w", flag.ErrHelp), 0, true, ""},
		{"bad flag", errors.New("--listen: bad"), ExitUsage, true, "localdns-x: --listen: bad (see --help)\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr strings.Builder
			status, exit := ParseStatus("localdns-x", tc.err, &stderr)
			if status != tc.wantStatus || exit != tc.wantExit || stderr.String() != tc.wantStderr {
				t.Errorf("ParseStatus(%v) = %d, %v, stderr %q; want %d, %v, %q", tc.err, status, exit, stderr.String(), tc.wantStatus, tc.wantExit, tc.wantStderr)
			}
		})
	}
}

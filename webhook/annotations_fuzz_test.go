package webhook

import (
	"errors"
	"strconv"
	"testing"

	"github.com/miekg/dns"
)

// FuzzParseAnnotations feeds arbitrary values to every localdns annotation:
// parsing never panics; every error is an *InvalidValueError naming one of
// the keys given; and what comes through is valid for a resolv.conf: a known
// mode, numeric options within their ranges, option names without spaces,
// search domains that are domain names.
func FuzzParseAnnotations(f *testing.F) {
	f.Add("stub", "5", "2", "3", "use-vc,edns0,ndots:2", "a.example,b.example", "false")
	f.Add("auto", "0", "31", "6", "bad option", "-x-", "maybe")
	f.Add("", "", "", "", ",,,", ",", "")
	f.Fuzz(func(t *testing.T, mode, ndots, timeout, attempts, options, searches, fallback string) {
		annotations := map[string]string{
			AnnotationMode: mode, AnnotationNdots: ndots, AnnotationTimeout: timeout, AnnotationAttempts: attempts,
			AnnotationOptions: options, AnnotationSearches: searches, AnnotationFallback: fallback,
		}
		s, err := ParseAnnotations(annotations)
		for _, e := range unjoin(err) {
			var invalid *InvalidValueError
			if !errors.As(e, &invalid) {
				t.Fatalf("error %v is not an *InvalidValueError", e)
			}
			if _, ok := annotations[invalid.Key]; !ok {
				t.Fatalf("error names key %q, not one given", invalid.Key)
			}
		}
		switch s.Mode {
		case ModeNodeCache, ModeStub, ModeAuto:
		default:
			t.Fatalf("mode %q", s.Mode)
		}
		for _, o := range s.Options {
			if o.Name == "" || containsSpace(o.Name) {
				t.Fatalf("option name %q", o.Name)
			}
			if r, ok := optionRanges[o.Name]; ok && o.Value != nil {
				n, err := strconv.Atoi(*o.Value)
				if err != nil || n < r.min || n > r.max {
					t.Fatalf("option %s:%s outside %d..%d", o.Name, *o.Value, r.min, r.max)
				}
			}
		}
		for _, d := range s.Searches {
			if _, ok := dns.IsDomainName(d); !ok || containsSpace(d) {
				t.Fatalf("search domain %q", d)
			}
		}
	})
}

// unjoin flattens an errors.Join tree (nil: none).
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unjoin(e)...)
		}
		return out
	}
	return []error{err}
}

func containsSpace(s string) bool {
	for _, r := range s {
		if r == ' ' || r == '\t' || r == '\n' {
			return true
		}
	}
	return false
}

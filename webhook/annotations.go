package webhook

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// The user-facing API: one label key shared by namespaces and pods, the pod
// annotations a user may set, and the marker the webhook writes. Documented in
// docs/webhook.md; the values below are the only accepted ones.
const (
	// LabelInject opts a namespace in ("enabled") or out ("disabled"), and a
	// pod in ("true") or out ("false"); the pod label wins.
	LabelInject = "localdns.io/inject"

	// AnnotationMode selects "nodecache" (default), "stub" or "auto".
	AnnotationMode = "localdns.io/mode"
	// AnnotationNdots overrides the resolver's ndots (1..15).
	AnnotationNdots = "localdns.io/ndots"
	// AnnotationTimeout overrides the resolver's per-try timeout in seconds (1..30).
	AnnotationTimeout = "localdns.io/timeout"
	// AnnotationAttempts overrides the resolver's attempts (1..5).
	AnnotationAttempts = "localdns.io/attempts"
	// AnnotationOptions adds resolver options, "name[:value],...".
	AnnotationOptions = "localdns.io/options"
	// AnnotationSearches adds search domains, "a.b,c.d".
	AnnotationSearches = "localdns.io/searches"
	// AnnotationFallback "false" drops the kube-dns ClusterIP fallback.
	AnnotationFallback = "localdns.io/fallback"

	// AnnotationInjected is written by the webhook with the mode it applied;
	// a pod carrying it is never mutated again.
	AnnotationInjected = "localdns.io/injected"
)

// Values of LabelInject.
const (
	namespaceEnabled  = "enabled"
	namespaceDisabled = "disabled"
	podOptIn          = "true"
	podOptOut         = "false"
)

// Mode is how a pod's DNS is served.
type Mode string

const (
	// ModeNodeCache points the pod at the node cache, kube-dns as fallback.
	ModeNodeCache Mode = "nodecache"
	// ModeStub injects the in-pod stub; the pod asks 127.0.0.1 first.
	ModeStub Mode = "stub"
	// ModeAuto is ModeStub when a container image looks musl-based, else ModeNodeCache.
	ModeAuto Mode = "auto"
)

// Resolver option names the webhook sets from dedicated keys and flags.
const (
	optionNdots    = "ndots"
	optionTimeout  = "timeout"
	optionAttempts = "attempts"
)

// intRange bounds a numeric resolver option; glibc clamps beyond these.
type intRange struct{ min, max int }

var optionRanges = map[string]intRange{
	optionNdots:    {1, 15},
	optionTimeout:  {1, 30},
	optionAttempts: {1, 5},
}

// InvalidValueError reports a label or annotation value that is ignored.
// Admission turns each one into a warning; it never rejects the pod.
type InvalidValueError struct {
	Key    string
	Value  string
	Reason string
}

func (e *InvalidValueError) Error() string {
	return fmt.Sprintf("%s=%q ignored: %s", e.Key, e.Value, e.Reason)
}

// Settings is the typed view of a pod's localdns annotations. Options holds
// the annotation-provided resolver options in order of increasing precedence.
type Settings struct {
	Mode     Mode
	Fallback bool
	Options  []corev1.PodDNSConfigOption
	Searches []string
}

// ParseAnnotations reads every localdns annotation. Bad values are left out of
// Settings (the default applies) and reported together, one
// *InvalidValueError per bad key or item, joined with errors.Join.
func ParseAnnotations(annotations map[string]string) (Settings, error) {
	var errs []error
	collect := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var s Settings
	var err error
	s.Mode, err = modeAnnotation(annotations)
	collect(err)
	s.Fallback, err = fallbackAnnotation(annotations)
	collect(err)
	s.Searches, err = searchesAnnotation(annotations)
	collect(err)
	opts, err := optionsAnnotation(annotations)
	collect(err)
	s.Options = opts
	// The dedicated keys come last so they win over the same option in
	// localdns.io/options.
	for _, key := range []struct{ annotation, option string }{
		{AnnotationNdots, optionNdots},
		{AnnotationTimeout, optionTimeout},
		{AnnotationAttempts, optionAttempts},
	} {
		opt, ok, err := intOptionAnnotation(annotations, key.annotation, key.option)
		collect(err)
		if ok {
			s.Options = append(s.Options, opt)
		}
	}
	return s, errors.Join(errs...)
}

// modeAnnotation returns localdns.io/mode, ModeNodeCache when absent or bad.
func modeAnnotation(annotations map[string]string) (Mode, error) {
	v, ok := annotations[AnnotationMode]
	if !ok {
		return ModeNodeCache, nil
	}
	switch m := Mode(strings.TrimSpace(v)); m {
	case ModeNodeCache, ModeStub, ModeAuto:
		return m, nil
	}
	return ModeNodeCache, &InvalidValueError{Key: AnnotationMode, Value: v, Reason: "must be nodecache, stub or auto"}
}

// fallbackAnnotation returns localdns.io/fallback, true when absent or bad.
func fallbackAnnotation(annotations map[string]string) (bool, error) {
	v, ok := annotations[AnnotationFallback]
	if !ok {
		return true, nil
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return true, &InvalidValueError{Key: AnnotationFallback, Value: v, Reason: "must be true or false"}
	}
	return b, nil
}

// searchesAnnotation returns the valid domains of localdns.io/searches (none
// when absent); each invalid domain is reported on its own.
func searchesAnnotation(annotations map[string]string) ([]string, error) {
	v, ok := annotations[AnnotationSearches]
	if !ok {
		return nil, nil
	}
	var domains []string
	var errs []error
	for _, d := range splitList(v) {
		if msgs := validSearchDomain(d); len(msgs) > 0 {
			errs = append(errs, &InvalidValueError{Key: AnnotationSearches, Value: d, Reason: strings.Join(msgs, "; ")})
			continue
		}
		domains = append(domains, d)
	}
	return domains, errors.Join(errs...)
}

// validSearchDomain applies the API server's rule for dnsConfig.searches.
func validSearchDomain(d string) []string {
	if d == "." {
		return nil
	}
	return validation.IsDNS1123SubdomainWithUnderscore(strings.TrimSuffix(d, "."))
}

// optionsAnnotation returns the valid options of localdns.io/options (none
// when absent); each invalid item is reported on its own.
func optionsAnnotation(annotations map[string]string) ([]corev1.PodDNSConfigOption, error) {
	v, ok := annotations[AnnotationOptions]
	if !ok {
		return nil, nil
	}
	opts, bad := parseOptions(v)
	errs := make([]error, 0, len(bad))
	for _, b := range bad {
		errs = append(errs, &InvalidValueError{Key: AnnotationOptions, Value: b.item, Reason: b.reason})
	}
	return opts, errors.Join(errs...)
}

// intOptionAnnotation reads one numeric option key (ndots, timeout, attempts).
func intOptionAnnotation(annotations map[string]string, key, option string) (corev1.PodDNSConfigOption, bool, error) {
	v, ok := annotations[key]
	if !ok {
		return corev1.PodDNSConfigOption{}, false, nil
	}
	value := strings.TrimSpace(v)
	if reason := checkOptionValue(option, value); reason != "" {
		return corev1.PodDNSConfigOption{}, false, &InvalidValueError{Key: key, Value: v, Reason: reason}
	}
	return corev1.PodDNSConfigOption{Name: option, Value: &value}, true, nil
}

// badItem is one rejected entry of a "name[:value],..." list.
type badItem struct{ item, reason string }

// parseOptions parses a "name[:value],..." resolver option list, the syntax of
// both --options and localdns.io/options. Valid options are returned in
// order; each bad item is returned with the reason.
func parseOptions(list string) ([]corev1.PodDNSConfigOption, []badItem) {
	var opts []corev1.PodDNSConfigOption
	var bad []badItem
	for _, item := range splitList(list) {
		name, value, hasValue := strings.Cut(item, ":")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if reason := checkOptionName(name); reason != "" {
			bad = append(bad, badItem{item, reason})
			continue
		}
		if !hasValue {
			if _, numeric := optionRanges[name]; numeric {
				bad = append(bad, badItem{item, name + " needs a value"})
				continue
			}
			opts = append(opts, corev1.PodDNSConfigOption{Name: name})
			continue
		}
		if reason := checkOptionValue(name, value); reason != "" {
			bad = append(bad, badItem{item, reason})
			continue
		}
		opts = append(opts, corev1.PodDNSConfigOption{Name: name, Value: &value})
	}
	return opts, bad
}

// checkOptionName accepts resolv.conf option names: lower-case letters,
// digits, '-' and '_' (ndots, edns0, single-request-reopen, use-vc...).
func checkOptionName(name string) string {
	if name == "" {
		return "option name is empty"
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return "option name may contain only a-z, 0-9, '-' and '_'"
		}
	}
	return ""
}

// checkOptionValue range-checks the numeric options and keeps any value free
// of characters that would break a resolv.conf line.
func checkOptionValue(name, value string) string {
	if r, numeric := optionRanges[name]; numeric {
		n, err := strconv.Atoi(value)
		if err != nil || n < r.min || n > r.max {
			return fmt.Sprintf("%s must be an integer in %d..%d", name, r.min, r.max)
		}
		return ""
	}
	if value == "" || strings.ContainsAny(value, " \t\r\n#;") {
		return "option value must be non-empty without spaces, '#' or ';'"
	}
	return ""
}

// splitList splits a comma-separated list, trimming spaces, dropping empties.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// namespaceOptIn reads a namespace's LabelInject: enabled, disabled or unset.
func namespaceOptIn(labels map[string]string) (string, error) {
	v, ok := labels[LabelInject]
	if !ok || v == namespaceEnabled || v == namespaceDisabled {
		return v, nil
	}
	return "", &InvalidValueError{Key: "namespace label " + LabelInject, Value: v, Reason: "must be enabled or disabled"}
}

// podOptInLabel reads a pod's LabelInject: true, false or unset.
func podOptInLabel(labels map[string]string) (string, error) {
	v, ok := labels[LabelInject]
	if !ok || v == podOptIn || v == podOptOut {
		return v, nil
	}
	return "", &InvalidValueError{Key: "pod label " + LabelInject, Value: v, Reason: "must be true or false"}
}

// warningsOf turns the joined *InvalidValueError tree into admission warnings,
// one per bad key or item.
func warningsOf(err error) []string {
	if err == nil {
		return nil
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, e := range joined.Unwrap() {
			out = append(out, warningsOf(e)...)
		}
		return out
	}
	return []string{"localdns: " + err.Error()}
}

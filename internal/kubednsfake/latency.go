package kubednsfake

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Latency is how long a zone takes to answer: Min when Max is not above it,
// else uniformly random in [Min, Max]. It is a flag.Value written "200ms" or
// "100ms-300ms".
type Latency struct {
	Min, Max time.Duration
}

// Fixed is a Latency of exactly d.
func Fixed(d time.Duration) Latency { return Latency{Min: d, Max: d} }

// ParseLatency parses "D" or "MIN-MAX", each a time.Duration.
func ParseLatency(s string) (Latency, error) {
	lo, hi, ranged := strings.Cut(s, "-")
	minD, err := time.ParseDuration(strings.TrimSpace(lo))
	if err != nil {
		return Latency{}, fmt.Errorf("latency %q: %w", s, err)
	}
	l := Fixed(minD)
	if ranged {
		if l.Max, err = time.ParseDuration(strings.TrimSpace(hi)); err != nil {
			return Latency{}, fmt.Errorf("latency %q: %w", s, err)
		}
	}
	if l.Min < 0 || l.Max < l.Min {
		return Latency{}, fmt.Errorf("latency %q: want 0 <= min <= max", s)
	}
	return l, nil
}

func (l Latency) String() string {
	if l.Max <= l.Min {
		return l.Min.String()
	}
	return l.Min.String() + "-" + l.Max.String()
}

// Set implements flag.Value.
func (l *Latency) Set(s string) error {
	parsed, err := ParseLatency(s)
	if err == nil {
		*l = parsed
	}
	return err
}

// pick draws one answer's delay.
func (l Latency) pick() time.Duration {
	if l.Max <= l.Min {
		return l.Min
	}
	return l.Min + rand.N(l.Max-l.Min+1)
}

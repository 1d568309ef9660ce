package cluster

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress prints one line per step: the time since the run began, the step,
// how long it took and whether it failed. It is the output of `make demo`.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	begin time.Time
}

func newProgress(w io.Writer) *progress { return &progress{w: w, begin: time.Now()} }

// step runs fn and reports it.
func (p *progress) step(what string, fn func() error) error {
	start := time.Now()
	err := fn()
	took := time.Since(start).Round(10 * time.Millisecond)
	if err != nil {
		p.printf("FAIL %s (%s): %v", what, took, err)
		return fmt.Errorf("%s: %w", what, err)
	}
	p.printf("ok   %s (%s)", what, took)
	return nil
}

// printf writes one line prefixed with the elapsed time.
func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	elapsed := time.Since(p.begin).Seconds()
	fmt.Fprintf(p.w, "[%6.1fs] %s\n", elapsed, fmt.Sprintf(format, args...))
}

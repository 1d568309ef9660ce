package e2etest

import (
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// A cluster run's verbose output is thousands of lines, and CI shows only
// parts of it: a failure's message is easily lost among the logs. Errorf
// and Fatalf fail the test like t.Errorf and t.Fatalf and also keep the
// message; Main repeats the kept ones after all the package's tests, at
// the very end of the output.
var failures struct {
	sync.Mutex
	msgs []string
}

func keep(t testing.TB, msg string) {
	where := "?"
	if _, file, line, ok := runtime.Caller(2); ok {
		where = fmt.Sprintf("%s:%d", filepath.Base(file), line)
	}
	failures.Lock()
	defer failures.Unlock()
	failures.msgs = append(failures.msgs, fmt.Sprintf("%s (%s): %s", t.Name(), where, msg))
}

// Errorf is t.Errorf, with the message kept for Main's summary.
func Errorf(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	keep(t, msg)
	t.Error(msg)
}

// Fatalf is t.Fatalf, with the message kept for Main's summary.
func Fatalf(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	keep(t, msg)
	t.Fatal(msg)
}

// Explainf logs what may explain a failure; when t has failed already, the
// message is kept for Main's summary too, next to the failure it explains
// (a post-mortem that CI would otherwise cut with the logs around it).
func Explainf(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if t.Failed() {
		keep(t, "why: "+msg)
	}
	t.Log(msg)
}

// Main runs the package's tests, then prints the messages Errorf and Fatalf
// kept: TestMain's body is os.Exit(e2etest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	failures.Lock()
	defer failures.Unlock()
	if len(failures.msgs) > 0 {
		fmt.Printf("\n=== %d failure(s) and post-mortem(s) above, repeated:\n", len(failures.msgs))
		for _, msg := range failures.msgs {
			fmt.Println("    " + strings.ReplaceAll(msg, "\n", "\n        "))
		}
	}
	return code
}

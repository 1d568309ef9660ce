package ops

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/ops/opstest"
)

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	answers := prometheus.NewCounter(prometheus.CounterOpts{Name: "localdns_test_answers_total", Help: "test"})
	reg.MustRegister(answers)
	answers.Add(3)

	var ready atomic.Bool
	srv, err := Start(Config{
		Addr:     "127.0.0.1:0",
		Gatherer: reg,
		Ready: func() error {
			if !ready.Load() {
				return errors.New("no upstream answered yet")
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	base := "http://" + srv.Addr().String()

	tests := []struct {
		name      string
		path      string
		makeReady bool
		wantCode  int
		wantBody  string
	}{
		{"metrics", "/metrics", false, http.StatusOK, "localdns_test_answers_total 3"},
		{"liveness", "/healthz", false, http.StatusOK, "ok"},
		{"not ready says why", "/readyz", false, http.StatusServiceUnavailable, "not ready: no upstream answered yet"},
		{"ready", "/readyz", true, http.StatusOK, "ok"},
		{"unknown path", "/nope", true, http.StatusNotFound, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.makeReady {
				ready.Store(true)
			}
			code, body := opstest.Get(t, base+tc.path)
			if code != tc.wantCode {
				t.Errorf("GET %s: status %d, want %d (body %q)", tc.path, code, tc.wantCode, body)
			}
			if !strings.Contains(body, tc.wantBody) {
				t.Errorf("GET %s: body %q does not contain %q", tc.path, body, tc.wantBody)
			}
		})
	}
}

func TestNilReadyMeansReady(t *testing.T) {
	srv, err := Start(Config{Addr: "127.0.0.1:0", Gatherer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	if code, body := opstest.Get(t, "http://"+srv.Addr().String()+"/readyz"); code != http.StatusOK {
		t.Fatalf("status %d (%q), want 200", code, body)
	}
}

func TestStartErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no gatherer", Config{Addr: "127.0.0.1:0"}},
		{"port in use", Config{Addr: busy.Addr().String(), Gatherer: prometheus.NewRegistry()}},
		{"bad address", Config{Addr: "127.0.0.1:notaport", Gatherer: prometheus.NewRegistry()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if srv, err := Start(tc.cfg); err == nil {
				_ = srv.Shutdown(context.Background())
				t.Fatal("Start succeeded, want an error")
			}
		})
	}
}

func TestShutdownClosesListener(t *testing.T) {
	srv, err := Start(Config{Addr: "127.0.0.1:0", Gatherer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr().String()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if conn, err := net.Dial("tcp", addr); err == nil {
		conn.Close()
		t.Fatalf("%s still accepts connections after Shutdown", addr)
	}
}

// TestShutdownForcesAfterDeadline holds a connection idle mid-request so a
// graceful shutdown cannot finish, and checks Shutdown still returns (with
// the deadline error) once its context ends.
func TestShutdownForcesAfterDeadline(t *testing.T) {
	srv, err := Start(Config{Addr: "127.0.0.1:0", Gatherer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Half a request: the server is now reading headers on an active connection.
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown with an ended context: %v, want context.Canceled", err)
	}
}

// A surge rollout of a hostNetwork DaemonSet starts the replacement while the
// old instance still holds the node's port: with ReusePort both must bind and
// serve, and once the old one is gone the replacement answers alone. Without
// ReusePort the second bind must fail (the case above), which is what made the
// surge pod crash-loop.
func TestReusePortLetsAReplacementBindBeside(t *testing.T) {
	cfg := Config{Addr: "127.0.0.1:0", Gatherer: prometheus.NewRegistry(), ReusePort: true}
	old, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr = old.Addr().String()
	cfg.Ready = func() error { return errors.New("replacement starting") }
	replacement, err := Start(cfg)
	if err != nil {
		_ = old.Shutdown(context.Background())
		t.Fatalf("replacement bind beside the old instance: %v", err)
	}
	t.Cleanup(func() { _ = replacement.Shutdown(context.Background()) })
	if err := old.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	code, body := opstest.Get(t, "http://"+cfg.Addr+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "replacement starting") {
		t.Fatalf("after the old instance left: /readyz = %d %q, want the replacement's 503", code, body)
	}
}

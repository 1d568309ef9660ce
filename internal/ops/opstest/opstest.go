// Package opstest helps tests read an ops listener (internal/ops): /metrics,
// /healthz and /readyz over plain HTTP. Only tests import it.
package opstest

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// Get fetches url and returns the status code and body; a failed request or
// read fails the test.
func Get(t testing.TB, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

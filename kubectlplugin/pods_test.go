package kubectlplugin

import (
	"encoding/json"
	"testing"
)

// TestPods lists the fixture's uninjected pods: shop's and blog's predate
// their opt-in, cart's checkout pod was admitted while the webhook's
// Service led nowhere; finished, dnsPolicy Default, hostNetwork,
// opted-out, injected pods and those of other namespaces are not listed.
func TestPods(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		golden     string // of stdout; "" for none
		wantStderr string
	}{
		{name: "all namespaces", args: []string{"pods", "-A"}, golden: "pods-all.txt"},
		{name: "one namespace", args: []string{"pods", "-n", "shop"}, golden: "pods-shop.txt"},
		{name: "opted-out namespace", args: []string{"pods", "-n", "legacy"}, wantStderr: "No pods need a restart in namespace legacy.\n"},
		{name: "system namespace", args: []string{"pods", "-n", "localdns-system"}, wantStderr: "No pods need a restart in namespace localdns-system.\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, "", tt.args...)
			if r.err != nil {
				t.Fatalf("%v: %v", tt.args, r.err)
			}
			if r.stderr != tt.wantStderr {
				t.Errorf("stderr %q, want %q", r.stderr, tt.wantStderr)
			}
			if tt.golden == "" {
				if r.stdout != "" {
					t.Errorf("stdout %q, want none", r.stdout)
				}
				return
			}
			golden(t, tt.golden, r.stdout)
		})
	}
}

// TestPodsJSON checks the evidence behind each reason: a pod created
// before its opt-in, one after.
func TestPodsJSON(t *testing.T) {
	r := run(t, "", "pods", "-A", "-o", "json")
	if r.err != nil {
		t.Fatal(r.err)
	}
	var list struct {
		Kind  string          `json:"kind"`
		Items []UninjectedPod `json:"items"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("pods -o json: %v\n%s", err, r.stdout)
	}
	if list.Kind != "UninjectedPodList" || len(list.Items) != 8 {
		t.Fatalf("pods -o json: kind %q, %d items, want UninjectedPodList with 8:\n%s", list.Kind, len(list.Items), r.stdout)
	}
	for _, p := range list.Items {
		before := !p.Created.After(p.OptedInAt)
		if before != (p.Reason == ReasonBeforeOptIn) {
			t.Errorf("%s/%s: reason %s, created %s, opted in %s", p.Namespace, p.Name, p.Reason, p.Created, p.OptedInAt)
		}
	}
}

// TestPodsNamespaceMissing: a clear error, not an empty answer.
func TestPodsNamespaceMissing(t *testing.T) {
	r := run(t, "", "pods", "-n", "nowhere")
	if r.err == nil || r.err.Error() != "namespace nowhere not found" {
		t.Errorf("pods -n nowhere: err %v, want namespace nowhere not found", r.err)
	}
}

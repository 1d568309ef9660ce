package kubectlplugin

import (
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRestart rolls shop's workloads: first as client and server dry runs
// (nothing changes), then for real, with the patch `kubectl rollout
// restart` makes. Bare pods and Jobs are listed and left alone.
func TestRestart(t *testing.T) {
	client := clientset(t)
	restartedAt := func(t *testing.T) map[string]string {
		t.Helper()
		apps := client.AppsV1()
		d, err := apps.Deployments("shop").Get(t.Context(), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ss, err := apps.StatefulSets("shop").Get(t.Context(), "db", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ds, err := apps.DaemonSets("shop").Get(t.Context(), "agent", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return map[string]string{
			"Deployment/web":  d.Spec.Template.Annotations[restartedAtAnnotation],
			"StatefulSet/db":  ss.Spec.Template.Annotations[restartedAtAnnotation],
			"DaemonSet/agent": ds.Spec.Template.Annotations[restartedAtAnnotation],
		}
	}
	unchanged := restartedAt(t) // as the fixture made them, or an earlier run of this test
	now := pluginNow.Format(time.RFC3339)
	rolled := map[string]string{"Deployment/web": now, "StatefulSet/db": now, "DaemonSet/agent": now}

	tests := []struct {
		name   string
		args   []string
		golden string
		want   map[string]string
	}{
		{"client dry run", []string{"restart", "-n", "shop", "--dry-run"}, "restart-dry-run.txt", unchanged},
		{"server dry run", []string{"restart", "-n", "shop", "--dry-run=server"}, "restart-server-dry-run.txt", unchanged},
		{"restart", []string{"restart", "-n", "shop"}, "restart.txt", rolled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, "", tt.args...)
			if r.err != nil {
				t.Fatalf("%v: %v", tt.args, r.err)
			}
			golden(t, tt.golden, r.stdout)
			got := restartedAt(t)
			for w, want := range tt.want {
				if got[w] != want {
					t.Errorf("%s template annotation %s=%q, want %q", w, restartedAtAnnotation, got[w], want)
				}
			}
		})
	}

	t.Run("field manager", func(t *testing.T) {
		d, err := client.AppsV1().Deployments("shop").Get(t.Context(), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(d.ManagedFields, func(e metav1.ManagedFieldsEntry) bool { return e.Manager == fieldManager }) {
			t.Errorf("Deployment web: no managedFields entry by %s", fieldManager)
		}
	})
}

func TestRestartBadDryRun(t *testing.T) {
	r := run(t, "", "restart", "-n", "shop", "--dry-run=maybe")
	if r.err == nil || r.err.Error() != `--dry-run "maybe": want none, client or server` {
		t.Errorf("err %v, want the --dry-run error", r.err)
	}
}

package localdns

import (
	"reflect"
	"testing"
)

func TestParseKubeDNSPods(t *testing.T) {
	list := `{"items":[
 {"metadata":{"name":"coredns-a"},"status":{"podIP":"10.244.0.5","conditions":[{"type":"Initialized","status":"True"},{"type":"Ready","status":"True"}]}},
 {"metadata":{"name":"coredns-b","deletionTimestamp":"2026-12-04T10:00:00Z"},"status":{"podIP":"10.244.0.6","conditions":[{"type":"Ready","status":"False"}]}},
 {"metadata":{"name":"coredns-c"},"status":{}}]}`
	got, err := parseKubeDNSPods([]byte(list))
	if err != nil {
		t.Fatal(err)
	}
	want := []KubeDNSPod{
		{Name: "coredns-a", IP: "10.244.0.5", Ready: true},
		{Name: "coredns-b", IP: "10.244.0.6", Terminating: true},
		{Name: "coredns-c"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseKubeDNSPods =\n%+v\nwant\n%+v", got, want)
	}
	if _, err := parseKubeDNSPods([]byte("{")); err == nil {
		t.Error("truncated list: no error")
	}
}

func TestRequestShares(t *testing.T) {
	tests := []struct {
		name          string
		before, after map[string]float64
		want          map[string]float64
		wantTotal     float64
	}{
		{"new pods count from zero, gone ones are left out",
			map[string]float64{"old-1": 1000, "old-2": 500, "gone": 7},
			map[string]float64{"old-1": 1300, "old-2": 600, "new-1": 100},
			map[string]float64{"old-1": 0.6, "old-2": 0.2, "new-1": 0.2}, 500},
		{"nothing counted",
			map[string]float64{"a": 3}, map[string]float64{"a": 3},
			map[string]float64{"a": 0}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, total := RequestShares(tt.before, tt.after)
			if !reflect.DeepEqual(got, tt.want) || total != tt.wantTotal {
				t.Errorf("RequestShares = %v, %v; want %v, %v", got, total, tt.want, tt.wantTotal)
			}
		})
	}
}

package kubectlplugin

import (
	"encoding/json"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// labelSetAt returns the latest time a field manager set labels[key] on an
// object, from its managedFields (server-side field tracking: each entry
// holds the fields one manager owns and when it last changed them); zero
// when no entry owns the label. It is when the label got its current value,
// or a later change by the same manager: never earlier.
func labelSetAt(entries []metav1.ManagedFieldsEntry, key string) time.Time {
	var latest time.Time
	for _, e := range entries {
		if e.FieldsV1 == nil || e.Time == nil || !ownsLabel(e.FieldsV1.GetRawBytes(), key) {
			continue
		}
		if t := e.Time.Time; t.After(latest) {
			latest = t
		}
	}
	return latest
}

// ownsLabel reports whether a FieldsV1 set holds metadata.labels[key].
func ownsLabel(raw []byte, key string) bool {
	var fields struct {
		Metadata struct {
			Labels map[string]json.RawMessage `json:"f:labels"`
		} `json:"f:metadata"`
	}
	if json.Unmarshal(raw, &fields) != nil {
		return false
	}
	_, ok := fields.Metadata.Labels["f:"+key]
	return ok
}

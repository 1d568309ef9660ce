package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteSection(t *testing.T) {
	const section = "## In the cluster\n\nnew figures\n"
	tests := []struct{ name, before, want string }{
		{"absent file", "", section},
		{"appended", "# peers\n\ntable\n", "# peers\n\ntable\n\n" + section},
		{"replaced to the end", "# peers\n\ntable\n\n## In the cluster\n\nold figures\nmore\n", "# peers\n\ntable\n\n" + section},
		{"a mention is not the heading", "# peers\nsee ## In the cluster\n", "# peers\nsee ## In the cluster\n\n" + section},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "results.md")
			if tt.before != "" {
				if err := os.WriteFile(path, []byte(tt.before), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := writeSection(path, section); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("file =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

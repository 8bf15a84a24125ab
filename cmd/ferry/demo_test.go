package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemo runs `ferry demo` in-process: it must print every node's tables
// and succeed.
func TestDemo(t *testing.T) {
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"demo", "--dir", filepath.Join(t.TempDir(), "not", "yet")}) // --dir is made when missing
	if err := root.Execute(); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{"request:A", "acknowledgement:A", "request:C", "acknowledgement:C", "tb1:A", "tb1:B", "tb1:C", "tb1:D",
		"3   40123       name3", "Every node holds the same request row (accepted) and the same tb1."} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if strings.Count(s, "accepted") < 4 {
		t.Errorf("want the accepted row on all four nodes:\n%s", s)
	}
	if t.Failed() {
		t.Log(s)
	}
}

// Package scripts holds the project's shell scripts; its test runs
// deps.sh against stand-in commands.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDepsSaysWhatAndWhyFirst (issue 21, point 8): before deps.sh installs
// Debian packages as root it names each package and why the tests need
// it; apt-get runs after that. Commands on PATH are stand-ins: none of the
// needed ones is there, and apt-get only says it ran.
func TestDepsSaysWhatAndWhyFirst(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("deps.sh installs as root (CI runs as root)")
	}
	bin := t.TempDir()
	idPath, err := exec.LookPath("id")
	if err != nil {
		t.Skip("no id command")
	}
	if err := os.Symlink(idPath, filepath.Join(bin, "id")); err != nil {
		t.Fatal(err)
	}
	apt := "#!/bin/sh\necho \"apt-get ran: $*\" >&2\n"
	if err := os.WriteFile(filepath.Join(bin, "apt-get"), []byte(apt), 0o755); err != nil {
		t.Fatal(err)
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	cmd := exec.Command(bash, "deps.sh")
	cmd.Env = []string{"PATH=" + bin}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("deps.sh: %v\n%s", err, out)
	}
	s := string(out)
	for _, want := range []string{"chromium", "plantuml", "graphviz", "prometheus"} {
		i := strings.Index(s, "  "+want)
		if i < 0 {
			t.Fatalf("deps.sh does not name %s:\n%s", want, s)
		}
		line, _, _ := strings.Cut(s[i:], "\n")
		if len(strings.Fields(line)) < 3 {
			t.Fatalf("deps.sh names %s without a reason: %q", want, line)
		}
		if ran := strings.Index(s, "apt-get ran"); ran < 0 || ran < i {
			t.Fatalf("apt-get ran before deps.sh said what it installs:\n%s", s)
		}
	}
	if !strings.Contains(s, "apt-get ran: install") {
		t.Fatalf("deps.sh did not install:\n%s", s)
	}
}

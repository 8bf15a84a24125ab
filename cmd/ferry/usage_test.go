package main

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// TestUsageErrors: a mistake in the command line is a usage error (exit 2)
// that names the problem, suggests the command meant and shows the usage.
// Before, `ferry acks lsit` printed the help and exited 0, and a missing
// argument said "accepts 1 arg(s), received 0" without the usage.
func TestUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"acks", "lsit"}, []string{`unknown command "lsit" for "ferry acks"`, "did you mean list?", "Usage:", "ferry acks [command]"}},
		{[]string{"sttaus"}, []string{`unknown command "sttaus" for "ferry"`, "did you mean status?"}},
		{[]string{"requests", "show"}, []string{"ferry requests show takes ID; got no arguments", "ferry requests show ID [flags]"}},
		{[]string{"status", "now"}, []string{"ferry status takes no arguments; got 1 argument"}},
		{[]string{"acks", "list", "--pendin"}, []string{"unknown flag: --pendin", "ferry acks list [flags]"}},
		{[]string{"run", "--limits-max-message-bytes", "lots"}, []string{`invalid argument "lots" for "--limits-max-message-bytes" flag: "lots" is not a whole number`}},
		{[]string{"run", "--trust-store=maybe"}, []string{`"maybe" is not true or false`}},
	} {
		out, err := ferry(t, c.args...)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("ferry %s: %v (want a usage error)\n%s", strings.Join(c.args, " "), err, out)
			continue
		}
		var printed bytes.Buffer
		printUsageError(&printed, err)
		checkWords(t, "ferry "+strings.Join(c.args, " "), strings.SplitN(printed.String(), "\n", 2)[0]) // the usage after it lists flag types
		for _, w := range c.want {
			if !strings.Contains(printed.String(), w) {
				t.Errorf("ferry %s printed:\n%s\nwant %q", strings.Join(c.args, " "), printed.String(), w)
			}
		}
	}
	// A group alone prints its help, as before.
	if out, err := ferry(t, "acks"); err != nil || !strings.Contains(out, "Available Commands") {
		t.Errorf("ferry acks: %v\n%s", err, out)
	}
}

// TestUsageErrorExitsTwo: the binary exits 2 on a usage error, 1 on a
// failure, with the message on stderr.
func TestUsageErrorExitsTwo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildFerry(t)
	r := runBin(t, bin, 30*time.Second, "acks", "lsit")
	if r.code != 2 || !strings.Contains(r.stderr, "did you mean list?") || !strings.Contains(r.stderr, "Usage:") {
		t.Fatalf("ferry acks lsit: exit %d\nstderr: %s", r.code, r.stderr)
	}
	home := t.TempDir()
	r = runBin(t, bin, 30*time.Second, "--home", home, "init", "--name", "A")
	if r.code != 0 {
		t.Fatalf("init: %d %s", r.code, r.stderr)
	}
	r = runBin(t, bin, 30*time.Second, "--home", home, "init", "--name", "A2")
	if r.code != 1 || !strings.Contains(r.stderr, `initialised already with name "A"; init does not change it (--name "A2")`) {
		t.Fatalf("init --name A2 on A's home: exit %d\nstderr: %s", r.code, r.stderr)
	}
}

// TestEveryCommandHasExamples: each command's help shows examples.
func TestEveryCommandHasExamples(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Name() != "help" && c.Name() != "completion" && strings.TrimSpace(c.Example) == "" {
			t.Errorf("%s has no examples", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRoot())
}

// TestRunFlagsAreTyped: `run --help` shows each override's type (a bool
// needs no value); before, every one said string.
func TestRunFlagsAreTyped(t *testing.T) {
	out := mustFerry(t, "run", "--help")
	for _, w := range []string{"--limits-max-message-bytes int", "--limits-ack-retention-hours float", "--bootstrap strings", "--nats-url string"} {
		if !strings.Contains(out, w) {
			t.Errorf("run --help lacks %q", w)
		}
	}
	if strings.Contains(out, "--trust-store string") || strings.Contains(out, "--trust-store bool") || !strings.Contains(out, "--trust-store ") {
		t.Errorf("run --help shows --trust-store as:\n%s", grepLine(out, "--trust-store"))
	}
}

// TestInitKeepsAnExistingHome: init on an initialised home with another
// name or network refuses and says where to change it; the same name is
// fine (init is idempotent).
func TestInitKeepsAnExistingHome(t *testing.T) {
	home := filepath.Join(t.TempDir(), "h")
	id := strings.TrimSpace(mustFerry(t, "--home", home, "init", "--name", "A"))
	if again := strings.TrimSpace(mustFerry(t, "--home", home, "init", "--name", "A")); again != id {
		t.Fatalf("init again printed %q, want %q", again, id)
	}
	for _, args := range [][]string{{"--name", "A2"}, {"--network", "other"}} {
		out, err := ferry(t, append([]string{"--home", home, "init"}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "init does not change it") || !strings.Contains(err.Error(), "ferry.yaml") {
			t.Fatalf("init %v on an existing home: %v\n%s", args, err, out)
		}
	}
}

func grepLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// TestErrSummary (issue 21, point 4): a dial error in an acknowledgement
// row is one short line: what was tried and why it failed.
func TestErrSummary(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"open /ferry/resource/create/1.0.0 to 12D3KooWQRZ9: failed to dial: failed to dial 12D3KooWQRZ9: all dials failed\n  * [/ip4/127.0.0.1/tcp/21133] dial tcp 127.0.0.1:21133: connect: connection refused\n  * [/ip4/127.0.0.1/udp/21133/quic-v1] timeout: no recent network activity",
			"open /ferry/resource/create/1.0.0 to 12D3KooWQRZ9: dial failed: connection refused"},
		{"open /ferry/resource/create/1.0.0 to 12D3KooWQRZ9: failed to dial: context deadline exceeded",
			"open /ferry/resource/create/1.0.0 to 12D3KooWQRZ9: dial failed: context deadline exceeded"},
		{"no answer in time", "no answer in time"},
		{"", ""},
	} {
		if got := errSummary(c.in); got != c.want {
			t.Errorf("errSummary(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

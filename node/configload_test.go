package node_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrynet/ferry/internal/wording"
	"github.com/ferrynet/ferry/node"
)

// TestConfigErrorsInTheUsersWords: every mistake in ferry.yaml is told with
// the file and line, the key as written in the file, and what it must be,
// never in Go's words (field netwrok not found in type node.Config).
func TestConfigErrorsInTheUsersWords(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ferry.yaml")
	peerID := newPeerID(t).String()
	for _, tc := range []struct{ yaml, want string }{
		{"name: A\nnetwrok: x\n", ":2: unknown key `netwrok` (did you mean `network`?)"},
		{"name: A\nnats:\n  prefx: x\n", ":3: unknown key `nats.prefx` (did you mean `nats.prefix`?)"},
		{"name: A\nprefix: x\n", ":2: unknown key `prefix` (did you mean `nats.prefix`?)"},
		{"name: A\nnats:\n  zzzz: x\n", ":3: unknown key `nats.zzzz`; the keys of `nats` are credentials, events, listen, prefix, token, url"},
		{"name: A\n\nlisten: 5\n", ":3: `listen` must be a list of multiaddrs, got a number (5); a list of one is written [5]"},
		{"partners: " + peerID + "\n", ":1: `partners` must be a list of peer ids, got text (\"" + peerID[:40] + "…\"); a list of one is written [" + peerID + "]"},
		{"limits:\n  max_message_bytes: abc\n", ":2: `limits.max_message_bytes` must be a whole number, got text (\"abc\")"},
		{"limits:\n  ack_retention_hours: [1]\n", ":2: `limits.ack_retention_hours` must be a number, got a list"},
		{"limits:\n  max_message_bytes: 1.5\n", ":2: `limits.max_message_bytes` must be a whole number, got a number (1.5)"},
		{"limits:\n  min_free_disk_mb: 99999999999999999999\n", ":2: `limits.min_free_disk_mb` must be a whole number, got a number (99999999999999999999)"},
		{"review:\n  nats_decide: maybe\n", ":2: `review.nats_decide` must be true or false, got text (\"maybe\")"},
		{"nats: [1]\n", ":1: `nats` must be a section of keys (e.g. url: ... on the lines under it), got a list"},
		{"name: A\nname: B\n", ":2: `name` is set twice (first at line 1)"},
		{"name: A\nlisten: [\n", ":2: not valid YAML: did not find expected node content"},
		{"- a\n- b\n", ":1: the file must be a mapping of keys (name: A, listen: [...], ...), got a list"},
		{"name: A\nlisten:\n  - /ip4/0.0.0.0/tcp/1\n  - nowhere\n", `:4: listen[1]: "nowhere": failed to parse multiaddr "nowhere": must begin with /`},
		{"limits:\n  max_message_bytes: 5\n", ":2: limits.max_message_bytes: 5 is outside 1024..67108864"},
	} {
		if err := os.WriteFile(p, []byte(tc.yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := node.LoadFile(p)
		if err == nil {
			err = c.Validate()
		}
		if err == nil {
			t.Errorf("%q: accepted", tc.yaml)
			continue
		}
		if got := err.Error(); got != p+tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.yaml, got, p+tc.want)
		}
		var ce *node.ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("%q: %v is not a *ConfigError", tc.yaml, err)
		}
		if g := wording.GoInternals(err.Error()); g != "" {
			t.Errorf("%q: %q speaks Go (%q)", tc.yaml, err, g)
		}
	}
}

// TestConfigErrorsNameTheirSource: a bad value set by an environment
// variable or a flag is told with that variable or flag; the file's line
// is no longer named once either overrides the key.
func TestConfigErrorsNameTheirSource(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ferry.yaml")
	if err := os.WriteFile(p, []byte("name: A\nlimits:\n  max_message_bytes: 5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := node.LoadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Where("limits.max_message_bytes"); w != p+":3" {
		t.Fatalf("Where = %q, want %s:3", w, p)
	}
	env := map[string]string{"FERRY_LIMITS_MAX_MESSAGE_BYTES": "7"}
	if err := c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	want := "FERRY_LIMITS_MAX_MESSAGE_BYTES: limits.max_message_bytes: 7 is outside 1024..67108864"
	if err := c.Validate(); err == nil || err.Error() != want {
		t.Fatalf("after the env: %v, want %s", err, want)
	}
	var flag node.Setting
	for _, s := range c.Settings() {
		if s.Key == "limits.max_message_bytes" {
			flag = s
		}
	}
	if err := c.SetFrom(flag, "--"+flag.Flag, "9"); err != nil {
		t.Fatal(err)
	}
	want = "--limits-max-message-bytes: limits.max_message_bytes: 9 is outside 1024..67108864"
	if err := c.Validate(); err == nil || err.Error() != want {
		t.Fatalf("after the flag: %v, want %s", err, want)
	}
	want = "--limits-max-message-bytes: limits.max_message_bytes: \"lots\" is not a whole number"
	if err := c.SetFrom(flag, "--"+flag.Flag, "lots"); err == nil || err.Error() != want {
		t.Fatalf("a flag that is no number: %v, want %s", err, want)
	}
	// A default that Validate refuses (set in code) has no source to name.
	d := node.Default()
	d.Log.Level = "loud"
	if err := d.Validate(); err == nil || !strings.HasPrefix(err.Error(), "config: log.level: ") {
		t.Fatalf("a key set in code: %v", err)
	}
}

package node_test

import (
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	gonet "net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/node"
)

// newPeerID returns a fresh ed25519 peer id.
func newPeerID(t testing.TB) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestDefaultConfigValidates(t *testing.T) {
	c := node.Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default() does not validate: %v", err)
	}
	if c.NATS.Listen != node.DefaultNATSListen || c.NATS.Prefix != node.DefaultNATSPrefix || c.Admin.Listen != node.DefaultAdminListen ||
		c.Network != node.DefaultNetwork || len(c.Listen) == 0 || c.Limits.MaxMessageBytes <= 0 {
		t.Fatalf("Default() lacks a default: %+v", c)
	}
}

// TestValidateNamesTheBadKey sets one bad value per key on a valid config and
// checks that Validate refuses it with an error naming that key.
func TestValidateNamesTheBadKey(t *testing.T) {
	id := newPeerID(t).String()
	missing := filepath.Join(t.TempDir(), "does-not-exist")
	cases := []struct {
		key string
		set func(c *node.Config)
	}{
		{"name", func(c *node.Config) { c.Name = "" }},
		{"name", func(c *node.Config) { c.Name = "has space" }},
		{"network", func(c *node.Config) { c.Network = "-bad/net" }},
		{"listen", func(c *node.Config) { c.Listen = nil }},
		{"listen[0]", func(c *node.Config) { c.Listen = []string{"tcp://0.0.0.0:4001"} }},
		{"listen[1]", func(c *node.Config) { c.Listen = []string{"/ip4/127.0.0.1/tcp/4001", "/ip4/999.0.0.1/tcp/1"} }},
		{"bootstrap[0]", func(c *node.Config) { c.Bootstrap = []string{"/ip4/127.0.0.1/tcp/4001"} }}, // no /p2p/<id>
		{"bootstrap[1]", func(c *node.Config) {
			c.Bootstrap = []string{"/ip4/127.0.0.1/tcp/4001/p2p/" + id, "not a multiaddr"}
		}},
		{"partners[0]", func(c *node.Config) { c.Partners = []string{"not-a-peer-id"} }},
		{"partners[1]", func(c *node.Config) { c.Partners = []string{id, "12D3KooWbad"} }},
		{"members[0]", func(c *node.Config) { c.Members = []string{"alice"} }},
		{"reviewer", func(c *node.Config) { c.Reviewer = "bob" }},
		{"private_network_key", func(c *node.Config) { c.PrivateNetworkKey = missing }},
		{"nats.url", func(c *node.Config) { c.NATS.URL = "not a url" }},
		{"nats.url", func(c *node.Config) { c.NATS.URL = "nats://" }},
		{"nats.url", func(c *node.Config) { c.NATS.URL = "nats://10.0.0.1:4222,localhost" }},
		{"nats.listen", func(c *node.Config) { c.NATS.Listen = "notaport" }},
		{"nats.listen", func(c *node.Config) { c.NATS.Listen = "127.0.0.1:99999" }},
		{"nats.listen", func(c *node.Config) { c.NATS.Listen = "127.0.0.1:-1" }},
		{"nats.listen", func(c *node.Config) { c.NATS.Listen = "example.com:4222" }},
		{"nats.prefix", func(c *node.Config) { c.NATS.Prefix = "" }},
		{"nats.prefix", func(c *node.Config) { c.NATS.Prefix = "ferry.>" }},
		{"nats.prefix", func(c *node.Config) { c.NATS.Prefix = "a..b" }},
		{"nats.credentials", func(c *node.Config) { c.NATS.URL = "nats://127.0.0.1:4222"; c.NATS.Credentials = missing }},
		{"nats.events.enabled", func(c *node.Config) { c.NATS.Events.Enabled = "yes" }},
		{"nats.events.enabled", func(c *node.Config) { c.NATS.Events.Enabled = "" }},
		{"nats.events.stream", func(c *node.Config) { c.NATS.Events.Stream = "" }},
		{"nats.events.stream", func(c *node.Config) { c.NATS.Events.Stream = "FERRY.EVENTS" }},
		{"nats.events.max_bytes", func(c *node.Config) { c.NATS.Events.MaxBytes = 0 }},
		{"nats.events.max_bytes", func(c *node.Config) { c.NATS.Events.MaxBytes = node.MinEventsMaxBytes - 1 }},
		{"nats.events.max_bytes", func(c *node.Config) { c.Limits.MaxMessageBytes = 1 << 20; c.NATS.Events.MaxBytes = 2 << 20 }},
		{"nats.events.max_age", func(c *node.Config) { c.NATS.Events.MaxAge = "a week" }},
		{"nats.events.max_age", func(c *node.Config) { c.NATS.Events.MaxAge = "30s" }},
		{"nats.events.max_age", func(c *node.Config) { c.NATS.Events.MaxAge = "-1h" }},
		{"admin.listen", func(c *node.Config) { c.Admin.Listen = "7480" }},
		{"admin.listen", func(c *node.Config) { c.Admin.Listen = "127.0.0.1:http" }},
		{"limits.max_message_bytes", func(c *node.Config) { c.Limits.MaxMessageBytes = 0 }},
		{"limits.max_message_bytes", func(c *node.Config) { c.Limits.MaxMessageBytes = 1023 }},
		{"limits.max_message_bytes", func(c *node.Config) { c.Limits.MaxMessageBytes = node.MaxMessageBytesCap + 1 }},
		{"limits.ack_retention_hours", func(c *node.Config) { c.Limits.AckRetentionHours = -1 }},
		{"log.level", func(c *node.Config) { c.Log.Level = "verbose" }},
		{"log.level", func(c *node.Config) { c.Log.Level = "" }},
		{"log.format", func(c *node.Config) { c.Log.Format = "xml" }},
	}
	for _, tc := range cases {
		t.Run(tc.key, func(t *testing.T) {
			c := node.Default()
			tc.set(&c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate accepted a bad %s: %+v", tc.key, c)
			}
			want := "config: " + tc.key + ": "
			if !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %q does not start with %q", err, want)
			}
			var ce *node.ConfigError
			if !errors.As(err, &ce) || ce.Key != tc.key {
				t.Fatalf("error %q is not a *ConfigError for key %s (%+v)", err, tc.key, ce)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
}

// TestValidateAcceptsGoodValues checks the edges of what Validate lets through.
func TestValidateAcceptsGoodValues(t *testing.T) {
	id := newPeerID(t).String()
	c := node.Default()
	c.Name, c.Network = "site-1.lab_a", "net.2"
	c.Listen = []string{"/ip4/127.0.0.1/tcp/0", "/ip6/::1/udp/0/quic-v1"}
	c.Bootstrap = []string{"/ip4/10.0.0.1/tcp/4001/p2p/" + id}
	c.Partners, c.Members, c.Reviewer = []string{id}, []string{id}, id
	c.NATS.Listen = "localhost:0"
	c.NATS.Prefix = "org.ferry-1"
	c.Admin.Listen = ":7480"
	c.Limits.MaxMessageBytes = 1024
	c.Log.Level, c.Log.Format = "debug", "json"
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	c.Limits.MaxMessageBytes = node.MaxMessageBytesCap
	c.NATS.URL = "nats://10.0.0.1:4222, nats://10.0.0.2:4222"
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
}

func TestLoadFileRefusesUnknownKeys(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ yaml, bad string }{
		{"name: x\nbootstraps: []\n", "bootstraps"},
		{"nats:\n  urll: nats://127.0.0.1:4222\n", "urll"},
		{"limits:\n  max_message_byte: 2048\n", "max_message_byte"},
	} {
		p := filepath.Join(dir, tc.bad+".yaml")
		if err := os.WriteFile(p, []byte(tc.yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := node.LoadFile(p)
		if err == nil {
			t.Fatalf("LoadFile accepted unknown key %q", tc.bad)
		}
		if !strings.HasPrefix(err.Error(), p+":") || !strings.Contains(err.Error(), "unknown key `") || !strings.Contains(err.Error(), tc.bad+"`") {
			t.Fatalf("error %q does not name the file and the unknown key %q", err, tc.bad)
		}
	}
}

func TestLoadFileOverDefaults(t *testing.T) {
	dir := t.TempDir()
	// A missing file is the defaults.
	c, err := node.LoadFile(filepath.Join(dir, "missing.yaml"))
	if err != nil {
		t.Fatalf("missing file: %v", err)
	}
	if c.NATS.Listen != node.DefaultNATSListen {
		t.Fatalf("missing file did not give defaults: %+v", c)
	}
	// An empty file too.
	empty := filepath.Join(dir, "empty.yaml")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err = node.LoadFile(empty); err != nil || c.NATS.Prefix != node.DefaultNATSPrefix {
		t.Fatalf("empty file: %v %+v", err, c)
	}
	// A partial file keeps the defaults of the keys it does not set.
	p := filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(p, []byte("name: site1\nnats:\n  prefix: acme\nlimits:\n  max_message_bytes: 4096\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = node.LoadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "site1" || c.NATS.Prefix != "acme" || c.Limits.MaxMessageBytes != 4096 ||
		c.NATS.Listen != node.DefaultNATSListen || c.Admin.Listen != node.DefaultAdminListen || c.Log.Level != "info" {
		t.Fatalf("partial file: %+v", c)
	}
	// A malformed file fails, naming the file.
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: [unterminated\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := node.LoadFile(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("malformed file: %v", err)
	}
	// Save then LoadFile gives the same configuration back.
	want := node.Default()
	want.Name = "roundtrip"
	want.Partners = []string{newPeerID(t).String()}
	rt := filepath.Join(dir, "rt.yaml")
	if err := want.Save(rt); err != nil {
		t.Fatal(err)
	}
	got, err := node.LoadFile(rt)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Validate(); err != nil {
		t.Fatal(err)
	}
	if got.Name != want.Name || !slices.Equal(got.Partners, want.Partners) || !slices.Equal(got.Listen, want.Listen) ||
		got.NATS != want.NATS || got.Admin != want.Admin || got.Limits != want.Limits || got.Log != want.Log {
		t.Fatalf("round trip: got %+v, want %+v", got, want)
	}
}

// TestEventsConfig: nats.events from a file and the environment, and when
// the events stream is on (auto: with the embedded server only).
func TestEventsConfig(t *testing.T) {
	c := node.Default()
	if !c.EventsOn() || c.NATS.Events.Stream != node.DefaultEventsStream || c.NATS.Events.MaxBytes != node.DefaultEventsMaxBytes ||
		c.EventsMaxAge() != 168*time.Hour {
		t.Fatalf("defaults: %+v on=%v", c.NATS.Events, c.EventsOn())
	}
	c.NATS.URL = "nats://10.0.0.1:4222"
	if c.EventsOn() {
		t.Fatal("auto with an external server: the stream must be opt-in")
	}
	p := filepath.Join(t.TempDir(), "ferry.yaml")
	if err := os.WriteFile(p, []byte("nats:\n  url: nats://10.0.0.1:4222\n  events:\n    enabled: true\n    stream: SITE_A\n    max_bytes: 8388608\n    max_age: 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := node.LoadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if !c.EventsOn() || c.NATS.Events.Stream != "SITE_A" || c.NATS.Events.MaxBytes != 8<<20 || c.EventsMaxAge() != 0 {
		t.Fatalf("from the file: %+v on=%v", c.NATS.Events, c.EventsOn())
	}
	env := map[string]string{"FERRY_NATS_EVENTS_ENABLED": "false", "FERRY_NATS_EVENTS_MAX_AGE": "24h"}
	if err := c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if c.EventsOn() || c.EventsMaxAge() != 24*time.Hour {
		t.Fatalf("from the environment: %+v on=%v", c.NATS.Events, c.EventsOn())
	}
}

func TestApplyEnvOverrides(t *testing.T) {
	p1, p2 := newPeerID(t).String(), newPeerID(t).String()
	env := map[string]string{
		"FERRY_NATS_URL":                   "nats://10.1.2.3:4222",
		"FERRY_PARTNERS":                   p1 + ", " + p2 + ",",
		"FERRY_LIMITS_MAX_MESSAGE_BYTES":   "2048",
		"FERRY_LIMITS_ACK_RETENTION_HOURS": "0.05",
		"FERRY_REVIEW_NATS_DECIDE":         "true",
		"FERRY_LOG_LEVEL":                  "debug",
		"NATS_URL":                         "nats://ignored:1", // not FERRY_*
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	c := node.Default()
	if err := c.ApplyEnv(lookup); err != nil {
		t.Fatal(err)
	}
	if c.NATS.URL != "nats://10.1.2.3:4222" {
		t.Errorf("nats.url = %q", c.NATS.URL)
	}
	if !slices.Equal(c.Partners, []string{p1, p2}) {
		t.Errorf("partners = %q, want [%s %s]", c.Partners, p1, p2)
	}
	if c.Limits.MaxMessageBytes != 2048 || c.Limits.AckRetentionHours != 0.05 || !c.Review.NATSDecide || c.Log.Level != "debug" {
		t.Errorf("overrides not applied: %+v", c)
	}
	if c.NATS.Listen != node.DefaultNATSListen || c.Admin.Listen != node.DefaultAdminListen {
		t.Errorf("keys without env changed: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("overridden config does not validate: %v", err)
	}

	// A bad value names the variable and the key.
	c = node.Default()
	err := c.ApplyEnv(func(k string) (string, bool) {
		if k == "FERRY_LIMITS_MAX_MESSAGE_BYTES" {
			return "lots", true
		}
		return "", false
	})
	if err == nil || !strings.Contains(err.Error(), "FERRY_LIMITS_MAX_MESSAGE_BYTES") || !strings.Contains(err.Error(), "limits.max_message_bytes") {
		t.Fatalf("bad int: %v", err)
	}
	c = node.Default()
	err = c.ApplyEnv(func(k string) (string, bool) {
		if k == "FERRY_REVIEW_NATS_DECIDE" {
			return "maybe", true
		}
		return "", false
	})
	if err == nil || !strings.Contains(err.Error(), "review.nats_decide") {
		t.Fatalf("bad bool: %v", err)
	}
	for _, bad := range []string{"soon", "NaN", "+Inf"} {
		c = node.Default()
		err = c.ApplyEnv(func(k string) (string, bool) {
			if k == "FERRY_LIMITS_ACK_RETENTION_HOURS" {
				return bad, true
			}
			return "", false
		})
		if err == nil || !strings.Contains(err.Error(), "limits.ack_retention_hours") {
			t.Fatalf("bad number %q: %v", bad, err)
		}
	}
}

// TestHomeLoadConfigAppliesEnv goes through the process environment, as `ferry run` does.
func TestHomeLoadConfigAppliesEnv(t *testing.T) {
	h := node.Home{Dir: t.TempDir()}
	if _, err := h.Init(node.InitOptions{Name: "envsite"}); err != nil {
		t.Fatal(err)
	}
	p := newPeerID(t).String()
	t.Setenv("FERRY_NATS_URL", "nats://127.0.0.1:4333")
	t.Setenv("FERRY_PARTNERS", p)
	c, err := h.LoadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "envsite" || c.NATS.URL != "nats://127.0.0.1:4333" || !slices.Equal(c.Partners, []string{p}) {
		t.Fatalf("LoadConfig: %+v", c)
	}
}

func TestSettingsHaveOneFlagPerKey(t *testing.T) {
	c := node.Default()
	ss := c.Settings()
	byFlag := map[string]node.Setting{}
	for _, s := range ss {
		if _, dup := byFlag[s.Flag]; dup {
			t.Errorf("flag --%s appears twice", s.Flag)
		}
		byFlag[s.Flag] = s
		flat := strings.ReplaceAll(s.Key, ".", "_")
		if s.Env != "FERRY_"+strings.ToUpper(flat) || s.Flag != strings.ReplaceAll(flat, "_", "-") {
			t.Errorf("setting %s: env %s flag %s", s.Key, s.Env, s.Flag)
		}
	}
	for _, want := range []struct{ flag, key, env string }{
		{"nats-url", "nats.url", "FERRY_NATS_URL"},
		{"nats-listen", "nats.listen", "FERRY_NATS_LISTEN"},
		{"admin-listen", "admin.listen", "FERRY_ADMIN_LISTEN"},
		{"limits-max-message-bytes", "limits.max_message_bytes", "FERRY_LIMITS_MAX_MESSAGE_BYTES"},
		{"partners", "partners", "FERRY_PARTNERS"},
		{"listen", "listen", "FERRY_LISTEN"},
		{"private-network-key", "private_network_key", "FERRY_PRIVATE_NETWORK_KEY"},
		{"log-level", "log.level", "FERRY_LOG_LEVEL"},
		{"review-nats-decide", "review.nats_decide", "FERRY_REVIEW_NATS_DECIDE"},
		{"nats-events-max-bytes", "nats.events.max_bytes", "FERRY_NATS_EVENTS_MAX_BYTES"},
	} {
		s, ok := byFlag[want.flag]
		if !ok {
			t.Errorf("no flag --%s", want.flag)
			continue
		}
		if s.Key != want.key || s.Env != want.env {
			t.Errorf("--%s: key %s env %s, want %s %s", want.flag, s.Key, s.Env, want.key, want.env)
		}
	}
	// Every leaf key of the config is there: 19 of them today.
	keys := make([]string, 0, len(ss))
	for _, s := range ss {
		keys = append(keys, s.Key)
	}
	for _, k := range []string{"name", "network", "listen", "bootstrap", "partners", "members", "reviewer", "private_network_key",
		"nats.url", "nats.listen", "nats.prefix", "nats.credentials", "nats.token", "admin.listen",
		"limits.max_message_bytes", "limits.ack_retention_hours", "review.nats_decide", "log.level", "log.format"} {
		if !slices.Contains(keys, k) {
			t.Errorf("Settings lacks %s (has %v)", k, keys)
		}
	}

	// Set writes through to the config it came from.
	for _, s := range c.Settings() {
		var err error
		switch s.Key {
		case "admin.listen":
			err = s.Set("127.0.0.1:0")
		case "limits.max_message_bytes":
			err = s.Set("4096")
		case "bootstrap":
			err = s.Set("")
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if c.Admin.Listen != "127.0.0.1:0" || c.Limits.MaxMessageBytes != 4096 || len(c.Bootstrap) != 0 {
		t.Fatalf("Set did not write through: %+v", c)
	}
}

// newNode calls node.New and turns a panic into an error value, so a crash
// in New's failure path is reported rather than killing the test binary.
func newNode(c node.Config, h node.Home) (n *node.Node, panicked any, err error) {
	defer func() { panicked = recover() }()
	n, err = node.New(c, h, node.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	return n, nil, err
}

// TestNewReportsStartupErrors: a node that cannot start says why, and
// releases what it built (the store can be opened again).
func TestNewReportsStartupErrors(t *testing.T) {
	busy, err := gonet.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*gonet.TCPAddr).Port
	for _, tc := range []struct {
		name string
		set  func(c *node.Config)
		want string
		is   error // the error wraps it (matched with errors.Is, never by text)
	}{
		{"unreachable nats.url", func(c *node.Config) { c.NATS.URL = "nats://127.0.0.1:1" }, "nats://127.0.0.1:1", nil},
		{"listen address in use", func(c *node.Config) { c.Listen = []string{"/ip4/127.0.0.1/tcp/" + strconv.Itoa(busyPort)} }, "in use", syscall.EADDRINUSE},
		{"nats port in use", func(c *node.Config) { c.NATS.Listen = "127.0.0.1:" + strconv.Itoa(busyPort) }, "in use", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := node.Home{Dir: t.TempDir()}
			if _, err := h.Init(node.InitOptions{Name: "n"}); err != nil {
				t.Fatal(err)
			}
			c := node.Default()
			c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
			c.NATS.Listen, c.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0"
			tc.set(&c)
			n, p, err := newNode(c, h)
			if p != nil {
				// Seen before node.New stopped naming its result n: its failure
				// cleanup then ran Close on the nil result of `return nil, err`.
				t.Fatalf("node.New panicked instead of returning its error: %v", p)
			}
			if err == nil {
				_ = n.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q should say %q on one line", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %q does not wrap %v", err, tc.is)
			}
			// Everything New built was released: a second node opens the same home.
			c2 := node.Default()
			c2.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
			c2.NATS.Listen, c2.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0"
			n2, p, err := newNode(c2, h)
			if p != nil || err != nil {
				t.Fatalf("the home is not usable after a failed New: %v %v", err, p)
			}
			_ = n2.Close()
		})
	}
}

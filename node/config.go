package node

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"go.yaml.in/yaml/v3"

	"github.com/ferrynet/ferry/membership"
	"github.com/ferrynet/ferry/peers"
	"github.com/ferrynet/ferry/protocols"
)

// Defaults, as SPEC.md lists them.
const (
	DefaultNetwork     = "ferry"
	DefaultNATSListen  = "127.0.0.1:4222"
	DefaultNATSPrefix  = "ferry"
	DefaultAdminListen = "127.0.0.1:7480"
	DefaultTCPListen   = "/ip4/0.0.0.0/tcp/4001"
	DefaultQUICListen  = "/ip4/0.0.0.0/udp/4001/quic-v1"
	MaxMessageBytesCap = 64 << 20
	ConfigFile         = "ferry.yaml"
	IdentityFile       = "identity.key"
	TokenFile          = "admin.token"
	DataDir            = "data"
	EnvPrefix          = "FERRY_"
)

// Config is ferry.yaml. Every key is optional; Default() fills them.
type Config struct {
	Name      string   `yaml:"name"`
	Network   string   `yaml:"network"`
	Listen    []string `yaml:"listen"`
	Bootstrap []string `yaml:"bootstrap"`
	Partners  []string `yaml:"partners"`
	Members   []string `yaml:"members"`
	Reviewer  string   `yaml:"reviewer"`
	// Reviewers is the review group (SPEC.md "The review group"); with
	// Reviewer too, it must list it. ReviewGroup reads the two.
	Reviewers         []string `yaml:"reviewers"`
	PrivateNetworkKey string   `yaml:"private_network_key"`
	// TrustStore lets owned-resource writes through at start before a
	// partner has said what it holds of this node's changes. Only for a
	// store that is never restored from a copy: a restored one would answer
	// a retried request a second time (node/restore.go).
	TrustStore  bool        `yaml:"trust_store"`
	NATS        NATSConfig  `yaml:"nats"`
	Admin       AdminConfig `yaml:"admin"`
	Limits      Limits      `yaml:"limits"`
	Connections Connections `yaml:"connections"`
	Review      Review      `yaml:"review"`
	Log         LogConfig   `yaml:"log"`
	// MemberLifetime is how long a membership record lasts (a Go
	// duration, "24h"): the node signs its own again every third of it,
	// and a member whose record expired is no longer one (peers/leave.go).
	MemberLifetime string `yaml:"member_lifetime"`

	// where says where each key was set (ferry.yaml:3, FERRY_NATS_URL,
	// --nats-url), for the errors that name it (configload.go).
	where map[string]string
}

// NATSConfig says where apps reach the node.
type NATSConfig struct {
	// URL of an external server; empty runs the embedded one on Listen.
	URL string `yaml:"url"`
	// Listen is the embedded server's host:port (port 0: any free port).
	Listen string `yaml:"listen"`
	// Prefix of every subject the node serves and publishes.
	Prefix string `yaml:"prefix"`
	// Credentials is a .creds file for an external server.
	Credentials string `yaml:"credentials"`
	// Token authenticates to an external server, or is required by the embedded one.
	Token string `yaml:"token"`
	// Events keeps the events the node publishes in a JetStream stream.
	Events EventsConfig `yaml:"events"`
}

// EventsConfig is the JetStream stream that keeps the node's events for apps
// with durable consumers (package eventstream; docs/operations.md).
type EventsConfig struct {
	// Enabled: auto (the default: on with the embedded server, off with
	// nats.url), true or false.
	Enabled string `yaml:"enabled"`
	// Stream names the JetStream stream (FERRY_EVENTS).
	Stream string `yaml:"stream"`
	// MaxBytes bounds the stream; the oldest events go first.
	MaxBytes int `yaml:"max_bytes"`
	// MaxAge bounds how long an event is kept (a Go duration, "168h"; "0":
	// no age limit).
	MaxAge string `yaml:"max_age"`
}

// Defaults of the events stream.
const (
	DefaultEventsStream   = "FERRY_EVENTS"
	DefaultEventsMaxBytes = 1 << 30
	DefaultEventsMaxAge   = "168h"
	// MinEventsMaxBytes is the smallest stream allowed: it must hold a few
	// of the largest events.
	MinEventsMaxBytes = 1 << 20
)

// EventsOn reports whether the node keeps its events in a JetStream stream:
// nats.events.enabled, where auto means "with the embedded server".
func (c *Config) EventsOn() bool {
	switch c.NATS.Events.Enabled {
	case "true":
		return true
	case "false":
		return false
	}
	return c.NATS.URL == ""
}

// EventsMaxAge is nats.events.max_age parsed (0: no limit); Validate checked it.
func (c *Config) EventsMaxAge() time.Duration {
	d, _ := time.ParseDuration(c.NATS.Events.MaxAge)
	return d
}

// DefaultMemberLifetime is member_lifetime's default
// (membership.DefaultLifetime); MaxMemberLifetime bounds it.
const (
	DefaultMemberLifetime = "24h"
	MaxMemberLifetime     = 365 * 24 * time.Hour
)

// MemberLifetimeValue is member_lifetime parsed; Validate checked it.
func (c *Config) MemberLifetimeValue() time.Duration {
	d, _ := time.ParseDuration(c.MemberLifetime)
	return d
}

// AdminConfig is the operator HTTP API.
type AdminConfig struct {
	Listen string `yaml:"listen"`
}

// Limits bound what peers and apps may send.
type Limits struct {
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// AckRetentionHours keeps the delivery records of own changes that every
	// receiver acknowledged this long after the change was made; retention
	// then drops them (not a resource's current state, never the change
	// log). 0 keeps them forever; fractions of an hour are taken (0.05:
	// three minutes).
	AckRetentionHours float64 `yaml:"ack_retention_hours"`
	// IdempotencyWindowSeconds is how long a request's idempotency key is
	// remembered: a repeat within it gets the first answer.
	IdempotencyWindowSeconds int `yaml:"idempotency_window_seconds"`
	// MinFreeDiskMB is the free space kept under the data directory: below
	// it the node refuses writes (unavailable: disk almost full) so the
	// store can still compact and restart. 0: no reserve.
	MinFreeDiskMB int `yaml:"min_free_disk_mb"`
}

// Connections bound the node's open connections: partners and the reviewer
// stay connected, plus up to Neighbours other members (the gossip mesh);
// any other member is dialed when there is something to send it. Above Max
// open connections the least needed are closed.
type Connections struct {
	Neighbours int `yaml:"neighbours"`
	Max        int `yaml:"max"`
}

// Defaults of the connection bounds.
const (
	DefaultNeighbours     = 6
	DefaultMaxConnections = 48
)

// Defaults of the limits that are not in SPEC.md.
const (
	DefaultIdempotencyWindowSeconds = 120
	DefaultMinFreeDiskMB            = 256
)

// Review configures the review flow.
type Review struct {
	// NATSDecide lets apps decide on the reviewer through <prefix>.review.decide.
	NATSDecide bool `yaml:"nats_decide"`
	// Approvals is how many distinct reviewer nodes must accept the same
	// data before a request is decided (1..the review group's size).
	Approvals int `yaml:"approvals"`
}

// DefaultApprovals: one reviewer node's accept decides (source 000).
const DefaultApprovals = 1

// ReviewGroup is the review group's peer ids as configured: reviewers, or
// [reviewer], or none (no review flow). Validate checked them.
func (c *Config) ReviewGroup() []string {
	if len(c.Reviewers) > 0 {
		return c.Reviewers
	}
	if c.Reviewer != "" {
		return []string{c.Reviewer}
	}
	return nil
}

// ReviewerID is the reviewer a member addresses first: reviewer, or the
// first peer id of reviewers ("" for none). A reviewer node of a group is
// its own reviewer (peers.NewBook).
func (c *Config) ReviewerID() string {
	if c.Reviewer != "" {
		return c.Reviewer
	}
	if len(c.Reviewers) > 0 {
		return c.Reviewers[0]
	}
	return ""
}

// LogConfig sets the log output.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text, json
}

// Default returns a working configuration.
func Default() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "ferry"
	}
	return Config{
		Name:    host,
		Network: DefaultNetwork,
		Listen:  []string{DefaultTCPListen, DefaultQUICListen},
		NATS: NATSConfig{Listen: DefaultNATSListen, Prefix: DefaultNATSPrefix,
			Events: EventsConfig{Enabled: "auto", Stream: DefaultEventsStream, MaxBytes: DefaultEventsMaxBytes, MaxAge: DefaultEventsMaxAge}},
		Admin:          AdminConfig{Listen: DefaultAdminListen},
		MemberLifetime: DefaultMemberLifetime,
		Limits: Limits{MaxMessageBytes: protocols.DefaultMaxMessageBytes, AckRetentionHours: 24 * 7,
			IdempotencyWindowSeconds: DefaultIdempotencyWindowSeconds, MinFreeDiskMB: DefaultMinFreeDiskMB},
		Connections: Connections{Neighbours: DefaultNeighbours, Max: DefaultMaxConnections},
		Review:      Review{Approvals: DefaultApprovals},
		Log:         LogConfig{Level: "info", Format: "text"},
	}
}

// ConfigError names the key a configuration problem is in, and where it was
// set: the file and line (ferry.yaml:3), the environment variable or the
// flag; Where is empty for a key left at its default.
type ConfigError struct {
	Key   string
	Where string
	Err   error
	// phrased: Err names the key itself (unknown key `x`, `x` must be ...).
	phrased bool
}

func (e *ConfigError) Error() string {
	switch {
	case e.Where == "":
		return fmt.Sprintf("config: %s: %v", e.Key, e.Err)
	case e.phrased:
		return fmt.Sprintf("%s: %v", e.Where, e.Err)
	}
	return fmt.Sprintf("%s: %s: %v", e.Where, e.Key, e.Err)
}
func (e *ConfigError) Unwrap() error { return e.Err }

func cfgErr(key string, format string, args ...any) error {
	return &ConfigError{Key: key, Err: fmt.Errorf(format, args...)}
}

var (
	nameRe    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	subjectRe = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

// Validate checks every key and returns the first problem, naming its key
// and where it was set.
func (c *Config) Validate() error {
	err := c.validate()
	var ce *ConfigError
	if errors.As(err, &ce) && ce.Where == "" {
		ce.Where = c.Where(ce.Key)
	}
	return err
}

func (c *Config) validate() error {
	if !nameRe.MatchString(c.Name) {
		return cfgErr("name", "%q must be 1-64 letters, digits, '.', '_' or '-'", c.Name)
	}
	if !nameRe.MatchString(c.Network) {
		return cfgErr("network", "%q must be 1-64 letters, digits, '.', '_' or '-'", c.Network)
	}
	if len(c.Listen) == 0 {
		return cfgErr("listen", "at least one address is needed")
	}
	for i, a := range c.Listen {
		if _, err := ma.NewMultiaddr(a); err != nil {
			return cfgErr(fmt.Sprintf("listen[%d]", i), "%q: %v", a, err)
		}
	}
	for i, a := range c.Bootstrap {
		if _, err := peer.AddrInfoFromString(a); err != nil {
			return cfgErr(fmt.Sprintf("bootstrap[%d]", i), "%q is not a multiaddr ending in /p2p/<peer id>: %v", a, err)
		}
	}
	for i, p := range c.Partners {
		// A peer id, or a multiaddr ending in /p2p/<peer id>: the address of
		// a partner that is not a Ferry node, kept (peers/partners.go).
		if _, err := peers.ParsePartner(p); err != nil {
			return cfgErr(fmt.Sprintf("partners[%d]", i), "%v", err)
		}
	}
	for i, p := range c.Members {
		if _, err := peer.Decode(p); err != nil {
			return cfgErr(fmt.Sprintf("members[%d]", i), "%q is not a peer id: %v", p, err)
		}
	}
	if d, err := time.ParseDuration(c.MemberLifetime); err != nil || d < membership.MinLifetime || d > MaxMemberLifetime {
		return cfgErr("member_lifetime", "%q is not a duration from %v to %v like 24h", c.MemberLifetime, membership.MinLifetime, MaxMemberLifetime)
	}
	if c.Reviewer != "" {
		if _, err := peer.Decode(c.Reviewer); err != nil {
			return cfgErr("reviewer", "%q is not a peer id: %v", c.Reviewer, err)
		}
	}
	if err := c.validateReviewGroup(); err != nil {
		return err
	}
	if c.PrivateNetworkKey != "" {
		if _, err := os.Stat(c.PrivateNetworkKey); err != nil {
			return cfgErr("private_network_key", "%v", err)
		}
	}
	if c.NATS.URL != "" {
		for _, u := range strings.Split(c.NATS.URL, ",") {
			pu, err := url.Parse(strings.TrimSpace(u))
			if err != nil || pu.Host == "" {
				return cfgErr("nats.url", "%q is not a URL like nats://host:4222", u)
			}
		}
	} else if err := checkHostPort(c.NATS.Listen); err != nil {
		return cfgErr("nats.listen", "%v", err)
	}
	if !subjectRe.MatchString(c.NATS.Prefix) {
		return cfgErr("nats.prefix", "%q is not a NATS subject prefix (tokens of letters, digits, '_' or '-', joined by '.')", c.NATS.Prefix)
	}
	if c.NATS.Credentials != "" {
		if _, err := os.Stat(c.NATS.Credentials); err != nil {
			return cfgErr("nats.credentials", "%v", err)
		}
	}
	if err := checkHostPort(c.Admin.Listen); err != nil {
		return cfgErr("admin.listen", "%v", err)
	}
	if c.Limits.MaxMessageBytes < 1024 || c.Limits.MaxMessageBytes > MaxMessageBytesCap {
		return cfgErr("limits.max_message_bytes", "%d is outside 1024..%d", c.Limits.MaxMessageBytes, MaxMessageBytesCap)
	}
	if c.Limits.AckRetentionHours < 0 {
		return cfgErr("limits.ack_retention_hours", "%v is negative", c.Limits.AckRetentionHours)
	}
	if c.Limits.IdempotencyWindowSeconds < 1 || c.Limits.IdempotencyWindowSeconds > 7*24*3600 {
		return cfgErr("limits.idempotency_window_seconds", "%d is outside 1..604800", c.Limits.IdempotencyWindowSeconds)
	}
	if c.Limits.MinFreeDiskMB < 0 {
		return cfgErr("limits.min_free_disk_mb", "%d is negative", c.Limits.MinFreeDiskMB)
	}
	if err := c.validateEvents(); err != nil {
		return err
	}
	if c.Connections.Neighbours < 1 || c.Connections.Neighbours > 1000 {
		return cfgErr("connections.neighbours", "%d is outside 1..1000", c.Connections.Neighbours)
	}
	if c.Connections.Max < c.Connections.Neighbours+2 || c.Connections.Max > 10000 {
		return cfgErr("connections.max", "%d is outside %d..10000 (at least neighbours + 2)", c.Connections.Max, c.Connections.Neighbours+2)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return cfgErr("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return cfgErr("log.format", "%q is not text or json", c.Log.Format)
	}
	return nil
}

// validateReviewGroup checks reviewers and review.approvals against the
// review group (reviewer was checked before).
func (c *Config) validateReviewGroup() error {
	seen := map[string]int{}
	for i, p := range c.Reviewers {
		if _, err := peer.Decode(p); err != nil {
			return cfgErr(fmt.Sprintf("reviewers[%d]", i), "%q is not a peer id: %v", p, err)
		}
		if j, dup := seen[p]; dup {
			return cfgErr(fmt.Sprintf("reviewers[%d]", i), "%s is listed twice (also reviewers[%d])", p, j)
		}
		seen[p] = i
	}
	if _, in := seen[c.Reviewer]; c.Reviewer != "" && len(c.Reviewers) > 0 && !in {
		return cfgErr("reviewer", "%s is not in `reviewers`; list it there, or set only `reviewers` (it replaces `reviewer`)", c.Reviewer)
	}
	group := len(c.ReviewGroup())
	switch k := c.Review.Approvals; {
	case k < 1:
		return cfgErr("review.approvals", "%d is below 1 (the reviewer nodes that must accept a request's data)", k)
	case k > 1 && k > group:
		return cfgErr("review.approvals", "%d is more than the review group's %d reviewer(s) (`reviewers`, or `reviewer`)", k, group)
	}
	return nil
}

var streamRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// validateEvents checks nats.events.
func (c *Config) validateEvents() error {
	e := c.NATS.Events
	switch e.Enabled {
	case "auto", "true", "false":
	default:
		return cfgErr("nats.events.enabled", "%q is not auto, true or false", e.Enabled)
	}
	if !streamRe.MatchString(e.Stream) {
		return cfgErr("nats.events.stream", "%q is not a JetStream stream name (1-64 letters, digits, '_' or '-')", e.Stream)
	}
	if least := max(MinEventsMaxBytes, 4*c.Limits.MaxMessageBytes); e.MaxBytes < least {
		return cfgErr("nats.events.max_bytes", "%d is below %d bytes (at least 1 MiB and 4 x limits.max_message_bytes)", e.MaxBytes, least)
	}
	d, err := time.ParseDuration(e.MaxAge)
	if err != nil {
		return cfgErr("nats.events.max_age", "%q is not a duration like 168h (0: no limit)", e.MaxAge)
	}
	if d < 0 || (d > 0 && d < time.Minute) {
		return cfgErr("nats.events.max_age", "%q is under a minute (0: no limit)", e.MaxAge)
	}
	return nil
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", s, err)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Errorf("%q: host must be an IP address or localhost", s)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%q: port must be 0-65535", s)
	}
	return nil
}

// LoadFile reads a ferry.yaml over the defaults; a missing file is no error.
// Unknown keys are refused, so a typo does not pass silently; every error
// names the file and line (configload.go).
func LoadFile(path string) (Config, error) {
	c := Default()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	if err := decodeYAML(path, b, &c); err != nil {
		return c, err
	}
	return c, nil
}

// Save writes the configuration as YAML.
func (c *Config) Save(path string) error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// Setting is one configuration key with its env name and flag name, for
// overrides: nats.url is FERRY_NATS_URL and --nats-url.
type Setting struct {
	Key   string // nats.url
	Env   string // FERRY_NATS_URL
	Flag  string // nats-url
	field reflect.Value
}

// Settings lists every key of c, addressable for overrides.
func (c *Config) Settings() []Setting {
	var out []Setting
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := range t.NumField() {
			tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			key := prefix + tag
			f := v.Field(i)
			if f.Kind() == reflect.Struct {
				walk(f, key+".")
				continue
			}
			flat := strings.ReplaceAll(key, ".", "_")
			out = append(out, Setting{Key: key, Env: EnvPrefix + strings.ToUpper(flat),
				Flag: strings.ReplaceAll(flat, "_", "-"), field: f})
		}
	}
	walk(reflect.ValueOf(c).Elem(), "")
	return out
}

// Type names the setting's value as flag help shows it: string, int,
// float, bool or strings (a comma-separated list).
func (s Setting) Type() string {
	switch s.field.Kind() {
	case reflect.Int:
		return "int"
	case reflect.Float64:
		return "float"
	case reflect.Bool:
		return "bool"
	case reflect.Slice:
		return "strings"
	}
	return "string"
}

// Set parses a textual value into the setting (lists are comma-separated).
func (s Setting) Set(val string) error {
	switch s.field.Kind() {
	case reflect.String:
		s.field.SetString(val)
	case reflect.Int:
		n, err := strconv.Atoi(val)
		if err != nil {
			return cfgErr(s.Key, "%q is not a whole number", val)
		}
		s.field.SetInt(int64(n))
	case reflect.Float64:
		f, err := strconv.ParseFloat(val, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return cfgErr(s.Key, "%q is not a number", val)
		}
		s.field.SetFloat(f)
	case reflect.Bool:
		b, err := strconv.ParseBool(val)
		if err != nil {
			return cfgErr(s.Key, "%q is not true or false", val)
		}
		s.field.SetBool(b)
	case reflect.Slice:
		var parts []string
		for _, p := range strings.Split(val, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		s.field.Set(reflect.ValueOf(parts))
	default:
		return cfgErr(s.Key, "cannot be set from text")
	}
	return nil
}

// ApplyEnv overrides keys from FERRY_* environment variables.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	for _, s := range c.Settings() {
		if v, ok := lookup(s.Env); ok {
			if err := c.SetFrom(s, s.Env, v); err != nil {
				return err
			}
		}
	}
	return nil
}

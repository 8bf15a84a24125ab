package reviewgroup

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/wait"
)

// testTiming is short, so elections take well under a second; raft's rule
// LeaderLeaseTimeout <= HeartbeatTimeout <= ElectionTimeout holds.
// LeaderWait is its default: 2 x 300 + 2 x 300 ms.
var testTiming = Timing{
	HeartbeatTimeout:   300 * time.Millisecond,
	ElectionTimeout:    300 * time.Millisecond,
	LeaderLeaseTimeout: 200 * time.Millisecond,
	CommitTimeout:      20 * time.Millisecond,
	RPCTimeout:         2 * time.Second,
	ForwardTimeout:     5 * time.Second,
}

// testLogger logs WARN and above to the test output when -v is given
// (FERRY_TEST_RAFT_LOG=debug: everything), else nothing.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	level := slog.LevelWarn
	if os.Getenv("FERRY_TEST_RAFT_LOG") == "debug" {
		level = slog.LevelDebug - 4
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// cmd is the recorder's command: an id the caller retries with, and
// whether the state machine must refuse it.
type cmd struct {
	ID     string `json:"id"`
	Refuse bool   `json:"refuse,omitempty"`
}

func encode(id string) []byte {
	b, _ := json.Marshal(cmd{ID: id})
	return b
}

// outcome is what the recorder answered an id.
type outcome struct {
	Result  string `json:"result,omitempty"`
	Refused string `json:"refused,omitempty"`
}

// recorder is a state machine that records the commands it applied, in
// order, and deduplicates them by id: the pattern the review service uses.
// It keeps every id's answer beside its state (in the review service: the
// same Pebble batch), and answers a repeat with it, so a caller that
// retries a command whose Apply failed as unavailable never has it
// applied twice.
type recorder struct {
	mu       sync.Mutex
	applied  []string           // ids, in the order they were applied
	answers  map[string]outcome // id -> its answer
	dups     int                // repeats answered from answers
	restores int                // snapshots restored
}

func newRecorder() *recorder { return &recorder{answers: map[string]outcome{}} }

func (r *recorder) Apply(l *raft.Log) any {
	var c cmd
	if err := json.Unmarshal(l.Data, &c); err != nil || c.ID == "" {
		return fmt.Errorf("%w: not a command: %q", ferry.ErrBadRequest, l.Data)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	o, seen := r.answers[c.ID]
	switch {
	case seen:
		r.dups++
	case c.Refuse:
		o = outcome{Refused: fmt.Sprintf("%s refused by the state machine", c.ID)}
	default:
		r.applied = append(r.applied, c.ID)
		o = outcome{Result: fmt.Sprintf("%s#%d", c.ID, len(r.applied))}
	}
	r.answers[c.ID] = o
	if o.Refused != "" {
		return fmt.Errorf("%w: %s", ferry.ErrConflict, o.Refused)
	}
	return []byte(o.Result)
}

type recorderState struct {
	Applied []string           `json:"applied"`
	Answers map[string]outcome `json:"answers"`
}

func (r *recorder) Snapshot() (raft.FSMSnapshot, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := json.Marshal(recorderState{Applied: r.applied, Answers: r.answers})
	return snapshotBytes(b), err
}

func (r *recorder) Restore(rc io.ReadCloser) error {
	var s recorderState
	if err := json.NewDecoder(rc).Decode(&s); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied, r.answers = s.Applied, s.Answers
	r.restores++
	return nil
}

func (r *recorder) sequence() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.applied)
}

func (r *recorder) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.answers[id]
	return ok
}

func (r *recorder) restored() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.restores
}

func (r *recorder) duplicates() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dups
}

type snapshotBytes []byte

func (s snapshotBytes) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (snapshotBytes) Release() {}

// gater cuts a host off from peers at the libp2p level: no dial to them,
// no connection from them.
type gater struct {
	mu      sync.Mutex
	blocked map[peer.ID]bool
}

func (g *gater) set(p peer.ID, blocked bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.blocked == nil {
		g.blocked = map[peer.ID]bool{}
	}
	g.blocked[p] = blocked
}

func (g *gater) ok(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.blocked[p]
}

func (g *gater) InterceptPeerDial(p peer.ID) bool                 { return g.ok(p) }
func (g *gater) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool { return g.ok(p) }
func (g *gater) InterceptAccept(network.ConnMultiaddrs) bool      { return true }
func (g *gater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return g.ok(p)
}
func (g *gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

// member is one node of a test group: a real libp2p host on 127.0.0.1, a
// directory, a recorder and the Group.
type member struct {
	t     testing.TB
	c     *cluster
	name  string
	key   crypto.PrivKey
	id    peer.ID
	dir   string
	gate  *gater
	host  host.Host
	fsm   *recorder
	group *Group
	reg   *prometheus.Registry
}

// cluster is a test group's members, all allowed to talk to each other.
type cluster struct {
	t       testing.TB
	members []*member
	names   map[peer.ID]string
	timing  Timing
	tune    func(*Config)
}

// newCluster makes n members named A, B, C... with hosts (not started).
func newCluster(t testing.TB, n int) *cluster {
	c := &cluster{t: t, names: map[peer.ID]string{}, timing: testTiming}
	for i := range n {
		key, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := peer.IDFromPrivateKey(key)
		m := &member{t: t, c: c, name: string(rune('A' + i)), key: key, id: id, dir: filepath.Join(t.TempDir(), "raft"), gate: &gater{}}
		c.names[id] = m.name
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.newHost()
		t.Cleanup(m.stop)
	}
	return c
}

func (c *cluster) name(p peer.ID) string {
	if n, ok := c.names[p]; ok {
		return n
	}
	return p.String()
}

func (c *cluster) allowed(p peer.ID) bool { _, ok := c.names[p]; return ok }

func (c *cluster) ids(ms ...*member) []peer.ID {
	var out []peer.ID
	for _, m := range ms {
		out = append(out, m.id)
	}
	return out
}

// newHost starts the member's host (again, after a restart: a new port)
// and tells every other host where it listens.
func (m *member) newHost() {
	h, err := libp2p.New(
		libp2p.Identity(m.key),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ConnectionGater(m.gate),
		libp2p.DisableRelay(),
	)
	if err != nil {
		m.t.Fatal(err)
	}
	m.host = h
	for _, o := range m.c.members {
		if o == m || o.host == nil {
			continue
		}
		o.host.Peerstore().SetAddrs(m.id, h.Addrs(), peerstore.PermanentAddrTTL)
		h.Peerstore().SetAddrs(o.id, o.host.Addrs(), peerstore.PermanentAddrTTL)
	}
}

// start builds and starts the member's group with a fresh recorder.
func (m *member) start(bootstrap []peer.ID) {
	m.t.Helper()
	m.fsm = newRecorder()
	m.reg = prometheus.NewRegistry()
	cfg := Config{
		Host: m.host, Dir: m.dir, Bootstrap: bootstrap, FSM: m.fsm,
		Allowed: m.c.allowed, Name: m.c.name, Registry: m.reg,
		Logger: testLogger(m.t).With("member", m.name), Timing: m.c.timing,
	}
	if m.c.tune != nil {
		m.c.tune(&cfg)
	}
	g, err := New(cfg)
	if err != nil {
		m.t.Fatal(err)
	}
	m.group = g
	if err := g.Start(); err != nil {
		m.t.Fatal(err)
	}
}

// closeGroup closes the member's group, keeping its host.
func (m *member) closeGroup() {
	if m.group != nil {
		if err := m.group.Close(); err != nil {
			m.t.Errorf("%s: close: %v", m.name, err)
		}
		m.group = nil
	}
}

// stop closes the group and the host (a restart makes new ones).
func (m *member) stop() {
	m.closeGroup()
	if m.host != nil {
		_ = m.host.Close()
		m.host = nil
	}
}

// restart stops the member and starts it again from its directory, with a
// new host (same key, new port) and a new, empty recorder.
func (m *member) restart(bootstrap []peer.ID) {
	m.stop()
	m.newHost()
	m.start(bootstrap)
}

// cut separates m from the others at the libp2p level, both ways: the
// gaters refuse every dial and connection between them, and the open
// connections are closed.
func (c *cluster) cut(m *member, cut bool) {
	for _, o := range c.members {
		if o == m || o.host == nil {
			continue
		}
		m.gate.set(o.id, cut)
		o.gate.set(m.id, cut)
		if cut {
			_ = m.host.Network().ClosePeer(o.id)
			_ = o.host.Network().ClosePeer(m.id)
		}
	}
}

// leader waits until every member given agrees on one leader among them,
// which knows it leads, and returns it.
func (c *cluster) leader(timeout time.Duration, ms ...*member) *member {
	c.t.Helper()
	var found *member
	wait.Until(c.t, timeout, "the members agree on a leader", func() error {
		var views []string
		found = nil
		var first peer.ID
		agree := true
		for i, m := range ms {
			l, ok := m.group.Leader()
			views = append(views, fmt.Sprintf("%s sees %s (%s)", m.name, c.name(l), m.group.State()))
			if !ok || (i > 0 && l != first) {
				agree = false
			}
			if i == 0 {
				first = l
			}
		}
		if agree {
			for _, m := range ms {
				if m.id == first && m.group.State() == raft.Leader {
					found = m
				}
			}
		}
		if found == nil {
			return fmt.Errorf("%s", strings.Join(views, "; "))
		}
		return nil
	})
	return found
}

// apply applies id through m within 10 s.
func (m *member) apply(id string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return m.group.Apply(ctx, encode(id))
}

// mustApply applies id through m and checks the recorder's answer.
func (m *member) mustApply(id string) {
	m.t.Helper()
	res, err := m.apply(id)
	if err != nil {
		m.t.Fatalf("%s: apply %s: %v", m.name, id, err)
	}
	if !strings.HasPrefix(string(res), id+"#") {
		m.t.Fatalf("%s: apply %s answered %q", m.name, id, res)
	}
}

// sameSequence waits until every member given applied want, in order.
func (c *cluster) sameSequence(timeout time.Duration, want []string, ms ...*member) {
	c.t.Helper()
	wait.Until(c.t, timeout, "every member applied the same sequence", func() error {
		for _, m := range ms {
			if got := m.fsm.sequence(); !slices.Equal(got, want) {
				return fmt.Errorf("%s applied %d commands %v, want %d %v", m.name, len(got), short(got), len(want), short(want))
			}
		}
		return nil
	})
}

// short is the first and last few of a sequence, for messages.
func short(s []string) []string {
	if len(s) <= 8 {
		return s
	}
	return append(append(slices.Clone(s[:4]), "..."), s[len(s)-4:]...)
}

// gauge reads a metric's value from a member's registry (the sum over its
// labels); ok is false when it is not there.
func (m *member) gauge(name string) (float64, bool) {
	mfs, err := m.reg.Gather()
	if err != nil {
		m.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var v float64
		for _, x := range mf.GetMetric() {
			switch {
			case x.Gauge != nil:
				v += x.Gauge.GetValue()
			case x.Counter != nil:
				v += x.Counter.GetValue()
			}
		}
		return v, true
	}
	return 0, false
}

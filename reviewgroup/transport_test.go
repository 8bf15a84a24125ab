package reviewgroup

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// openRaw opens a raw stream from m's host to p on id and writes b.
func openRaw(t *testing.T, m *member, p peer.ID, id protocol.ID, b []byte) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := m.host.NewStream(ctx, p, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Reset() })
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write(b); err != nil && !errors.Is(err, network.ErrReset) {
		t.Fatal(err)
	}
	return s
}

// expectReset reads s until it fails and checks that it was reset.
func expectReset(t *testing.T, s network.Stream, what string) {
	t.Helper()
	_, err := io.ReadAll(s)
	if !errors.Is(err, network.ErrReset) {
		t.Fatalf("%s: the stream ended with %v, want a reset", what, err)
	}
}

// frame is a forward frame: a varint length and the message.
func frame(t *testing.T, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.AppendUvarint(nil, uint64(len(b))), b...)
}

// readReply reads one ForwardReply from s.
func readReply(t *testing.T, s network.Stream) *pb.ForwardReply {
	t.Helper()
	_ = s.CloseWrite()
	rep := &pb.ForwardReply{}
	if err := protocols.NewFrameReader(s, DefaultMaxCommandBytes+forwardOverhead).Read(rep); err != nil {
		t.Fatalf("read the reply: %v", err)
	}
	return rep
}

// Only peers the group allows talk to it: a stranger's raft and forward
// streams are reset at open, and the group never dials one. An allowed peer
// that sends bad input gets a reset stream (a frame over the limit, bytes
// that are no message, raft bytes that are no RPC) or a clear refusal (an
// unknown op, a command from a peer that is not a server of the group); the
// group goes on.
func TestStrangersAndBadInput(t *testing.T) {
	c := newCluster(t, 2)
	a, b := c.members[0], c.members[1]
	a.start(c.ids(a))
	c.leader(10*time.Second, a)
	a.mustApply("one")

	stranger := newCluster(t, 1).members[0]
	stranger.host.Peerstore().AddAddrs(a.id, a.host.Addrs(), time.Hour)
	for _, id := range []protocol.ID{protocols.ReviewRaft, protocols.ReviewForward} {
		s := openRaw(t, stranger, a.id, id, frame(t, &pb.ForwardRequest{Op: pb.ForwardOp_FORWARD_OP_STATUS}))
		expectReset(t, s, "a stranger's "+string(id)+" stream")
	}
	if _, err := a.group.layer.Dial(raft.ServerAddress(stranger.id.String()), time.Second); err == nil || !strings.Contains(err.Error(), "not a member of the group here") {
		t.Fatalf("dialing a stranger answered %v", err)
	}
	if _, err := a.group.layer.Dial("not-a-peer-id", time.Second); err == nil || !strings.Contains(err.Error(), "is not a peer id") {
		t.Fatalf("dialing a bad address answered %v", err)
	}

	// b is allowed, but not a server of the group.
	over := binary.AppendUvarint(nil, DefaultMaxCommandBytes+forwardOverhead+1)
	expectReset(t, openRaw(t, b, a.id, protocols.ReviewForward, append(over, 1, 2, 3)), "a frame over the limit")
	expectReset(t, openRaw(t, b, a.id, protocols.ReviewForward, []byte{3, 0xff, 0xff, 0xff}), "a frame that is no message")
	s := openRaw(t, b, a.id, protocols.ReviewForward, frame(t, &pb.ForwardRequest{Op: 99}))
	if rep := readReply(t, s); rep.Code != ferry.CodeBadRequest || !strings.Contains(rep.Message, "unknown forward op 99") {
		t.Fatalf("an unknown op answered %+v", rep)
	}
	s = openRaw(t, b, a.id, protocols.ReviewForward, frame(t, &pb.ForwardRequest{Op: pb.ForwardOp_FORWARD_OP_ADD_VOTER, Peer: []byte("x")}))
	if rep := readReply(t, s); rep.Code != ferry.CodeBadRequest || !strings.Contains(rep.Message, "not a peer id") {
		t.Fatalf("adding a bad peer id answered %+v", rep)
	}
	s = openRaw(t, b, a.id, protocols.ReviewForward, frame(t, &pb.ForwardRequest{Op: pb.ForwardOp_FORWARD_OP_APPLY, Command: encode("from-b")}))
	if rep := readReply(t, s); rep.Code != ferry.CodeForbidden {
		t.Fatalf("a command of a peer outside the configuration answered %+v", rep)
	}
	s = openRaw(t, b, a.id, protocols.ReviewForward, frame(t, &pb.ForwardRequest{Op: pb.ForwardOp_FORWARD_OP_STATUS}))
	if rep := readReply(t, s); rep.Code != "" || rep.Status.GetState() != "Leader" || rep.Status.GetAppliedIndex() == 0 {
		t.Fatalf("a status answered %+v", rep)
	}
	// Raft bytes that are no RPC: raft drops the stream.
	raw := openRaw(t, b, a.id, protocols.ReviewRaft, []byte{0xee, 1, 2, 3})
	if _, err := io.ReadAll(raw); err != nil && !errors.Is(err, network.ErrReset) {
		t.Fatalf("a raft stream with an unknown RPC ended with %v, want its end or a reset", err)
	}
	a.mustApply("two")
	if got := a.fsm.sequence(); len(got) != 2 {
		t.Fatalf("applied %v", got)
	}
}

// New names what is wrong with a config, holds its directory against a
// second group, and leaves nothing registered when it fails.
func TestNewRefusesBadConfig(t *testing.T) {
	c := newCluster(t, 2)
	h := c.members[0].host
	dir := t.TempDir()
	ok := Config{Host: h, Dir: dir, FSM: newRecorder(), Allowed: c.allowed}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"host", func(c *Config) { c.Host = nil }, "Config.Host is required"},
		{"dir", func(c *Config) { c.Dir = "" }, "Config.Dir is required"},
		{"fsm", func(c *Config) { c.FSM = nil }, "Config.FSM is required"},
		{"allowed", func(c *Config) { c.Allowed = nil }, "Config.Allowed is required"},
		{"self", func(cfg *Config) { cfg.Self = c.members[1].id }, "is not the host's peer id"},
		{"bootstrap", func(c *Config) { c.Bootstrap = []peer.ID{"x"} }, "Config.Bootstrap"},
		{"timing", func(c *Config) {
			c.Timing = Timing{HeartbeatTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: time.Second}
		}, "Config.Timing: LeaderLeaseTimeout"},
		{"size", func(c *Config) { c.MaxCommandBytes = -1 }, "Config.MaxCommandBytes"},
	} {
		cfg := ok
		tc.edit(&cfg)
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New answered %v, want %q", tc.name, err, tc.want)
		}
	}

	reg := prometheus.NewRegistry()
	cfg := ok
	cfg.Registry = reg
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dir = t.TempDir()
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "register metric") {
		t.Fatalf("a second group on one registry: New answered %v", err)
	}
	if _, err := New(ok); err == nil || !strings.Contains(err.Error(), "is held by another process") {
		t.Fatalf("a second group on one directory: New answered %v", err)
	}
	if err := g.Close(); err != nil { // never started
		t.Fatal(err)
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("%d metrics left registered after Close", len(mfs))
	}
	if _, err := g.Apply(context.Background(), encode("x")); !errors.Is(err, ferry.ErrUnavailable) {
		t.Fatalf("Apply on a group never started answered %v", err)
	}
	if err := g.Start(); err == nil {
		t.Fatal("Start after Close succeeded")
	}
	g, err = New(ok) // the directory is free again
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err == nil {
		t.Fatal("a second Start succeeded")
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
}

// A group that has not been bootstrapped and has no leader answers Apply
// unavailable once LeaderWait is over, naming itself.
func TestNoLeaderAnswersUnavailable(t *testing.T) {
	c := newCluster(t, 3)
	c.timing.LeaderWait = 300 * time.Millisecond
	a := c.members[0]
	a.start(c.ids(c.members...)) // the others never start
	start := time.Now()
	_, err := a.apply("lonely")
	if !errors.Is(err, ferry.ErrUnavailable) || !strings.Contains(err.Error(), "review group A, B, C has no leader reachable from A (reachable: none; unreachable: B, C)") {
		t.Fatalf("Apply without a majority answered %v", err)
	}
	if time.Since(start) < c.timing.LeaderWait {
		t.Fatalf("Apply gave up after %v, before LeaderWait %v", time.Since(start), c.timing.LeaderWait)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := a.group.Barrier(ctx); !errors.Is(err, ferry.ErrUnavailable) {
		t.Fatalf("Barrier without a majority answered %v", err)
	}
}

// Errors that crossed the wire keep their sentinel, code for code.
func TestRemoteErrorKeepsSentinel(t *testing.T) {
	for code, sentinel := range sentinels {
		if ferry.Code(sentinel) != code {
			t.Fatalf("code %s maps to %v, whose code is %s", code, sentinel, ferry.Code(sentinel))
		}
		err := remoteError(code, "m", "")
		if !errors.Is(err, sentinel) || ferry.Code(err) != code {
			t.Fatalf("a remote %s error is not %v", code, sentinel)
		}
	}
	if err := remoteError("from-the-future", "m", ""); !errors.Is(err, ferry.ErrUnavailable) {
		t.Fatal("an unknown code is not unavailable")
	}
}

// raft's log lines reach slog at the mapped level, with their pairs; while
// the group closes, raft's errors are debug lines.
func TestHclogAdapter(t *testing.T) {
	var buf bytes.Buffer
	var closing atomic.Bool
	h := newHclog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &closing)
	l := h.Named("transport").With("k", "v")
	l.Error("boom", "err", "x")
	l.Trace("hidden")
	closing.Store(true)
	l.Error("during close")
	out := buf.String()
	for _, want := range []string{`level=ERROR msg=boom logger=raft.transport k=v err=x`, `level=DEBUG msg="during close"`} {
		if !strings.Contains(out, want) {
			t.Fatalf("log %q lacks %q", out, want)
		}
	}
	if strings.Contains(out, "hidden") || h.IsTrace() || !h.IsDebug() || h.GetLevel() != hclog.Debug {
		t.Fatalf("levels: %q, trace %v", out, h.IsTrace())
	}
	h.StandardLogger(nil).Print("std line")
	if !strings.Contains(buf.String(), `msg="std line"`) {
		t.Fatal("the standard logger's line is missing")
	}
}

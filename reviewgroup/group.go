package reviewgroup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.etcd.io/bbolt"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/inbound"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// Files in Config.Dir.
const (
	// LogFile holds raft's log and stable store (BoltDB, fsynced on every
	// write).
	LogFile = "raft.db"
	// snapshotsRetained is how many snapshots raft's file snapshot store
	// keeps (in Dir/snapshots/).
	snapshotsRetained = 2
	// logCacheSize is how many recent log entries raft keeps in memory in
	// front of BoltDB.
	logCacheSize = 512
	// boltOpenTimeout bounds the wait for raft.db's file lock: a second
	// process on the same directory fails instead of waiting for ever.
	boltOpenTimeout = time.Second
	// foundingFile marks a founder that bootstrapped alone and has not yet
	// taken its first, compacting snapshot (Config.PriorState).
	foundingFile = "founding"
	// transportPool is how many idle raft streams are kept per member.
	transportPool = 3
)

// Group is one member's part of the review group. Build it with New, then
// Start; Close stops it (also after a failed Start).
type Group struct {
	cfg     Config
	log     *slog.Logger
	hlog    *hclogAdapter
	closing atomic.Bool

	bolt     *raftboltdb.BoltStore
	logs     raft.LogStore
	snaps    raft.SnapshotStore
	fsm      *fsm
	hasState bool

	layer *streamLayer
	m     *metrics

	raft     atomic.Pointer[raft.Raft]
	observer *raft.Observer
	// founding is set while the founder's first snapshot is not taken
	// (Config.PriorState): adding a voter waits for it.
	founding atomic.Bool

	mu         sync.Mutex
	started    bool
	leaderWake chan struct{} // closed and replaced when the leader changes

	ctx       context.Context
	cancel    context.CancelFunc
	g         lifecycle.Group
	closeOnce sync.Once
	closeErr  error
}

// New opens the group's durable state in cfg.Dir and registers its metrics.
// Nothing runs until Start.
func New(cfg Config) (*Group, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("review group: %w", err)
	}
	log := cfg.Logger.With("component", "reviewgroup")
	g := &Group{cfg: cfg, log: log, fsm: &fsm{user: cfg.FSM}, leaderWake: make(chan struct{})}
	g.hlog = newHclog(log, &g.closing)
	path := filepath.Join(cfg.Dir, LogFile)
	g.bolt, err = raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &bbolt.Options{Timeout: boltOpenTimeout}})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("review group: %s is held by another process", path)
	}
	if err != nil {
		return nil, fmt.Errorf("review group: open %s: %w", path, err)
	}
	fail := func(err error) (*Group, error) {
		_ = g.bolt.Close()
		return nil, err
	}
	if g.logs, err = raft.NewLogCache(logCacheSize, g.bolt); err != nil {
		return fail(fmt.Errorf("review group: %w", err))
	}
	if g.snaps, err = raft.NewFileSnapshotStoreWithLogger(cfg.Dir, snapshotsRetained, g.hlog.Named("snapshots")); err != nil {
		return fail(fmt.Errorf("review group: snapshots in %s: %w", cfg.Dir, err))
	}
	if g.hasState, err = raft.HasExistingState(g.logs, g.bolt, g.snaps); err != nil {
		return fail(fmt.Errorf("review group: read the state in %s: %w", cfg.Dir, err))
	}
	g.layer = newStreamLayer(cfg.Host, cfg.Allowed)
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.m = newMetrics(g)
	if err := g.m.register(cfg.Registry); err != nil {
		g.cancel()
		return fail(err)
	}
	return g, nil
}

// Start serves the group's protocols and starts raft. The first time a
// member with an empty Dir that is in Config.Bootstrap starts, it
// bootstraps the group with those voters.
func (g *Group) Start() error {
	g.mu.Lock()
	if g.started || g.g.Closed() {
		g.mu.Unlock()
		return errors.New("review group: Start called twice, or after Close")
	}
	g.started = true
	g.mu.Unlock()

	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  g.layer,
		MaxPool: transportPool,
		Timeout: g.cfg.Timing.RPCTimeout,
		Logger:  g.hlog.Named("transport"),
	})
	h := g.cfg.Host
	inbound.Handle(h, &g.g, protocols.ReviewRaft, protocols.ServiceReviewGroup, raftStreamReserve, g.cfg.Allowed, g.log, g.layer.serve)
	inbound.Handle(h, &g.g, protocols.ReviewForward, protocols.ServiceReviewGroup, forwardReserve, g.cfg.Allowed, g.log, g.serveForward)

	rc := g.cfg.raftConfig()
	rc.Logger = g.hlog
	r, err := raft.NewRaft(rc, g.fsm, g.logs, g.bolt, g.snaps, trans)
	if err != nil {
		_ = trans.Close()
		return fmt.Errorf("review group: start raft: %w", err)
	}
	obs := make(chan raft.Observation, 64)
	g.observer = raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(g.observer)
	g.raft.Store(r)
	g.g.Go(func() { g.observe(obs) })

	founder := g.cfg.Self == g.cfg.Founder
	switch {
	case !g.hasState && founder && g.cfg.PriorState:
		// The mark first: a founder stopped before its snapshot takes it
		// at its next start.
		if err := os.WriteFile(filepath.Join(g.cfg.Dir, foundingFile), nil, 0o600); err != nil {
			return fmt.Errorf("review group: %w", err)
		}
		self := raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(g.cfg.Self.String()), Address: raft.ServerAddress(g.cfg.Self.String())}
		if err := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{self}}).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("review group: bootstrap: %w", err)
		}
		g.log.Info("review group founded by this reviewer alone: its ledger predates the group; the others join from a snapshot of it once added (ferry reviewers add ID)",
			"founder", g.cfg.Name(g.cfg.Self), "listed", g.groupName())
	case !g.hasState && founder:
		var c raft.Configuration
		for _, p := range g.cfg.Bootstrap {
			s := raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.String()), Address: raft.ServerAddress(p.String())}
			if !slices.Contains(c.Servers, s) {
				c.Servers = append(c.Servers, s)
			}
		}
		if err := r.BootstrapCluster(c).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("review group: bootstrap: %w", err)
		}
		g.log.Info("review group bootstrapped by this reviewer, its founder, with every listed reviewer", "voters", g.groupName())
	case g.hasState:
		g.log.Info("review group started from its state", "dir", g.cfg.Dir, "voters", g.groupName(), "bootstrap_ignored", len(g.cfg.Bootstrap) > 0)
	case slices.Contains(g.cfg.Bootstrap, g.cfg.Self):
		g.log.Info("review group started empty: waiting for the group to reach this reviewer (its founder bootstraps it, or it adds this one)",
			"dir", g.cfg.Dir, "founder", g.cfg.Name(g.cfg.Founder))
	default:
		g.log.Info("review group started empty: waiting for the leader to add this member", "dir", g.cfg.Dir)
	}
	if _, err := os.Stat(filepath.Join(g.cfg.Dir, foundingFile)); err == nil {
		g.founding.Store(true)
		g.g.Go(g.foundingSnapshot)
	}
	return nil
}

// Founding snapshot timing: how long to wait between attempts.
const foundingRetry = 200 * time.Millisecond

// foundingSnapshot takes the founder's first snapshot once its state
// machine applied the group's first entry, with raft's TrailingLogs at 0
// for that one snapshot: the whole log is compacted, so a member added
// later cannot be sent the log from its start (which does not hold the
// ledger made before it) and is sent the snapshot. It also runs at a
// restart of a founder that stopped before it (no snapshot in Dir).
func (g *Group) foundingSnapshot() {
	defer g.founding.Store(false)
	r := g.raft.Load()
	for {
		err := g.fsm.waitApplied(g.ctx, 1)
		if err == nil {
			err = g.compactingSnapshot(r)
		}
		if err == nil || g.ctx.Err() != nil {
			return
		}
		g.log.Warn("review group: the founder's snapshot failed; trying again", "err", err)
		select {
		case <-time.After(foundingRetry):
		case <-g.ctx.Done():
			return
		}
	}
}

// compactingSnapshot takes a snapshot that leaves no log entry behind it.
func (g *Group) compactingSnapshot(r *raft.Raft) error {
	rc := r.ReloadableConfig()
	trailing := rc.TrailingLogs
	rc.TrailingLogs = 0
	if err := r.ReloadConfig(rc); err != nil {
		return fmt.Errorf("lower TrailingLogs: %w", err)
	}
	defer func() {
		rc.TrailingLogs = trailing
		if err := r.ReloadConfig(rc); err != nil {
			g.log.Warn("review group: TrailingLogs not restored after the founder's snapshot", "err", err)
		}
	}()
	f := r.Snapshot()
	if err := f.Error(); err != nil {
		return err
	}
	meta, rc2, err := f.Open()
	if err != nil {
		return err
	}
	_ = rc2.Close()
	if err := os.Remove(filepath.Join(g.cfg.Dir, foundingFile)); err != nil {
		return err
	}
	g.log.Info("review group: the founder's ledger is in a snapshot and the log before it is compacted; reviewers added from now on start from it",
		"snapshot_index", meta.Index, "bytes", meta.Size)
	return nil
}

// observe follows raft's leader changes: the metric, the log, and a wake-up
// for the calls waiting for a leader.
func (g *Group) observe(obs <-chan raft.Observation) {
	var last raft.ServerID
	for {
		select {
		case o := <-obs:
			lo, ok := o.Data.(raft.LeaderObservation)
			if !ok {
				continue
			}
			if lo.LeaderID != "" && lo.LeaderID != last {
				g.m.leaderChanges.Inc()
				name := string(lo.LeaderID)
				if p, err := peer.Decode(name); err == nil {
					name = g.cfg.Name(p)
				}
				g.log.Info("review group leader", "leader", name)
			}
			last = lo.LeaderID
			g.mu.Lock()
			close(g.leaderWake)
			g.leaderWake = make(chan struct{})
			g.mu.Unlock()
		case <-g.ctx.Done():
			return
		}
	}
}

// leaderChanged is closed at the next leader change.
func (g *Group) leaderChanged() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.leaderWake
}

// Close stops the group: a leader first hands its leadership to another
// voter (bounded by raft's election timeout) so the group does not wait a
// heartbeat timeout to notice; then raft stops, every stream ends, every
// goroutine is waited for, and the log is closed. Idempotent.
func (g *Group) Close() error {
	g.closeOnce.Do(func() {
		g.closing.Store(true)
		r := g.raft.Load()
		if r != nil && r.State() == raft.Leader && len(g.voters()) > 1 {
			if err := r.LeadershipTransfer().Error(); err != nil {
				g.log.Debug("review group: leadership not handed over before close", "err", err)
			}
		}
		g.g.Shut()
		g.cancel()
		g.cfg.Host.RemoveStreamHandler(protocols.ReviewForward)
		g.cfg.Host.RemoveStreamHandler(protocols.ReviewRaft)
		if r != nil {
			r.DeregisterObserver(g.observer)
			// Waits for raft's goroutines, then closes the transport,
			// which closes the layer.
			if err := r.Shutdown().Error(); err != nil {
				g.closeErr = fmt.Errorf("review group: stop raft: %w", err)
			}
		}
		_ = g.layer.Close()
		g.g.Close()
		if err := g.bolt.Close(); err != nil && g.closeErr == nil {
			g.closeErr = fmt.Errorf("review group: close %s: %w", LogFile, err)
		}
		g.m.unregister(g.cfg.Registry)
	})
	return g.closeErr
}

// Leader is the leader this member knows, if any.
func (g *Group) Leader() (peer.ID, bool) {
	r := g.raft.Load()
	if r == nil {
		return "", false
	}
	_, id := r.LeaderWithID()
	if id == "" {
		return "", false
	}
	p, err := peer.Decode(string(id))
	if err != nil {
		return "", false
	}
	return p, true
}

// State is this member's raft state (Shutdown before Start and after
// Close, or once it was removed from the group).
func (g *Group) State() raft.RaftState {
	if r := g.raft.Load(); r != nil {
		return r.State()
	}
	return raft.Shutdown
}

// Voters are the voters of the latest configuration this member knows.
func (g *Group) Voters() []peer.ID { return g.voters() }

// voters are the voters of the latest configuration this member knows
// (Bootstrap before Start).
func (g *Group) voters() []peer.ID {
	r := g.raft.Load()
	if r == nil {
		return g.cfg.Bootstrap
	}
	f := r.GetConfiguration()
	if f.Error() != nil {
		return g.cfg.Bootstrap
	}
	var out []peer.ID
	for _, s := range f.Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		if p, err := peer.Decode(string(s.ID)); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// step is the outcome of one attempt at an operation on the leader.
type step struct {
	result []byte
	index  uint64 // the log index of the entry (also with a refusal of the state machine)
	err    error
	retry  bool // certainly not done: another leader, or later, may do it
}

// Apply appends cmd to the group's log, on the leader or forwarded to it,
// and returns the state machine's result once the command is committed and
// applied. On a follower it also waits (within ctx) until its own state
// machine applied the command, so a read of the local state after Apply
// sees it.
//
// Errors: the state machine's own (a refusal: the command was applied); or
// one wrapping ferry.ErrUnavailable: no leader was reachable within
// Timing.LeaderWait or ctx (nothing was done, the message names the group
// and whom this member reaches), or the command's fate is not known (the
// leader lost its leadership, the answer was lost): retry it with the same
// id.
func (g *Group) Apply(ctx context.Context, cmd []byte) ([]byte, error) {
	if len(cmd) > g.cfg.MaxCommandBytes {
		return nil, fmt.Errorf("%w: a review group command of %d bytes is over the limit of %d", ferry.ErrTooLarge, len(cmd), g.cfg.MaxCommandBytes)
	}
	req := &pb.ForwardRequest{Op: pb.ForwardOp_FORWARD_OP_APPLY, Command: cmd}
	st, via := g.onLeader(ctx, func(ctx context.Context) step { return g.applyLocal(ctx, cmd) }, req, false)
	if via == viaForward && st.index > 0 {
		if err := g.waitApplied(ctx, st.index); err != nil && st.err == nil {
			st.err = fmt.Errorf("%w: review group %s: the command committed at index %d, but this member has not applied it yet (%v): retry it with the same id to read its result here",
				ferry.ErrUnavailable, g.groupName(), st.index, err)
		}
	}
	g.m.applied(via, st.err)
	if st.err != nil {
		return nil, st.err
	}
	return st.result, nil
}

// applyLocal applies cmd on this member, the leader.
func (g *Group) applyLocal(ctx context.Context, cmd []byte) step {
	r := g.raft.Load()
	f := r.Apply(cmd, g.enqueueTimeout(ctx))
	if err := g.await(ctx, f); err != nil {
		return g.failed("the command", err, false)
	}
	if err, ok := f.Response().(error); ok {
		return step{err: err, index: f.Index()}
	}
	res, _ := f.Response().([]byte)
	return step{result: res, index: f.Index()}
}

// failed sorts an error of raft: retry where raft certainly did nothing
// (or, for an idempotent operation, whatever it did), an uncertain outcome
// otherwise.
func (g *Group) failed(what string, err error, idempotent bool) step {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrEnqueueTimeout):
		return step{retry: true, err: err}
	case errors.Is(err, raft.ErrRaftShutdown):
		return step{err: fmt.Errorf("%w: review group: this member has stopped (closed, or removed from the group)", ferry.ErrUnavailable)}
	case idempotent && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded):
		return step{retry: true, err: err}
	}
	return step{err: g.uncertain(what, err)}
}

// enqueueTimeout bounds raft's wait to take an operation: what is left of
// ctx, or ForwardTimeout.
func (g *Group) enqueueTimeout(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return g.cfg.Timing.ForwardTimeout
}

// await waits for a raft future within ctx. The goroutine that waits for
// it ends when raft answers it, which raft does at the latest when it shuts
// down.
func (g *Group) await(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	if !g.g.Go(func() { done <- f.Error() }) {
		return f.Error()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// How an operation reached the leader.
const (
	viaLeader  = "leader"    // this member led and did it
	viaForward = "forwarded" // a follower forwarded it
	viaNone    = "none"      // no leader did it
)

// onLeader runs an operation where the leader is: local when this member
// leads, else forwarded with req. It tries again while the attempt surely
// did nothing (no leader, a leader that does not answer or is not the
// leader any more), for at most Timing.LeaderWait and within ctx.
func (g *Group) onLeader(ctx context.Context, local func(context.Context) step, req *pb.ForwardRequest, idempotent bool) (step, string) {
	if g.raft.Load() == nil {
		return step{err: errNotStarted}, viaNone
	}
	if err := ctx.Err(); err != nil {
		return step{err: fmt.Errorf("%w: review group: %w", ferry.ErrUnavailable, err)}, viaNone
	}
	var since time.Time
	var lastLeader peer.ID
	var lastErr error
	pause := 5 * time.Millisecond
	for {
		wake := g.leaderChanged()
		var st step
		via := viaNone
		leader, ok := g.Leader()
		switch {
		case ok && leader == g.cfg.Self:
			st, via = local(ctx), viaLeader
		case ok:
			st, via = g.forward(ctx, leader, req, idempotent), viaForward
			lastLeader = leader
		default:
			st = step{retry: true}
		}
		if !st.retry {
			return st, via
		}
		if st.err != nil {
			lastErr = st.err
		}
		if g.ctx.Err() != nil {
			return step{err: fmt.Errorf("%w: review group: this member is closing", ferry.ErrUnavailable)}, viaNone
		}
		if since.IsZero() {
			since = time.Now()
		}
		left := g.cfg.Timing.LeaderWait - time.Since(since)
		if left <= 0 {
			return step{err: g.noLeader(lastLeader, lastErr)}, viaNone
		}
		t := time.NewTimer(min(pause, left))
		pause = min(2*pause, g.cfg.Timing.HeartbeatTimeout/4)
		select {
		case <-wake:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return step{err: g.noLeader(lastLeader, ctx.Err())}, viaNone
		case <-g.ctx.Done():
		}
		t.Stop()
	}
}

// Barrier returns once this member's state machine has applied every entry
// committed before the call (a read of the local state after it is not
// stale). On the leader it is raft's barrier; a follower asks the leader
// for one and waits until it applied as far.
func (g *Group) Barrier(ctx context.Context) error {
	req := &pb.ForwardRequest{Op: pb.ForwardOp_FORWARD_OP_READ_INDEX}
	st, via := g.onLeader(ctx, g.barrierLocal, req, true)
	if st.err != nil {
		return st.err
	}
	if via == viaForward {
		if err := g.waitApplied(ctx, st.index); err != nil {
			return fmt.Errorf("%w: review group %s: this member has not applied through index %d yet: %w", ferry.ErrUnavailable, g.groupName(), st.index, err)
		}
	}
	return nil
}

// waitApplied waits until this member's state machine applied index,
// within ctx and ForwardTimeout (a follower learns that an entry committed
// within CommitTimeout while it hears from the leader; one cut off right
// after its command committed stops waiting).
func (g *Group) waitApplied(ctx context.Context, index uint64) error {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timing.ForwardTimeout)
	defer cancel()
	unlink := context.AfterFunc(g.ctx, cancel)
	defer unlink()
	return g.fsm.waitApplied(ctx, index)
}

// barrierLocal is raft's barrier on this member, the leader; its index is
// the last entry its state machine applied then.
func (g *Group) barrierLocal(ctx context.Context) step {
	f := g.raft.Load().Barrier(g.enqueueTimeout(ctx))
	if err := g.await(ctx, f); err != nil {
		return g.failed("the barrier", err, true)
	}
	return step{index: g.fsm.last.Load()}
}

// AddVoter makes p a voter of the group (on the leader, or forwarded to
// it) and returns once the new configuration is committed. p must be
// allowed here (Config.Allowed). The new member starts with an empty Dir
// and no Bootstrap, and catches up from the leader.
func (g *Group) AddVoter(ctx context.Context, p peer.ID) error {
	if _, err := peer.IDFromBytes([]byte(p)); err != nil {
		return fmt.Errorf("%w: add a voter: %q is not a peer id", ferry.ErrBadRequest, p)
	}
	if !g.cfg.Allowed(p) {
		return fmt.Errorf("%w: add a voter: %s is not allowed to talk to the review group here: make it a member first", ferry.ErrBadRequest, g.cfg.Name(p))
	}
	req := &pb.ForwardRequest{Op: pb.ForwardOp_FORWARD_OP_ADD_VOTER, Peer: []byte(p)}
	st, _ := g.onLeader(ctx, func(ctx context.Context) step { return g.changeLocal(ctx, pb.ForwardOp_FORWARD_OP_ADD_VOTER, p) }, req, false)
	return st.err
}

// RemoveServer takes p out of the group (on the leader, or forwarded to
// it) and returns once the new configuration is committed. The leader stops
// sending to p at once and refuses its forwarded requests (forbidden); a
// removed leader steps down and its raft stops. A removed follower may
// never hear of its removal (raft does not tell it): it keeps asking for
// votes, which the others refuse, until its node closes its Group.
func (g *Group) RemoveServer(ctx context.Context, p peer.ID) error {
	if _, err := peer.IDFromBytes([]byte(p)); err != nil {
		return fmt.Errorf("%w: remove a server: %q is not a peer id", ferry.ErrBadRequest, p)
	}
	req := &pb.ForwardRequest{Op: pb.ForwardOp_FORWARD_OP_REMOVE_SERVER, Peer: []byte(p)}
	st, _ := g.onLeader(ctx, func(ctx context.Context) step { return g.changeLocal(ctx, pb.ForwardOp_FORWARD_OP_REMOVE_SERVER, p) }, req, false)
	return st.err
}

// changeLocal changes the configuration on this member, the leader.
func (g *Group) changeLocal(ctx context.Context, op pb.ForwardOp, p peer.ID) step {
	r := g.raft.Load()
	id, addr := raft.ServerID(p.String()), raft.ServerAddress(p.String())
	var f raft.IndexFuture
	what := "adding " + g.cfg.Name(p)
	if op == pb.ForwardOp_FORWARD_OP_ADD_VOTER && g.founding.Load() {
		return step{err: fmt.Errorf("%w: review group %s: the founder has not yet taken the snapshot of its ledger that new reviewers start from; try again in a few seconds",
			ferry.ErrUnavailable, g.groupName())}
	}
	if op == pb.ForwardOp_FORWARD_OP_ADD_VOTER {
		f = r.AddVoter(id, addr, 0, g.enqueueTimeout(ctx))
	} else {
		what = "removing " + g.cfg.Name(p)
		f = r.RemoveServer(id, 0, g.enqueueTimeout(ctx))
	}
	if err := g.await(ctx, f); err != nil {
		return g.failed(what, err, false)
	}
	g.log.Info("review group changed", "change", what, "index", f.Index())
	return step{index: f.Index()}
}

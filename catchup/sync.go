// Package catchup is catch-up (source 003) where the delivery streams cannot
// bring what a node misses. A partner or member that was away is a receiver
// whose ack floor is behind, and the sender's own stream brings it
// everything (package stream); catchup, on /ferry/sync/1.0.0, covers the rest:
//
//   - owned-resource changes of an origin that is not connected, after the
//     version up to which this node holds that origin's chain, served by any
//     partner of the origin and verified by the origin's signature;
//   - reviewer decisions after the last sequence applied here, served by any
//     reviewer of the review group or any member when no reviewer is
//     connected (they are signed by a reviewer of the group), or when one
//     arrived ahead of a gap;
//   - a node's own changes that a peer holds and the node lost (its data
//     directory was restored from an older copy), served by that peer;
//   - a snapshot of the shared tables at a reviewer's last decision, signed
//     by that reviewer (any reviewer of the group), for a new member facing
//     a long backlog of decisions.
//
// A member asks the reviewers of the group that are connected first, in
// turn, then its other members: no path depends on one reviewer being up.
//
// Answers stream in batches paced by the stream's flow control; every round
// starts from what is on disk, so an interrupted catch-up resumes where it
// stopped. Jobs are merged by what they fetch.
//
// It must not send deliveries.
package catchup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/inbound"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// Defaults.
const (
	DefaultPeriod = 30 * time.Second
	// BatchSize and MaxBatchBytes bound one answer frame.
	BatchSize       = 512
	MaxBatchBytes   = 4 << 20
	requestTimeout  = 2 * time.Minute
	maxRequestBytes = 1024
)

// Roles is what sync needs to know of the network.
type Roles interface {
	Self() peer.ID
	IsPartner(peer.ID) bool
	Partners() []peer.ID
	IsMember(peer.ID) bool
	Members() []peer.ID
	Reviewer() peer.ID
	// InReviewGroup reports whether p is one of the review group:
	// decisions signed by any of them are the group's.
	InReviewGroup(peer.ID) bool
	// ReviewGroup lists the review group (the reviewer alone when there
	// is one; empty: no review flow).
	ReviewGroup() []peer.ID
}

// Resources applies owned-resource changes (the propagate service).
type Resources interface {
	ApplyChange(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error)
	Held(origin peer.ID) (uint64, error)
	// RecoverOwn puts back one of this node's own resource changes that a
	// peer held and this node lost; it reports whether it was missing.
	RecoverOwn(tx *store.Txn, in *stream.Inbound) (bool, error)
}

// Decisions applies reviewer decisions and snapshots, and serves
// snapshots (the review service).
type Decisions interface {
	ApplyDecision(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error)
	Applied() uint64
	// Held reports decisions held behind a missing one.
	Held() bool
	ServeSnapshot(ctx context.Context, emit func(*pb.SnapshotChunk) error) error
	ApplySnapshotChunk(tx *store.Txn, c *pb.SnapshotChunk, reviewer peer.ID) error
	SnapshotDone(reviewer peer.ID, err error)
	// RecoverOwn puts back one of this node's own review requests or
	// decisions that a peer held and this node lost.
	RecoverOwn(tx *store.Txn, in *stream.Inbound) (bool, error)
}

// Own is what a node restored from an older copy does with the own changes
// a peer held and it lost (Restore): where it asks from, and what it does
// when a recovery ended; the changes themselves go back through
// Resources.RecoverOwn and Decisions.RecoverOwn.
type Own interface {
	// RecoverFrom is the version after which this node asks for its own
	// changes (the last it held when it started).
	RecoverFrom() uint64
	// Recovered runs after a recovery from p ended.
	Recovered(p peer.ID, n int, err error)
}

// Deps are what New needs.
type Deps struct {
	Host      host.Host
	Store     *store.Store
	Verifier  *protocols.Verifier
	Signer    crypto.PrivKey // signs snapshots (the reviewer)
	Roles     Roles
	Resources Resources
	Decisions Decisions
	Own       Own
	// Jobs is the queue of work other services ask for (review asks for
	// the decisions missing before a gap, and snapshots); nil: New makes
	// one.
	Jobs            *Jobs
	MaxMessageBytes int
	Period          time.Duration
	Logger          *slog.Logger
	Registerer      prometheus.Registerer
}

// Service serves and runs catch-up.
type Service struct {
	d      Deps
	log    *slog.Logger
	max    int
	ctx    context.Context
	cancel context.CancelFunc
	g      lifecycle.Group // the worker and every sync stream handler

	jobs *Jobs
	mu   sync.Mutex
	last time.Time // end of the last catch-up that brought something

	applied *prometheus.CounterVec
	rounds  prometheus.Counter
	failed  *prometheus.CounterVec
}

// Jobs is catch-up's queue of work: what to fetch, with the peers to ask
// first. It is built before the services that ask for work and the one
// that does it, and given to both at construction (catch-up applies
// decisions through the review service, which asks it for gaps and
// snapshots). Jobs asked for again before they run merge, their hints
// with them.
type Jobs struct {
	mu   sync.Mutex
	want map[job][]peer.ID // asked for and not yet started
	wake chan struct{}
}

// NewJobs makes an empty queue.
func NewJobs() *Jobs { return &Jobs{want: map[job][]peer.ID{}, wake: make(chan struct{}, 1)} }

// DecisionGap asks for the decisions missing before one that arrived early.
func (q *Jobs) DecisionGap(from peer.ID, _, _ uint64) {
	q.ask(job{what: pb.SyncRequest_WHAT_DECISIONS}, from)
}

// FetchSnapshot asks the reviewer for a snapshot of the shared tables.
func (q *Jobs) FetchSnapshot(reviewer peer.ID) {
	q.ask(job{what: pb.SyncRequest_WHAT_SNAPSHOT}, reviewer)
}

// Recover asks p for this node's own changes that p holds and this node
// lost.
func (q *Jobs) Recover(p peer.ID) {
	q.ask(job{what: pb.SyncRequest_WHAT_OWN}, p)
}

func (q *Jobs) ask(j job, hint peer.ID) {
	q.mu.Lock()
	hints, ok := q.want[j]
	if hint != "" {
		found := false
		for _, h := range hints {
			found = found || h == hint
		}
		if !found {
			hints = append(hints, hint)
		}
	}
	if !ok || hint != "" {
		q.want[j] = hints
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take removes one job from the queue (nil: none).
func (q *Jobs) take() (*job, []peer.ID) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for j, h := range q.want {
		delete(q.want, j)
		return &j, h
	}
	return nil, nil
}

// job is one catch-up to run: what to fetch (and of which origin); jobs
// asked for again before they run merge, their hints with them.
type job struct {
	what   pb.SyncRequest_What
	origin peer.ID // resources only
}

// New builds the service; Start serves the protocol and begins catch-up.
func New(d Deps) (*Service, error) {
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.Period <= 0 {
		d.Period = DefaultPeriod
	}
	if d.MaxMessageBytes == 0 {
		d.MaxMessageBytes = protocols.DefaultMaxMessageBytes
	}
	ctx, cancel := context.WithCancel(context.Background())
	if d.Jobs == nil {
		d.Jobs = NewJobs()
	}
	s := &Service{d: d, log: d.Logger, ctx: ctx, cancel: cancel, jobs: d.Jobs,
		// A batch holds MaxBatchBytes, or one change of up to a message.
		max: MaxBatchBytes + d.MaxMessageBytes + 2*protocols.FrameOverhead,
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "sync", Name: "changes_total",
			Help: "Changes received through sync, by what and outcome."}, []string{"what", "outcome"}),
		rounds: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "sync", Name: "requests_total",
			Help: "Sync requests this node made."}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "sync", Name: "jobs_failed_total",
			Help: "Catch-up jobs that ended without every candidate peer answering fully, by what they fetched (they are tried again)."}, []string{"what"}),
	}
	for _, w := range []string{"resources", "decisions", "own", "snapshot"} {
		s.failed.WithLabelValues(w)
		for _, o := range []string{"applied", "duplicate", "refused", "forged"} {
			s.applied.WithLabelValues(w, o)
		}
	}
	if d.Registerer != nil {
		for _, c := range []prometheus.Collector{s.applied, s.rounds, s.failed} {
			if err := d.Registerer.Register(c); err != nil {
				cancel()
				return nil, fmt.Errorf("register sync metrics: %w", err)
			}
		}
	}
	return s, nil
}

// admit lets partners and members open sync streams (what each may ask
// for is checked on the request); a stranger's is reset at open.
func (s *Service) admit(p peer.ID) bool { return s.d.Roles.IsPartner(p) || s.d.Roles.IsMember(p) }

// Start registers the handler and starts the catch-up worker.
func (s *Service) Start() {
	inbound.Handle(s.d.Host, &s.g, protocols.Sync, protocols.ServiceSync, 256<<10, s.admit, s.log, s.serve)
	s.g.Go(s.worker)
	s.Everything()
}

// Close stops serving and waits for catch-up in progress to stop: the
// handler is removed and the context cancelled (which resets the streams
// being served) before the group waits.
func (s *Service) Close() {
	s.d.Host.RemoveStreamHandler(protocols.Sync)
	s.g.Shut()
	s.cancel()
	s.g.Close()
}

// LastCatchUp is when catch-up last brought something (zero: never).
func (s *Service) LastCatchUp() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Everything asks for what only catch-up can bring: the chains of partners
// that are not connected (their own streams bring the rest), and the
// decisions while the reviewer is not connected or decisions are held
// behind a gap.
func (s *Service) Everything() {
	s.askPartners()
	if s.wantDecisions() {
		s.askDecisions()
	}
}

// askPartners asks for the chains of the partners that are not connected.
func (s *Service) askPartners() {
	for _, p := range s.d.Roles.Partners() {
		if !s.connected(p) {
			s.ask(job{what: pb.SyncRequest_WHAT_RESOURCES, origin: p}, "")
		}
	}
}

// wantDecisions: this member takes decisions from the review group, and no
// reviewer of it is connected or decisions are held behind a gap (asked for
// again each period: the job that DecisionGap started may have failed).
func (s *Service) wantDecisions() bool {
	return s.followsReview() && (!s.reviewerConnected() || s.d.Decisions.Held())
}

func (s *Service) askDecisions() { s.ask(job{what: pb.SyncRequest_WHAT_DECISIONS}, "") }

// decisionRounds paces the worker's asks for decisions while no reviewer
// is connected and none are held: every Period while decisions come (by
// any way: these asks, gossip, the stream), and at rest twice as long
// after each ask that found the applied sequence where the one before
// left it, up to restRounds periods. Gossip's decision head (spread) shows
// a member a gap within a minute at rest, and a gap is asked for at once
// (DecisionGap) and then every period while it is held.
type decisionRounds struct {
	wait    time.Duration
	next    time.Time
	applied uint64
}

// restRounds bounds the wait of decisionRounds, in periods: 4 minutes at
// the default.
const restRounds = 8

// due reports whether this period's round asks for decisions (held: some
// are held behind a gap; applied: the sequence applied now).
func (r *decisionRounds) due(now time.Time, period time.Duration, held bool, applied uint64) bool {
	if !held && now.Before(r.next) {
		return false
	}
	if held || applied != r.applied || r.wait == 0 {
		r.wait = period
	} else {
		r.wait = min(2*r.wait, restRounds*period)
	}
	r.applied, r.next = applied, now.Add(r.wait)
	return true
}

// Connected asks a newly connected peer for what it can give: a partner
// serves the chains of other partners that are not connected, a member the
// decisions while no reviewer of the group is connected.
func (s *Service) Connected(p peer.ID) {
	if s.d.Roles.IsPartner(p) {
		for _, o := range s.d.Roles.Partners() {
			if o != p && !s.connected(o) {
				s.ask(job{what: pb.SyncRequest_WHAT_RESOURCES, origin: o}, p)
			}
		}
	}
	if s.followsReview() && !s.reviewerConnected() && s.d.Roles.IsMember(p) {
		s.ask(job{what: pb.SyncRequest_WHAT_DECISIONS}, p)
	}
}

// followsReview reports whether this node takes decisions from the review
// group: there is one, and this node is not of it (a reviewer of a group
// follows the group's log).
func (s *Service) followsReview() bool {
	g := s.d.Roles.ReviewGroup()
	return len(g) > 0 && !s.d.Roles.InReviewGroup(s.d.Roles.Self())
}

// reviewerConnected reports whether any reviewer of the group is
// connected: its decision stream brings what this member misses.
func (s *Service) reviewerConnected() bool {
	for _, r := range s.d.Roles.ReviewGroup() {
		if r != s.d.Roles.Self() && s.connected(r) {
			return true
		}
	}
	return false
}

// Recover asks p for this node's own changes that p holds and this node
// lost.
func (s *Service) Recover(p peer.ID) { s.jobs.Recover(p) }

// FetchSnapshot asks the reviewer for a snapshot of the shared tables.
func (s *Service) FetchSnapshot(reviewer peer.ID) { s.jobs.FetchSnapshot(reviewer) }

func (s *Service) ask(j job, hint peer.ID) { s.jobs.ask(j, hint) }

// worker runs asked-for jobs one at a time, and a round every period
// (Everything, its decisions paced by decisionRounds).
func (s *Service) worker() {
	t := time.NewTicker(s.d.Period)
	defer t.Stop()
	var dec decisionRounds
	for {
		if next, hints := s.jobs.take(); next != nil {
			err := s.run(*next, hints)
			if err != nil && s.ctx.Err() == nil {
				s.failed.WithLabelValues(whatName(next.what)).Inc()
			}
			switch next.what {
			case pb.SyncRequest_WHAT_SNAPSHOT:
				if len(hints) > 0 {
					s.d.Decisions.SnapshotDone(hints[0], err)
				}
			case pb.SyncRequest_WHAT_OWN:
			default:
				if err != nil && s.ctx.Err() == nil {
					s.log.Debug("catch-up incomplete; will try again", "what", next.what, "origin", next.origin, "err", err)
				}
			}
			continue
		}
		select {
		case <-s.ctx.Done():
			return
		case <-s.jobs.wake:
		case <-t.C:
			s.askPartners()
			if s.wantDecisions() && dec.due(time.Now(), s.d.Period, s.d.Decisions.Held(), s.d.Decisions.Applied()) {
				s.askDecisions()
			}
		}
	}
}

// run asks candidate peers in turn until one answers fully. Only peers
// connected now are asked: dialing is the discovery loop's work, and a
// down peer would hold the worker for a whole dial timeout every round.
func (s *Service) run(j job, hints []peer.ID) error {
	var cands []peer.ID
	seen := map[peer.ID]bool{}
	add := func(p peer.ID) {
		if p == "" || p == s.d.Roles.Self() || seen[p] || !s.connected(p) {
			return
		}
		seen[p] = true
		cands = append(cands, p)
	}
	for _, h := range hints {
		add(h)
	}
	switch j.what {
	case pb.SyncRequest_WHAT_RESOURCES:
		add(j.origin)
		for _, p := range s.d.Roles.Partners() {
			add(p)
		}
	case pb.SyncRequest_WHAT_DECISIONS:
		// Every connected reviewer of the group, then the members (they
		// relay what a reviewer of the group signed).
		for _, r := range s.d.Roles.ReviewGroup() {
			add(r)
		}
		// Members in their order, those connected now: one list of the
		// connections rather than a look at each member's (a round at
		// rest in a network of a hundred looked at each).
		on := map[peer.ID]bool{}
		for _, p := range s.d.Host.Network().Peers() {
			on[p] = true
		}
		for _, p := range s.d.Roles.Members() {
			if on[p] {
				add(p)
			}
		}
	case pb.SyncRequest_WHAT_SNAPSHOT:
		// The asked-for reviewer first, then any other of the group
		// (each serves a snapshot it signs).
		for _, r := range s.d.Roles.ReviewGroup() {
			add(r)
		}
	}
	var errs []error
	for _, p := range cands {
		if s.ctx.Err() != nil {
			return s.ctx.Err()
		}
		n, err := s.fetch(p, j)
		if j.what == pb.SyncRequest_WHAT_OWN {
			s.d.Own.Recovered(p, n, err)
		}
		if err == nil {
			if n > 0 {
				s.mu.Lock()
				s.last = time.Now()
				s.mu.Unlock()
			}
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", p, err))
	}
	if len(errs) == 0 {
		err := errors.New("no peer to ask is connected")
		if j.what == pb.SyncRequest_WHAT_OWN {
			// The node asks again (Own.Recovered): nothing else would, the
			// peer having reported once.
			for _, h := range hints {
				s.d.Own.Recovered(h, 0, err)
			}
		}
		return err
	}
	return errors.Join(errs...)
}

func (s *Service) connected(p peer.ID) bool {
	return s.d.Host.Network().Connectedness(p) == network.Connected
}

func whatName(w pb.SyncRequest_What) string {
	switch w {
	case pb.SyncRequest_WHAT_RESOURCES:
		return "resources"
	case pb.SyncRequest_WHAT_DECISIONS:
		return "decisions"
	case pb.SyncRequest_WHAT_OWN:
		return "own"
	case pb.SyncRequest_WHAT_SNAPSHOT:
		return "snapshot"
	}
	return "unknown"
}

// fetch runs one request against one peer and applies what comes back; it
// returns how many changes it applied.
func (s *Service) fetch(p peer.ID, j job) (int, error) {
	var after uint64
	switch j.what {
	case pb.SyncRequest_WHAT_RESOURCES:
		held, err := s.d.Resources.Held(j.origin)
		if err != nil {
			return 0, err
		}
		after = held
	case pb.SyncRequest_WHAT_DECISIONS:
		after = s.d.Decisions.Applied()
	case pb.SyncRequest_WHAT_OWN:
		after = s.d.Own.RecoverFrom()
	}
	ctx, cancel := context.WithTimeout(s.ctx, requestTimeout)
	defer cancel()
	st, err := s.d.Host.NewStream(network.WithNoDial(ctx, "ferry sync"), p, protocols.Sync)
	if err != nil {
		return 0, fmt.Errorf("open sync stream: %w", err)
	}
	defer st.Close()
	// Close (or the request's timeout) resets the stream: a peer that stops
	// answering must not hold the worker, and Close, until the deadline.
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	defer stop()
	if err := st.Scope().SetService(protocols.ServiceSync); err != nil {
		_ = st.Reset()
		return 0, err
	}
	_ = st.SetDeadline(time.Now().Add(requestTimeout))
	s.rounds.Inc()
	fw := protocols.NewFrameWriter(st, maxRequestBytes)
	defer fw.Release()
	req := &pb.SyncRequest{What: j.what, Origin: []byte(j.origin), After: after}
	if err := fw.Write(req); err != nil {
		_ = st.Reset()
		return 0, err
	}
	if err := fw.Flush(); err != nil {
		_ = st.Reset()
		return 0, err
	}
	_ = st.CloseWrite()
	fr := protocols.NewFrameReader(st, s.max).Account(st.Scope())
	defer fr.Release()
	total := 0
	snap := &snapshotState{reviewer: p}
	for {
		batch := &pb.SyncBatch{}
		if err := fr.Read(batch); err != nil {
			_ = st.Reset()
			if errors.Is(err, io.EOF) {
				return total, errors.New("answer ended without done")
			}
			return total, err
		}
		if batch.Error != "" {
			return total, fmt.Errorf("refused: %s", batch.Error)
		}
		var n int
		var err error
		if j.what == pb.SyncRequest_WHAT_SNAPSHOT {
			n, err = s.applySnapshot(snap, batch.Envelopes)
		} else {
			n, err = s.apply(j, batch.Envelopes)
		}
		total += n
		if err != nil {
			_ = st.Reset()
			return total, err
		}
		if batch.Done {
			if j.what == pb.SyncRequest_WHAT_SNAPSHOT && !snap.complete {
				return total, errors.New("snapshot ended before its last chunk")
			}
			return total, nil
		}
	}
}

// apply verifies a whole batch first: one forged envelope and nothing of the
// batch is applied.
func (s *Service) apply(j job, envs []*pb.Envelope) (int, error) {
	what := whatName(j.what)
	self := s.d.Roles.Self()
	items := make([]*stream.Inbound, 0, len(envs))
	forged := func(format string, args ...any) (int, error) {
		s.applied.WithLabelValues(what, "forged").Inc()
		return 0, fmt.Errorf(format, args...)
	}
	for _, env := range envs {
		body, origin, err := s.d.Verifier.Open(env)
		if err != nil {
			return forged("forged change in answer: %w", err)
		}
		switch j.what {
		case pb.SyncRequest_WHAT_RESOURCES:
			if origin != j.origin || !isResource(body.Kind) || len(body.To) > 0 {
				return forged("answer holds a change that is not a resource change of %s", j.origin)
			}
		case pb.SyncRequest_WHAT_OWN:
			if origin != self {
				return forged("answer holds a change of %s, not of this node", origin)
			}
		default:
			if !s.d.Roles.InReviewGroup(origin) || body.Kind != pb.Kind_KIND_REVIEW_DECISION {
				return forged("answer holds a decision not signed by the reviewer or its review group")
			}
			if len(body.To) > 0 && peer.ID(body.To) != self {
				continue // a rejection for another applicant
			}
		}
		in, err := stream.InboundOf(env, body, origin)
		if err != nil {
			return 0, err
		}
		items = append(items, in)
	}
	if len(items) == 0 {
		return 0, nil
	}
	apply := s.d.Decisions.ApplyDecision
	switch j.what {
	case pb.SyncRequest_WHAT_RESOURCES:
		apply = s.d.Resources.ApplyChange
	case pb.SyncRequest_WHAT_OWN:
		apply = func(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error) {
			recover := s.d.Resources.RecoverOwn
			if k := in.Body.Kind; k == pb.Kind_KIND_REVIEW_REQUEST || k == pb.Kind_KIND_REVIEW_DECISION {
				recover = s.d.Decisions.RecoverOwn
			}
			missing, err := recover(tx, in)
			if err == nil && !missing {
				return pb.AckStatus_ACK_STATUS_DUPLICATE, nil
			}
			return pb.AckStatus_ACK_STATUS_APPLIED, err
		}
	}
	var outcomes stream.Counts
	err := s.d.Store.Update(s.ctx, func(tx *store.Txn) error {
		outcomes = stream.Counts{}
		for _, it := range items {
			out, rej, err := stream.ApplyOne(tx, it, apply)
			if err != nil {
				return err
			}
			outcomes[out]++
			if rej != nil {
				level := slog.LevelWarn
				if rej.Equivocation {
					level = slog.LevelError
				}
				s.log.Log(s.ctx, level, "sync: change refused", "origin", it.Origin, "version", it.Body.OriginVersion, "reason", rej.Reason)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("apply sync batch: %w", err)
	}
	s.applied.WithLabelValues(what, "applied").Add(float64(outcomes[stream.Applied]))
	s.applied.WithLabelValues(what, "duplicate").Add(float64(outcomes[stream.Duplicate]))
	s.applied.WithLabelValues(what, "refused").Add(float64(outcomes[stream.Refused]))
	if outcomes[stream.Applied] > 0 {
		s.log.Debug("sync applied", "what", what, "applied", outcomes[stream.Applied], "duplicates", outcomes[stream.Duplicate])
	}
	return outcomes[stream.Applied], nil
}

// snapshotState follows one snapshot as its chunks arrive.
type snapshotState struct {
	reviewer peer.ID
	next     uint32
	sequence uint64
	complete bool
}

// applySnapshot verifies a batch of snapshot chunks (signed by the
// reviewer of the group that serves them, in order, all at one sequence) and applies it in one
// transaction.
func (s *Service) applySnapshot(snap *snapshotState, envs []*pb.Envelope) (int, error) {
	var chunks []*pb.SnapshotChunk
	for _, env := range envs {
		body, origin, err := s.d.Verifier.Open(env)
		if err != nil || !s.d.Roles.InReviewGroup(origin) || origin != snap.reviewer || body.Kind != pb.Kind_KIND_SNAPSHOT {
			s.applied.WithLabelValues("snapshot", "forged").Inc()
			return 0, errors.New("answer holds a snapshot chunk not signed by the reviewer that serves it")
		}
		c := &pb.SnapshotChunk{}
		if err := proto.Unmarshal(body.Payload, c); err != nil {
			return 0, fmt.Errorf("snapshot chunk: %w", err)
		}
		if c.Index != snap.next || snap.complete || (c.Index > 0 && c.Sequence != snap.sequence) {
			return 0, fmt.Errorf("snapshot chunk %d out of order (want %d)", c.Index, snap.next)
		}
		snap.next++
		snap.sequence = c.Sequence
		snap.complete = c.Last
		chunks = append(chunks, c)
	}
	if len(chunks) == 0 {
		return 0, nil
	}
	rows := 0
	err := s.d.Store.Update(s.ctx, func(tx *store.Txn) error {
		for _, c := range chunks {
			if err := s.d.Decisions.ApplySnapshotChunk(tx, c, snap.reviewer); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("apply snapshot: %w", err)
	}
	for _, c := range chunks {
		rows += len(c.Rows)
	}
	s.applied.WithLabelValues("snapshot", "applied").Add(float64(rows))
	return rows, nil
}

func isResource(k pb.Kind) bool {
	return k == pb.Kind_KIND_RESOURCE_CREATE || k == pb.Kind_KIND_RESOURCE_UPDATE || k == pb.Kind_KIND_RESOURCE_DELETE
}

// Package spread carries review decisions to members without a connection
// from the reviewer to each of them.
//
// The reviewer publishes each decision it commits, sealed as it is stored,
// on the gossipsub topic /ferry/<network>/decisions/1.0.0 (DecisionNews,
// coalesced: what commits within a few milliseconds goes in one message,
// whose head is its own last sequence), and its last decision sequence alone
// a second after the last news and then after HeadEvery, doubling while
// nothing new goes out (up to a minute at the default). Gossipsub forwards a message through each member's mesh of
// neighbours, so a decision reaches every subscribed member in a few hops; a
// member that misses one (a lost message, a gap, a head ahead of what it
// applied, still so a second later) asks the peers it is connected to
// through sync, which serves decisions from any member that holds them (they
// are signed by the reviewer).
//
// A member applies what arrives exactly as the delivery stream would
// (review's ApplyDecision, decisions out of order held), moves its position
// in the reviewer's decision lane to the last decision it applied, and
// reports the sequence it applied, signed, to each reviewer of the group:
// directly when connected to it, else through the neighbour the news came
// by, which passes it on (relay.go; /ferry/applied-relay/1.0.0, at most
// every ReportEvery). The reviewer takes the report as an acknowledgement: the member's floor in the decision lane
// moves, and the acknowledgement rows follow. The delivery stream is the
// fallback (stream.SenderOptions.DecisionFallback): what a member has not
// reported after that long goes to it on the stream, as before.
package spread

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/gossiptopic"
	"github.com/ferrynet/ferry/internal/inbound"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/internal/promreg"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// Defaults.
const (
	// DefaultHeadEvery is how often the reviewer tells its last sequence
	// while no decision goes out (the wait doubles while the sequence stays
	// the same, up to headQuiet times this).
	DefaultHeadEvery = 5 * time.Second
	// DefaultReportEvery bounds how often a member reports.
	DefaultReportEvery = 200 * time.Millisecond
	// headFollow is how soon after news the reviewer sends the head alone
	// (at most HeadEvery).
	headFollow = time.Second
	// coalesce is how long the reviewer gathers decisions into one message.
	coalesce = 5 * time.Millisecond
	// maxNewsBytes bounds one DecisionNews: gossipsub's default message
	// limit is 1 MiB; a larger decision goes by head and pull.
	maxNewsBytes = 768 << 10
	// reportTimeout bounds one report to the reviewer.
	reportTimeout = 10 * time.Second
	// DefaultGapGrace is how long a member waits, once news told of a
	// decision it has not applied, before it asks its peers for the gap:
	// news published one after the other may arrive out of order through
	// different neighbours, and a member busy applying lags the head for a
	// moment; neither is a loss.
	DefaultGapGrace = time.Second
	// DefaultGapBackoffMax bounds the wait between two asks for a gap that
	// nobody fills: from GapGrace it doubles at each ask that brought
	// nothing, up to this (a member that no connected peer can help is
	// quiet, and asks at once again when news or a fill moves it).
	DefaultGapBackoffMax = time.Minute
)

// Roles is what the service needs of the node's view of the network.
type Roles interface {
	Self() peer.ID
	Reviewer() peer.ID
	// InReviewGroup reports whether p is one of the review group: news
	// and decisions signed by any of them are the group's.
	InReviewGroup(p peer.ID) bool
	// ReviewGroup lists the review group (the reviewer alone without one).
	ReviewGroup() []peer.ID
	IsMember(p peer.ID) bool
}

// Decisions applies decisions (review.Service).
type Decisions interface {
	ApplyDecision(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error)
	Applied() uint64
}

// Acker moves a member's floor on its report (stream.Sender).
type Acker interface {
	Acknowledge(p peer.ID, l stream.Lane, through uint64)
}

// CatchUp asks connected peers for missing decisions (catch-up's queue, catchup.Jobs).
type CatchUp interface {
	DecisionGap(from peer.ID, have, got uint64)
}

// Deps are what the service works with.
type Deps struct {
	Host      host.Host
	PubSub    *pubsub.PubSub
	Network   string
	Store     *store.Store
	Verifier  *protocols.Verifier
	Roles     Roles
	Decisions Decisions
	Acker     Acker
	CatchUp   CatchUp
	// Tracer, if set, hears of each decision applied from gossip.
	Tracer stream.Tracer
	// HeadEvery and ReportEvery default to DefaultHeadEvery and
	// DefaultReportEvery.
	HeadEvery   time.Duration
	ReportEvery time.Duration
	// GapGrace defaults to DefaultGapGrace, GapBackoffMax to
	// DefaultGapBackoffMax.
	GapGrace      time.Duration
	GapBackoffMax time.Duration
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// Service spreads decisions (on the reviewer) and takes them (on members).
type Service struct {
	d      Deps
	log    *slog.Logger
	topic  *pubsub.Topic
	sub    *pubsub.Subscription
	ctx    context.Context
	cancel context.CancelFunc
	g      lifecycle.Group // the four loops and every report stream handler

	mu      sync.Mutex
	pending []queuedDecision // reviewer: decisions not yet published
	queued  int              // their bytes
	kick    chan struct{}
	// gapHead is the highest head news told this member of; gapKick wakes
	// the loop that asks for a gap that stays (gapLoop).
	gapHead uint64
	gapKick chan struct{}
	report  chan struct{}
	rl      relayState // reports passed on towards the reviewers (relay.go)
	// versions maps the decisions taken from news and not yet applied
	// (held), by signing reviewer and sequence, to that reviewer's epoch
	// and version of them, for holdLane.
	versions map[signedSeq]*storepb.Position

	m metrics
}

type metrics struct {
	news      *prometheus.CounterVec // direction
	decisions *prometheus.CounterVec // outcome
	reports   *prometheus.CounterVec // direction, outcome
}

// New builds the service; Start joins the topic.
func New(d Deps) (*Service, error) {
	if d.HeadEvery <= 0 {
		d.HeadEvery = DefaultHeadEvery
	}
	if d.ReportEvery <= 0 {
		d.ReportEvery = DefaultReportEvery
	}
	if d.GapGrace <= 0 {
		d.GapGrace = DefaultGapGrace
	}
	if d.GapBackoffMax < d.GapGrace {
		d.GapBackoffMax = max(DefaultGapBackoffMax, d.GapGrace)
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	s := &Service{d: d, log: d.Logger, kick: make(chan struct{}, 1), report: make(chan struct{}, 1), gapKick: make(chan struct{}, 1),
		versions: map[signedSeq]*storepb.Position{}, rl: newRelayState()}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.m = metrics{
		news: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "spread", Name: "news_total",
			Help: "Decision news on the gossip topic: published by the reviewer (out), taken by a member (in)."}, []string{"direction"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "spread", Name: "decisions_total",
			Help: "Decisions taken from gossip by a member, by outcome (applied, duplicate, refused, forged)."}, []string{"outcome"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "spread", Name: "reports_total",
			Help: "Applied reports: sent by a member (out: its own and those it passes on, one frame each), taken by a reviewer (in) or by a member to pass on (relay), by outcome (ok, failed, refused)."}, []string{"direction", "outcome"}),
	}
	for _, d := range []string{"in", "out"} {
		s.m.news.WithLabelValues(d)
	}
	for _, d := range []string{"in", "out", "relay"} {
		for _, o := range []string{"ok", "failed", "refused"} {
			s.m.reports.WithLabelValues(d, o)
		}
	}
	for _, o := range []string{"applied", "duplicate", "refused", "forged"} {
		s.m.decisions.WithLabelValues(o)
	}
	if err := promreg.Register(d.Registerer, s.m.news, s.m.decisions, s.m.reports); err != nil {
		return nil, fmt.Errorf("spread: %w", err)
	}
	d.Store.Follow(s.follow) // the reviewer's decisions, as the log commits them
	return s, nil
}

// follow hears of each own entry the log committed (store.Follow): the
// reviewer's decisions sealed by this node go out on gossip.
func (s *Service) follow(e store.OwnEntry) {
	if stream.Lane(e.Lane) == stream.LaneDecision && (len(e.Env) > 0 || e.Shape != nil) {
		s.Publish(e.Envelope())
	}
}

// Start joins the decisions topic, serves reports and starts the loops.
func (s *Service) Start() error {
	t, sub, err := gossiptopic.Join(s.d.PubSub, protocols.DecisionsTopic(s.d.Network), s.validate)
	if err != nil {
		return err
	}
	s.topic, s.sub = t, sub
	inbound.Handle(s.d.Host, &s.g, protocols.Applied, protocols.ServiceSpread, 1<<10, func(p peer.ID) bool { return s.reviewer() && s.d.Roles.IsMember(p) },
		s.log, s.serveReport)
	inbound.Handle(s.d.Host, &s.g, protocols.AppliedRelay, protocols.ServiceSpread, relayReserve, s.d.Roles.IsMember, s.log, s.serveRelay)
	s.g.Go(s.readLoop)
	s.g.Go(s.publishLoop)
	s.g.Go(s.reportLoop)
	s.g.Go(s.gapLoop)
	return nil
}

// Close leaves the topic and waits for the loops and the reports being
// served (the cancelled context resets their streams).
func (s *Service) Close() {
	s.d.Host.RemoveStreamHandler(protocols.Applied)
	s.d.Host.RemoveStreamHandler(protocols.AppliedRelay)
	s.g.Shut()
	s.cancel()
	if s.sub != nil {
		s.sub.Cancel()
	}
	s.g.Close()
	if s.topic != nil {
		_ = s.topic.Close()
	}
	_ = s.d.PubSub.UnregisterTopicValidator(protocols.DecisionsTopic(s.d.Network))
}

// reviewer reports whether this node is the reviewer.
func (s *Service) reviewer() bool {
	r := s.d.Roles.Reviewer()
	return r != "" && r == s.d.Roles.Self()
}

// queuedDecision is a committed decision waiting for the next news.
type queuedDecision struct {
	env []byte // its sealed envelope, as stored
	seq uint64 // its sequence
}

// Publish queues a decision the reviewer just committed (env: its sealed
// envelope as stored) for the next DecisionNews. The log calls it for each
// decision it commits (follow).
func (s *Service) Publish(env []byte) {
	if !s.reviewer() {
		return
	}
	seq := sequenceOf(env)
	s.mu.Lock()
	if len(env) <= maxNewsBytes {
		s.pending = append(s.pending, queuedDecision{env: env, seq: seq})
		s.queued += len(env)
	} // a larger one travels by head and pull
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// publishLoop sends what Publish queued, a few milliseconds' worth at a
// time, and the head alone while nothing else goes out: once headFollow
// after the last news (a member that missed it learns of it then, not a
// whole HeadEvery later), then after HeadEvery, and while the head stays
// the same after a wait that doubles up to headQuiet HeadEvery (nextHead):
// each head floods the network, and at rest the same one every 5 s was
// most of what 100 idle nodes did (issue 22, "quiet at rest").
func (s *Service) publishLoop() {
	follow := min(headFollow, s.d.HeadEvery)
	head := time.NewTimer(s.d.HeadEvery)
	defer head.Stop()
	every, last := s.d.HeadEvery, uint64(0)
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.kick:
			select {
			case <-time.After(coalesce):
			case <-s.ctx.Done():
				return
			}
			s.flush()
			every = s.d.HeadEvery
			head.Reset(follow)
		case <-head.C:
			s.mu.Lock()
			idle := len(s.pending) == 0
			s.mu.Unlock()
			// What is queued goes out with its own head (flush).
			switch {
			case !s.reviewer():
				// A member sends no head: it looks again at the
				// longest wait (news kicks it, were it to become one).
				every = headQuiet * s.d.HeadEvery
			case idle:
				applied := s.d.Decisions.Applied()
				s.send(nil, applied)
				every, last = nextHead(every, last, applied, s.d.HeadEvery)
			}
			head.Reset(every)
		}
	}
}

// headQuiet bounds the wait between heads that stay the same, in
// HeadEvery: a minute at the default 5 s.
const headQuiet = 12

// nextHead is the wait after sending head applied when the one before was
// last: HeadEvery after a new head, twice the wait before for the same
// one, at most headQuiet HeadEvery.
func nextHead(wait time.Duration, last, applied uint64, every time.Duration) (time.Duration, uint64) {
	if applied != last {
		return every, applied
	}
	return min(2*wait, headQuiet*every), applied
}

func (s *Service) flush() {
	for {
		s.mu.Lock()
		var batch [][]byte
		var head uint64
		size := 0
		for len(s.pending) > 0 && (len(batch) == 0 || size+len(s.pending[0].env) <= maxNewsBytes) {
			q := s.pending[0]
			size += len(q.env)
			batch = append(batch, q.env)
			head = max(head, q.seq)
			s.pending = s.pending[1:]
		}
		s.queued -= size
		s.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		if head == 0 { // not a decision we could read: tell the store's
			head = s.d.Decisions.Applied()
		}
		s.send(batch, head)
	}
}

// send publishes decisions with head, the last sequence the news tells
// of: a batch's own last one, not the store's (decisions committed since
// follow in the next batch, and a head ahead of them would send every
// member to ask its peers for them at once).
func (s *Service) send(decisions [][]byte, head uint64) {
	b, err := proto.Marshal(&pb.DecisionNews{Decisions: decisions, Head: head, Epoch: s.d.Store.Epoch()})
	if err == nil {
		err = s.topic.Publish(s.ctx, b)
	}
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Warn("publish decisions", "decisions", len(decisions), "err", err)
		}
		return
	}
	s.m.news.WithLabelValues("out").Inc()
}

// validate lets through (and forwards) only news the reviewer published.
func (s *Service) validate(_ context.Context, _ peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	if !s.d.Roles.InReviewGroup(msg.GetFrom()) {
		return pubsub.ValidationReject
	}
	n := &pb.DecisionNews{}
	if proto.Unmarshal(msg.GetData(), n) != nil {
		return pubsub.ValidationReject
	}
	msg.ValidatorData = n
	return pubsub.ValidationAccept
}

func (s *Service) readLoop() {
	for {
		msg, err := s.sub.Next(s.ctx)
		if err != nil {
			return
		}
		n, ok := msg.ValidatorData.(*pb.DecisionNews)
		if !ok || msg.ReceivedFrom == s.d.Host.ID() {
			continue
		}
		s.noteUp(msg.GetFrom(), msg.ReceivedFrom)
		if s.reviewer() {
			continue
		}
		s.m.news.WithLabelValues("in").Inc()
		if err := s.take(n); err != nil && s.ctx.Err() == nil {
			s.log.Warn("decisions from gossip", "err", err)
		}
	}
}

// take applies the decisions of one DecisionNews and asks for what is
// missing before its head.
func (s *Service) take(n *pb.DecisionNews) error {
	var items []*stream.Inbound
	seqs := map[*stream.Inbound]uint64{}
	for _, raw := range n.Decisions {
		env := &pb.Envelope{}
		if err := proto.Unmarshal(raw, env); err != nil {
			s.m.decisions.WithLabelValues("forged").Inc()
			return fmt.Errorf("malformed decision envelope: %w", err)
		}
		body, origin, err := s.d.Verifier.Open(env)
		if err != nil || !s.d.Roles.InReviewGroup(origin) || body.Kind != pb.Kind_KIND_REVIEW_DECISION || len(body.To) > 0 {
			s.m.decisions.WithLabelValues("forged").Inc()
			return fmt.Errorf("a decision in the news is not the reviewer's broadcast decision (%v)", err)
		}
		d := &pb.ReviewDecision{}
		if proto.Unmarshal(body.Payload, d) != nil || d.Sequence == 0 {
			s.m.decisions.WithLabelValues("forged").Inc()
			return errors.New("a decision in the news has no sequence")
		}
		in := &stream.Inbound{From: origin, Origin: origin, Body: body, Raw: raw,
			Hash: store.BodyHash(env.Body), Lane: stream.LaneDecision, Gossip: true}
		items = append(items, in)
		seqs[in] = d.Sequence
		// A reviewer's own versions place this member in that reviewer's
		// decision lane (holdLane): each reviewer of a group numbers its
		// copies in its own log.
		s.mu.Lock()
		if n.Epoch != 0 {
			s.versions[signedSeq{origin, d.Sequence}] = &storepb.Position{Epoch: n.Epoch, Version: body.OriginVersion}
		}
		s.mu.Unlock()
	}
	if len(items) > 0 {
		var counts stream.Counts
		err := s.d.Store.Update(s.ctx, func(tx *store.Txn) error {
			counts = stream.Counts{}
			for _, in := range items {
				out, rej, err := stream.ApplyOne(tx, in, s.d.Decisions.ApplyDecision)
				if err != nil {
					return err
				}
				if out == stream.Applied && s.d.Tracer != nil {
					s.d.Tracer.Applied(tx, in)
				}
				counts[out]++
				if rej != nil {
					s.log.Warn("decision from gossip refused", "sequence", seqs[in], "reason", rej.Reason)
				}
			}
			return s.holdLane(tx)
		})
		if err != nil {
			return fmt.Errorf("apply decisions: %w", err)
		}
		s.m.decisions.WithLabelValues("applied").Add(float64(counts[stream.Applied]))
		s.m.decisions.WithLabelValues("duplicate").Add(float64(counts[stream.Duplicate]))
		s.m.decisions.WithLabelValues("refused").Add(float64(counts[stream.Refused]))
	}
	applied := s.d.Decisions.Applied()
	s.mu.Lock()
	for k := range s.versions {
		if k.seq <= applied {
			delete(s.versions, k)
		}
	}
	s.mu.Unlock()
	if n.Head > applied && s.d.CatchUp != nil {
		s.noteGap(n.Head)
	}
	s.wantReport()
	return nil
}

// signedSeq names one reviewer's copy of a decision: the reviewer that
// signed it and the decision's sequence.
type signedSeq struct {
	reviewer peer.ID
	seq      uint64
}

// holdLane moves this member's position in the decision lane of each
// reviewer whose copy of the decision it has now applied last came by news
// (now or earlier, held): a reviewer's lane holds only decisions, in
// sequence order, so the member holds it through that copy's version and a
// stream from that reviewer starts after it. On a review group each
// reviewer's lane moves by its own copies: a member that follows the news
// of any reviewer is not sent again what it applied when the first one is
// away.
func (s *Service) holdLane(tx *store.Txn) error {
	applied, err := tx.CounterValue("review_applied")
	if err != nil {
		return err
	}
	s.mu.Lock()
	at := map[peer.ID]*storepb.Position{}
	for k, p := range s.versions {
		if k.seq == applied {
			at[k.reviewer] = p
		}
	}
	s.mu.Unlock()
	for reviewer, p := range at {
		pos, err := tx.Position(reviewer, uint8(stream.LaneDecision))
		if err != nil {
			return err
		}
		if (pos.Epoch == p.Epoch && pos.Version < p.Version) || pos.Version == 0 {
			tx.SetPosition(reviewer, uint8(stream.LaneDecision), &storepb.Position{Epoch: p.Epoch, Version: p.Version})
		}
	}
	return nil
}

// noteGap records that news told of decisions through head; gapLoop asks
// for them if they do not come by themselves.
func (s *Service) noteGap(head uint64) {
	s.mu.Lock()
	s.gapHead = max(s.gapHead, head)
	s.mu.Unlock()
	select {
	case s.gapKick <- struct{}{}:
	default:
	}
}

// gapLoop asks the catch-up for decisions news told of (noteGap) that are
// still not applied GapGrace later, and again while they are missing: after
// GapGrace doubling to GapBackoffMax while an ask brings nothing, from
// GapGrace again once one did.
func (s *Service) gapLoop() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.gapKick:
		}
		wait, last := s.d.GapGrace, s.d.Decisions.Applied()
		for {
			s.mu.Lock()
			want := s.gapHead
			s.mu.Unlock()
			if s.d.Decisions.Applied() >= want {
				break
			}
			t := time.NewTimer(wait)
			select {
			case <-s.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			applied := s.d.Decisions.Applied()
			if applied < want {
				// No hint: catch-up asks every connected reviewer of
				// the group in turn, then the members.
				s.d.CatchUp.DecisionGap("", applied, want)
			}
			wait, last = nextGapWait(wait, last, applied, s.d.GapGrace, s.d.GapBackoffMax)
		}
	}
}

// nextGapWait is the wait before the next ask for a gap: back to grace
// when decisions were applied since the last ask, else twice as long, up to
// most.
func nextGapWait(wait time.Duration, last, applied uint64, grace, most time.Duration) (time.Duration, uint64) {
	if applied > last {
		return grace, applied
	}
	return min(2*wait, most), last
}

// sequenceOf reads the sequence of a sealed decision (0 if it cannot).
func sequenceOf(raw []byte) uint64 {
	env, body, d := &pb.Envelope{}, &pb.Body{}, &pb.ReviewDecision{}
	if proto.Unmarshal(raw, env) != nil || proto.Unmarshal(env.Body, body) != nil || proto.Unmarshal(body.Payload, d) != nil {
		return 0
	}
	return d.Sequence
}

func (s *Service) wantReport() {
	select {
	case s.report <- struct{}{}:
	default:
	}
}

// reportLoop tells the review group what this member applied and passes
// on the reports it holds (relay.go), at most every ReportEvery, and looks
// again HeadEvery after a look that found something due (news applied, a
// decision applied by catch-up or the stream, a report to send again); at
// rest each look that found nothing due, woken by a head or not, doubles
// the wait, up to headQuiet times HeadEvery (news wakes it at once).
func (s *Service) reportLoop() {
	wait := s.d.HeadEvery
	retry := time.NewTimer(wait)
	defer retry.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.report:
		case <-retry.C:
		}
		applied := uint64(0)
		if !s.reviewer() {
			applied = s.d.Decisions.Applied()
		}
		due := s.relayDue(applied)
		// A wake-up that found nothing due (a head that told nothing new)
		// keeps the wait growing: at rest the reviewer's head each minute
		// reset it to HeadEvery, four looks a minute at every member.
		if due {
			wait = s.d.HeadEvery
		} else {
			wait = min(2*wait, headQuiet*s.d.HeadEvery)
		}
		retry.Reset(wait)
		if !due {
			continue
		}
		if err := s.relay(applied); err != nil && s.ctx.Err() == nil {
			s.log.Debug("report applied decisions to the review group", "sequence", applied, "err", err)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(s.d.ReportEvery):
		}
	}
}

// serveReport takes a member's unsigned report on the reviewer, from the
// member itself (the connection authenticates it): the older protocol,
// /ferry/applied/1.0.0, kept for peers that do not relay.
func (s *Service) serveReport(st network.Stream) error {
	p := st.Conn().RemotePeer()
	if !s.reviewer() || !s.d.Roles.IsMember(p) {
		s.m.reports.WithLabelValues("in", "refused").Inc()
		return fmt.Errorf("applied report from %s: this node is not its reviewer", p)
	}
	defer context.AfterFunc(s.ctx, func() { _ = st.Reset() })()
	_ = st.SetReadDeadline(time.Now().Add(reportTimeout))
	r := &pb.AppliedReport{}
	if err := protocols.NewFrameReader(st, 1<<10).Read(r); err != nil {
		s.m.reports.WithLabelValues("in", "failed").Inc()
		return fmt.Errorf("read applied report: %w", err)
	}
	if r.Sequence == 0 {
		return nil
	}
	ver, err := s.d.Store.DecisionVersion(r.Sequence)
	if err != nil {
		s.m.reports.WithLabelValues("in", "refused").Inc()
		return fmt.Errorf("applied report from %s: sequence %d: %w", p, r.Sequence, err)
	}
	s.d.Acker.Acknowledge(p, stream.LaneDecision, ver)
	s.m.reports.WithLabelValues("in", "ok").Inc()
	return nil
}

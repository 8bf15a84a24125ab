// Package sync is catch-up (source 003): a node that restarts, joins late or
// heals from a partition asks its peers, on /ferry/sync/1.0.0, for what it is
// missing, and applies it exactly as if it had been delivered:
//
//   - owned-resource changes of an origin after the version up to which this
//     node holds that origin's chain of changes, served by the origin or by
//     any of its partners, verified by the origin's signature;
//   - reviewer decisions after the last sequence applied here, served by any
//     member, verified by the reviewer's signature.
//
// Answers stream in batches paced by the stream's flow control; every round
// starts from what is on disk, so an interrupted catch-up resumes where it
// stopped. It runs at start, when a partner or member connects, when a
// decision arrives ahead of a gap, and periodically (anti-entropy), so a
// node converges even when deliveries were lost for good.
//
// Importers name the package ferrysync; it must not send deliveries.
package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	gosync "sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

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
}

// Resources applies owned-resource changes (the propagate service).
type Resources interface {
	ApplyChange(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error)
	Held(origin peer.ID) (uint64, error)
}

// Decisions applies reviewer decisions (the review service).
type Decisions interface {
	ApplyDecision(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error)
	Applied() uint64
}

// Deps are what New needs.
type Deps struct {
	Host            host.Host
	Store           *store.Store
	Verifier        *protocols.Verifier
	Roles           Roles
	Resources       Resources
	Decisions       Decisions
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
	wg     gosync.WaitGroup

	mu   gosync.Mutex
	want map[job]bool // work asked for and not yet started
	wake chan struct{}

	applied *prometheus.CounterVec
	rounds  prometheus.Counter
}

// job is one catch-up to run: resources of an origin, or decisions.
type job struct {
	what   pb.SyncRequest_What
	origin peer.ID // resources only
	hint   peer.ID // a peer to ask first
}

// New builds the service; Start serves the protocol and begins catch-up.
func New(d Deps) *Service {
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
	s := &Service{d: d, log: d.Logger, ctx: ctx, cancel: cancel, want: map[job]bool{}, wake: make(chan struct{}, 1),
		// A batch holds MaxBatchBytes, or one change of up to a message.
		max: MaxBatchBytes + d.MaxMessageBytes + 2*protocols.FrameOverhead,
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "sync", Name: "changes_total",
			Help: "Changes received through sync, by what and outcome."}, []string{"what", "outcome"}),
		rounds: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "sync", Name: "requests_total",
			Help: "Sync requests this node made."}),
	}
	if d.Registerer != nil {
		_ = d.Registerer.Register(s.applied)
		_ = d.Registerer.Register(s.rounds)
	}
	return s
}

// Start registers the handler and starts the catch-up worker.
func (s *Service) Start() {
	stream.Handle(s.d.Host, protocols.Sync, protocols.ServiceSync, 256<<10, s.log, func(st network.Stream) error {
		s.wg.Add(1)
		defer s.wg.Done()
		return s.serve(st)
	})
	s.wg.Add(1)
	go s.worker()
	s.Everything()
}

// Close stops serving and waits for catch-up in progress to stop.
func (s *Service) Close() {
	s.d.Host.RemoveStreamHandler(protocols.Sync)
	s.cancel()
	s.wg.Wait()
}

// Everything asks for a full round: every partner's resources and the decisions.
func (s *Service) Everything() {
	for _, p := range s.d.Roles.Partners() {
		s.ask(job{what: pb.SyncRequest_WHAT_RESOURCES, origin: p})
	}
	if s.d.Roles.Reviewer() != "" && s.d.Roles.Reviewer() != s.d.Roles.Self() {
		s.ask(job{what: pb.SyncRequest_WHAT_DECISIONS})
	}
}

// Connected asks for what a newly connected peer can give.
func (s *Service) Connected(p peer.ID) {
	if s.d.Roles.IsPartner(p) {
		s.ask(job{what: pb.SyncRequest_WHAT_RESOURCES, origin: p, hint: p})
	}
	if r := s.d.Roles.Reviewer(); r != "" && r != s.d.Roles.Self() && s.d.Roles.IsMember(p) {
		s.ask(job{what: pb.SyncRequest_WHAT_DECISIONS, hint: p})
	}
}

// DecisionGap asks for the decisions missing before one that arrived early.
func (s *Service) DecisionGap(from peer.ID, _, _ uint64) {
	s.ask(job{what: pb.SyncRequest_WHAT_DECISIONS, hint: from})
}

func (s *Service) ask(j job) {
	s.mu.Lock()
	s.want[j] = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// worker runs asked-for jobs one at a time, and a full round every period.
func (s *Service) worker() {
	defer s.wg.Done()
	t := time.NewTicker(s.d.Period)
	defer t.Stop()
	for {
		s.mu.Lock()
		var next *job
		for j := range s.want {
			j := j
			next = &j
			delete(s.want, j)
			break
		}
		s.mu.Unlock()
		if next != nil {
			if err := s.run(*next); err != nil && s.ctx.Err() == nil {
				s.log.Info("catch-up incomplete; will try again", "what", next.what, "origin", next.origin, "err", err)
			}
			continue
		}
		select {
		case <-s.ctx.Done():
			return
		case <-s.wake:
		case <-t.C:
			s.Everything()
		}
	}
}

// run asks candidate peers in turn until one answers fully. Only peers
// connected now are asked: dialing is the discovery loop's work, and a
// down peer would hold the worker for a whole dial timeout every round.
func (s *Service) run(j job) error {
	var cands []peer.ID
	add := func(p peer.ID) {
		if p == "" || p == s.d.Roles.Self() || !s.connected(p) {
			return
		}
		for _, c := range cands {
			if c == p {
				return
			}
		}
		cands = append(cands, p)
	}
	add(j.hint)
	switch j.what {
	case pb.SyncRequest_WHAT_RESOURCES:
		add(j.origin)
		for _, p := range s.d.Roles.Partners() {
			add(p)
		}
	case pb.SyncRequest_WHAT_DECISIONS:
		add(s.d.Roles.Reviewer())
		for _, p := range s.d.Roles.Members() {
			add(p)
		}
	}
	var errs []error
	for _, p := range cands {
		if s.ctx.Err() != nil {
			return s.ctx.Err()
		}
		err := s.fetch(p, j)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", p, err))
	}
	if len(errs) == 0 {
		return errors.New("no peer to ask is connected")
	}
	return errors.Join(errs...)
}

func (s *Service) connected(p peer.ID) bool {
	return s.d.Host.Network().Connectedness(p) == network.Connected
}

// fetch runs one request against one peer and applies what comes back.
func (s *Service) fetch(p peer.ID, j job) error {
	var after uint64
	switch j.what {
	case pb.SyncRequest_WHAT_RESOURCES:
		held, err := s.d.Resources.Held(j.origin)
		if err != nil {
			return err
		}
		after = held
	default:
		after = s.d.Decisions.Applied()
	}
	ctx, cancel := context.WithTimeout(s.ctx, requestTimeout)
	defer cancel()
	st, err := s.d.Host.NewStream(network.WithNoDial(ctx, "ferry sync"), p, protocols.Sync)
	if err != nil {
		return fmt.Errorf("open sync stream: %w", err)
	}
	defer st.Close()
	if err := st.Scope().SetService(protocols.ServiceSync); err != nil {
		_ = st.Reset()
		return err
	}
	_ = st.SetDeadline(time.Now().Add(requestTimeout))
	s.rounds.Inc()
	fw := protocols.NewFrameWriter(st, maxRequestBytes)
	req := &pb.SyncRequest{What: j.what, Origin: []byte(j.origin), After: after}
	if err := fw.Write(req); err != nil {
		_ = st.Reset()
		return err
	}
	if err := fw.Flush(); err != nil {
		_ = st.Reset()
		return err
	}
	_ = st.CloseWrite()
	fr := protocols.NewFrameReader(st, s.max)
	for {
		batch := &pb.SyncBatch{}
		if err := fr.Read(batch); err != nil {
			_ = st.Reset()
			if errors.Is(err, io.EOF) {
				return errors.New("answer ended without done")
			}
			return err
		}
		if batch.Error != "" {
			return fmt.Errorf("refused: %s", batch.Error)
		}
		if err := s.apply(j, batch.Envelopes); err != nil {
			_ = st.Reset()
			return err
		}
		if batch.Done {
			return nil
		}
	}
}

// apply verifies a whole batch first: one forged envelope and nothing of the
// batch is applied.
func (s *Service) apply(j job, envs []*pb.Envelope) error {
	what := "resources"
	if j.what == pb.SyncRequest_WHAT_DECISIONS {
		what = "decisions"
	}
	items := make([]*stream.Inbound, 0, len(envs))
	for _, env := range envs {
		body, origin, err := s.d.Verifier.Open(env)
		if err != nil {
			s.applied.WithLabelValues(what, "forged").Inc()
			return fmt.Errorf("forged change in answer: %w", err)
		}
		switch j.what {
		case pb.SyncRequest_WHAT_RESOURCES:
			if origin != j.origin || !isResource(body.Kind) || len(body.To) > 0 {
				s.applied.WithLabelValues(what, "forged").Inc()
				return fmt.Errorf("answer holds a change that is not a resource change of %s", j.origin)
			}
		default:
			if origin != s.d.Roles.Reviewer() || body.Kind != pb.Kind_KIND_REVIEW_DECISION {
				s.applied.WithLabelValues(what, "forged").Inc()
				return fmt.Errorf("answer holds a decision not signed by the reviewer")
			}
			if len(body.To) > 0 && peer.ID(body.To) != s.d.Roles.Self() {
				continue // a rejection for another applicant
			}
		}
		in, err := stream.InboundOf(env, body, origin)
		if err != nil {
			return err
		}
		items = append(items, in)
	}
	if len(items) == 0 {
		return nil
	}
	var outcomes [3]int // applied, duplicate, rejected
	err := s.d.Store.Update(s.ctx, func(tx *store.Txn) error {
		outcomes = [3]int{}
		for _, it := range items {
			sp := tx.Savepoint()
			var st pb.AckStatus
			var err error
			if j.what == pb.SyncRequest_WHAT_RESOURCES {
				st, err = s.d.Resources.ApplyChange(tx, it)
			} else {
				st, err = s.d.Decisions.ApplyDecision(tx, it)
			}
			var rej *stream.RejectError
			switch {
			case errors.As(err, &rej):
				if !rej.Keep {
					tx.RollbackTo(sp)
				}
				outcomes[2]++
				s.log.Warn("sync: change refused", "origin", it.Origin, "version", it.Body.OriginVersion, "reason", rej.Reason)
			case err != nil:
				return err
			case st == pb.AckStatus_ACK_STATUS_DUPLICATE:
				outcomes[1]++
			default:
				outcomes[0]++
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("apply sync batch: %w", err)
	}
	s.applied.WithLabelValues(what, "applied").Add(float64(outcomes[0]))
	s.applied.WithLabelValues(what, "duplicate").Add(float64(outcomes[1]))
	s.applied.WithLabelValues(what, "refused").Add(float64(outcomes[2]))
	if outcomes[0] > 0 {
		s.log.Debug("sync applied", "what", what, "applied", outcomes[0], "duplicates", outcomes[1])
	}
	return nil
}

func isResource(k pb.Kind) bool {
	return k == pb.Kind_KIND_RESOURCE_CREATE || k == pb.Kind_KIND_RESOURCE_UPDATE || k == pb.Kind_KIND_RESOURCE_DELETE
}

// serve answers one sync request.
func (s *Service) serve(st network.Stream) error {
	remote := st.Conn().RemotePeer()
	_ = st.SetDeadline(time.Now().Add(requestTimeout))
	req := &pb.SyncRequest{}
	if err := protocols.NewFrameReader(st, maxRequestBytes).Read(req); err != nil {
		return fmt.Errorf("read sync request: %w", err)
	}
	fw := protocols.NewFrameWriter(st, s.max)
	refuse := func(format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		s.log.Info("sync request refused", "peer", remote, "reason", msg)
		if err := fw.Write(&pb.SyncBatch{Error: msg, Done: true}); err != nil {
			return err
		}
		return fw.Flush()
	}
	// next returns the changes after a position and the position reached.
	var next func(after uint64) ([]store.Change, uint64, error)
	var latest uint64
	switch req.What {
	case pb.SyncRequest_WHAT_RESOURCES:
		origin, err := peer.IDFromBytes(req.Origin)
		if err != nil {
			return refuse("origin is not a peer id")
		}
		self := s.d.Roles.Self()
		if !s.d.Roles.IsPartner(remote) || (origin != self && !s.d.Roles.IsPartner(origin)) {
			return refuse("resources of %s are shared with partners only", origin)
		}
		if latest, err = s.d.Store.LastOriginVersion(origin); err != nil {
			return err
		}
		if latest == 0 && origin != self {
			return refuse("unknown origin %s", origin)
		}
		next = func(after uint64) ([]store.Change, uint64, error) {
			return s.d.Store.OriginChanges(origin, after, BatchSize,
				pb.Kind_KIND_RESOURCE_CREATE, pb.Kind_KIND_RESOURCE_UPDATE, pb.Kind_KIND_RESOURCE_DELETE)
		}
	case pb.SyncRequest_WHAT_DECISIONS:
		if !s.d.Roles.IsMember(remote) {
			return refuse("decisions are shared with members only")
		}
		var err error
		if latest, err = s.d.Store.LastDecision(); err != nil {
			return err
		}
		next = func(after uint64) ([]store.Change, uint64, error) {
			cs, err := s.d.Store.Decisions(after, BatchSize)
			if len(cs) > 0 {
				after = decisionSequence(cs[len(cs)-1].Body)
			}
			return cs, after, err
		}
	default:
		return refuse("unknown request %v", req.What)
	}
	if req.After > latest {
		return refuse("position %d is in the future (this node holds up to %d)", req.After, latest)
	}
	position := func(c store.Change) uint64 {
		if req.What == pb.SyncRequest_WHAT_DECISIONS {
			return decisionSequence(c.Body)
		}
		return c.Body.OriginVersion
	}
	after, sent := req.After, 0
	for {
		if s.ctx.Err() != nil {
			return s.ctx.Err()
		}
		cs, reached, err := next(after)
		if err != nil {
			return err
		}
		// A batch ends at BatchSize changes, at MaxBatchBytes, or at the
		// asker's limit; the next starts after its last change.
		batch := &pb.SyncBatch{Done: len(cs) < BatchSize}
		size := 0
		limited := func() bool { return req.Limit > 0 && sent >= int(req.Limit) }
		for i, c := range cs {
			n := proto.Size(c.Envelope)
			if i > 0 && (size+n > MaxBatchBytes || limited()) {
				reached = position(cs[i-1])
				batch.Done = false
				break
			}
			batch.Envelopes = append(batch.Envelopes, c.Envelope)
			size += n
			sent++
		}
		if limited() {
			batch.Done = true
		}
		after = reached
		_ = st.SetWriteDeadline(time.Now().Add(protocols.WriteTimeout))
		if err := fw.Write(batch); err != nil {
			return err
		}
		if err := fw.Flush(); err != nil {
			return err
		}
		if batch.Done {
			return nil
		}
	}
}

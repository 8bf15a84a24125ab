package review

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/idem"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// Event subjects (under the node's prefix).
const (
	SubjectRequested = "review.requested"
	SubjectDecided   = "review.decided" // review.decided.<table_name>
)

// ValidTable reports whether s may name a shared table (a NATS subject token).
func ValidTable(s string) bool { return ferry.ValidName(s) }

// Roles is what the service needs to know of the network.
type Roles interface {
	Self() peer.ID
	SelfName() string
	Reviewer() peer.ID
	// InReviewGroup reports whether a peer is one of the review group
	// (reviewers; the reviewer alone without one).
	InReviewGroup(peer.ID) bool
	// ReviewGroup lists the review group.
	ReviewGroup() []peer.ID
	IsMember(peer.ID) bool
	Members() []peer.ID
	Name(peer.ID) string
}

// Publisher publishes events on the local NATS.
type Publisher interface {
	Publish(suffix string, v any)
}

// CatchUp fetches what the decision lane cannot bring (catch-up's queue,
// catchup.Jobs):
// the decisions missing before one that arrived ahead of them, and a
// snapshot of the tables for a new member.
type CatchUp interface {
	DecisionGap(from peer.ID, have, got uint64)
	SnapshotFetcher
}

// Tracer hears of this node's review requests and decisions as they are
// answered, for operators (`ferry watch`, the decisions metric) and
// nothing else: Submitted for each request on disk, Decided for each
// decision asked of this node, with its row or why it was refused.
type Tracer interface {
	Submitted(row Row)
	Decided(row Row, err error)
}

// Service runs the review flow on one node.
type Service struct {
	st      *store.Store
	roles   Roles
	pub     Publisher
	gaps    CatchUp
	tracer  Tracer
	maxData int
	// approvals is review.approvals: the distinct reviewer nodes that must
	// accept the same data before a request is decided.
	approvals int
	log       *slog.Logger
	ready     func() error

	// group, once attached (group.go), is the review group every decision
	// goes through; g owns the goroutines waiting on it, ctx ends them.
	group Proposer
	g     lifecycle.Group
	ctx   context.Context

	snapMu      sync.Mutex
	snapRunning bool
	snapAfter   []func() // Want's done callbacks, run when the snapshot was taken
	snapRetryAt time.Time
}

// Deps are what New needs.
type Deps struct {
	Store     *store.Store
	Roles     Roles
	Publisher Publisher
	// CatchUp, if set, is asked for decisions missing before a gap and for
	// snapshots (catchup.Jobs); nil: neither is fetched.
	CatchUp CatchUp
	// Tracer, if set, hears of requests submitted and decisions taken.
	Tracer          Tracer
	MaxMessageBytes int
	// Approvals is review.approvals (0: 1).
	Approvals int
	Logger    *slog.Logger
	// Ready, if set, is asked before a decision: an error refuses it (a
	// reviewer that has not compared its decisions with a member since it
	// started may have been restored from an older copy).
	Ready func() error
	// Context ends the service's background work (proposals to the review
	// group); nil: never.
	Context context.Context
}

// New builds the service.
func New(d Deps) *Service {
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.MaxMessageBytes == 0 {
		d.MaxMessageBytes = protocols.DefaultMaxMessageBytes
	}
	if d.Context == nil {
		d.Context = context.Background()
	}
	return &Service{st: d.Store, roles: d.Roles, pub: d.Publisher, gaps: d.CatchUp, tracer: d.Tracer, maxData: d.MaxMessageBytes, log: d.Logger,
		ready: d.Ready, approvals: max(d.Approvals, 1), ctx: d.Context}
}

// IsReviewer reports whether this node is the reviewer.
func (s *Service) IsReviewer() bool {
	r := s.roles.Reviewer()
	return r != "" && r == s.roles.Self()
}

// SubmitRequest is the body of <prefix>.review.submit.
type SubmitRequest struct {
	Type        string          `json:"type"`
	TableName   string          `json:"table_name"`
	TableID     uint64          `json:"table_id"`
	Data        json.RawMessage `json:"data"`
	Description string          `json:"description"`
	// IdempotencyKey makes a retry get the first answer (idem.go).
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	idem           *idem.Request
}

// Submit commits a request (waiting) and its delivery to the reviewer, and
// answers with the request row once both are on disk.
func (s *Service) Submit(ctx context.Context, req SubmitRequest, done func(Row, error)) {
	if t := s.tracer; t != nil {
		d := done
		done = func(row Row, err error) {
			if err == nil {
				t.Submitted(row)
			}
			d(row, err)
		}
	}
	typ, err := ParseType(req.Type)
	if err != nil {
		done(Row{}, err)
		return
	}
	if req.TableName == "" {
		done(Row{}, fmt.Errorf("%w: table_name is missing", ferry.ErrBadRequest))
		return
	}
	if !ValidTable(req.TableName) {
		done(Row{}, fmt.Errorf("%w: table_name %q must be 1-64 letters, digits, '_' or '-'", ferry.ErrBadRequest, req.TableName))
		return
	}
	if req.TableID == 0 {
		done(Row{}, fmt.Errorf("%w: table_id is missing (a positive integer)", ferry.ErrBadRequest))
		return
	}
	data, err := CheckData(req.TableID, req.Data, typ)
	if err != nil {
		done(Row{}, err)
		return
	}
	if err := s.checkSize(data); err != nil {
		done(Row{}, err)
		return
	}
	if err := req.admitKey(typ, data); err != nil {
		done(Row{}, err)
		return
	}
	reviewer := s.roles.Reviewer()
	if reviewer == "" {
		done(Row{}, fmt.Errorf("%w: no reviewer is configured on this node", ferry.ErrUnavailable))
		return
	}
	self := s.roles.Self()
	protoID, _ := protocols.ProtocolFor(pb.Kind_KIND_REVIEW_REQUEST, typ.String())
	var row *storepb.Request
	var first *Row // a retry's first answer
	s.st.Submit(ctx, s.withIdem(req, &row, &first, func(tx *store.Txn) error {
		id, err := tx.Next(store.CtrRequest)
		if err != nil {
			return err
		}
		// The request travels under this node's version of it, which is
		// never handed out twice (not even by a node restored from an older
		// copy): its origin names it on every node.
		ver, err := tx.NextVersion()
		if err != nil {
			return err
		}
		now := tx.Now()
		rr := &pb.ReviewRequest{RequestId: ver, TableId: req.TableID, TableName: req.TableName, Type: typ.String(),
			Data: data, SenderNote: req.Description, ApplicantName: s.roles.SelfName(), CreatedAt: now.Unix()}
		payload, err := proto.Marshal(rr)
		if err != nil {
			return err
		}
		// To the reviewer; to a review group's reviewers, each of them (the
		// body then names no one: every one of them takes it in).
		to, bodyTo := []peer.ID{reviewer}, []byte(reviewer)
		if group := s.roles.ReviewGroup(); len(group) > 1 {
			to, bodyTo = slices.DeleteFunc(group, func(p peer.ID) bool { return p == self }), nil
		}
		sealed, err := tx.AppendOwnAt(ver, &pb.Body{Origin: []byte(self), Kind: pb.Kind_KIND_REVIEW_REQUEST,
			DataType: req.TableName, Payload: payload, CreatedAtUnixNano: now.UnixNano(), To: bodyTo})
		if err != nil {
			return err
		}
		row = &storepb.Request{Id: id, TableId: req.TableID, TableName: req.TableName, Applicant: s.roles.SelfName(),
			Reviewer: s.roles.Name(reviewer), Type: typ.String(), Status: Waiting.String(), Data: data,
			DescriptionSender: req.Description, CreatedAt: now.Unix(), ApplicantId: []byte(self),
			ReviewerId: []byte(reviewer), Origin: originOf(self, ver), ChangeVersion: ver}
		tx.PutRequest(row)
		if reviewer == self {
			r := row
			tx.OnCommit(func() {
				s.pub.Publish(SubjectRequested, s.render(r))
				if s.grouped() {
					s.proposeRequest(r)
				}
			})
			return nil
		}
		s.deliver(tx, store.OwnEntry{Version: ver, Lane: uint8(stream.LaneRequest), Kind: pb.Kind_KIND_REVIEW_REQUEST,
			Protocol: protoID, RequestID: id, To: to}, sealed)
		return nil
	}), func(err error) {
		switch {
		case err != nil:
			done(Row{}, err)
		case first != nil:
			done(*first, nil)
		default:
			done(s.render(row), nil)
		}
	})
}

// deliver records an own change as owed to its receivers (the log is the
// outbox); the sender hears of it, sealed, from the log once it is on disk
// (store.Follow).
func (s *Service) deliver(tx *store.Txn, e store.OwnEntry, sealed *store.Sealed) {
	e.CreatedAt = tx.Now().UnixNano()
	tx.AddOwnEntry(e, sealed)
}

// checkSize bounds request data to half the message limit: a decision
// carries the request's data and the data applied, and must fit one frame.
func (s *Service) checkSize(data []byte) error {
	if limit := s.maxData / 2; len(data) > limit {
		return fmt.Errorf("%w: data is %d bytes, the limit for review data is %d (half of limits.max_message_bytes)", ferry.ErrTooLarge, len(data), limit)
	}
	return nil
}

func originOf(applicant peer.ID, id uint64) string {
	return applicant.String() + "/" + strconv.FormatUint(id, 10)
}

// DecideRequest is the body of <prefix>.review.decide and of the admin API's
// accept, edit and reject.
type DecideRequest struct {
	RequestID uint64            `json:"request_id"`
	Decision  string            `json:"decision"`
	Data      json.RawMessage   `json:"data,omitempty"` // edit: the new data, replacing the request's
	Set       map[string]string `json:"set,omitempty"`  // edit: FIELD=VALUE changes to the request's data
	Note      string            `json:"note,omitempty"` // description.receiver
}

// Counters (kept hot by the store's writer): the last decision sequence
// applied here, and the highest sequence held until its predecessors come.
const (
	ctrApplied = "review_applied"
	ctrHeldMax = "review_held_max"
)

func auxHeld(seq uint64) string { return fmt.Sprintf("review/held/%020d", seq) }

// Decide runs an operator's decision at the reviewer, all in one commit: the
// state change, the table change, the decision sequence, the signed decision
// and its delivery record (broadcast to every member for accepted and
// edited decisions, addressed to the applicant for a rejection).
func (s *Service) Decide(ctx context.Context, req DecideRequest, done func(Row, error)) {
	if t := s.tracer; t != nil {
		d := done
		done = func(row Row, err error) {
			t.Decided(row, err)
			d(row, err)
		}
	}
	dec, err := ParseDecision(req.Decision)
	if err != nil {
		done(Row{}, err)
		return
	}
	if req.RequestID == 0 {
		done(Row{}, fmt.Errorf("%w: request_id is missing", ferry.ErrBadRequest))
		return
	}
	if dec != Edit && (len(req.Data) > 0 || len(req.Set) > 0) {
		done(Row{}, fmt.Errorf("%w: data and set go with edit only", ferry.ErrBadRequest))
		return
	}
	if len(req.Note) > 4096 {
		done(Row{}, fmt.Errorf("%w: note is over 4096 bytes", ferry.ErrTooLarge))
		return
	}
	if s.ready != nil && s.IsReviewer() {
		if err := s.ready(); err != nil {
			done(Row{}, err)
			return
		}
	}
	if s.grouped() {
		s.decideInGroup(ctx, req, dec, done)
		return
	}
	self := s.roles.Self()
	var row *storepb.Request
	s.st.Submit(ctx, func(tx *store.Txn) error {
		r, err := tx.GetRequest(req.RequestID)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: request %d", ferry.ErrNotFound, req.RequestID)
		}
		if err != nil {
			return err
		}
		typ, err := ParseType(r.Type)
		if err != nil {
			return err
		}
		// An edit's data is computed first and its error kept: the state
		// machine's refusals (not the reviewer, decided, a delete) come first.
		hasData := len(req.Data) > 0 || len(req.Set) > 0
		var edit []byte
		var editErr error
		if dec == Edit && hasData {
			edit, editErr = s.editData(r, typ, req)
		}
		act := Act{Decision: dec, By: self, ByName: s.roles.SelfName(), IsReviewer: s.IsReviewer(),
			At: tx.Now().Unix(), HasData: hasData, Data: edit}
		if err := s.decideRow(tx, r, typ, act, s.approvals, req.Note, editErr); err != nil {
			return err
		}
		row = r
		return nil
	}, func(err error) {
		if err != nil {
			done(Row{}, err)
			return
		}
		done(s.replied(row), nil)
	})
}

// decideRow runs act on the stored request r in tx, all in one commit: an
// approval that does not decide yet is kept in the row; a decision writes
// the state change, the table change, the decision sequence (this node's
// next: in a review group the same on every reviewer, which apply the
// group's log in one order), the decision signed by this node and its
// delivery record (broadcast to every member for accepted and edited
// decisions, addressed to the applicant for a rejection). k is
// review.approvals; note is the
// operator's (description.receiver); editErr, an edit's data error, is
// returned after the state machine's own refusals.
func (s *Service) decideRow(tx *store.Txn, r *storepb.Request, typ Type, act Act, k int, note string, editErr error) error {
	self := s.roles.Self()
	now := tx.Now()
	cur, _ := ParseStatus(r.Status)
	out, err := Transition(stateOf(r, cur, typ), act, k)
	if err != nil {
		return err
	}
	if editErr != nil {
		return editErr
	}
	if out.Status == Waiting {
		// An approval that does not decide yet: the row keeps it (and a
		// note for the decision), nothing else changes.
		r.Approvals, r.EditedData = approvalsPB(out.Approvals), out.Edited
		if note != "" || act.Decision == Edit {
			r.DescriptionReceiver = note
		}
		tx.PutRequest(r)
		return nil
	}
	next, eff, data := out.Status, out.Effects, out.Data
	var seq uint64
	if eff.Apply {
		existing, err := tx.GetRow(r.TableName, r.TableId)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		change, err := ApplyRow(typ, r.TableId, existing, data, true)
		if err != nil {
			return err
		}
		applyChange(tx, r.TableName, r.TableId, change)
		if seq, err = tx.Next(store.CtrDecision); err != nil {
			return err
		}
	}
	if note == "" && next != Rejected {
		note = r.DescriptionReceiver // given with an earlier approval of what is decided
	}
	if note == "" {
		note = defaultNote(typ, next)
	}
	applicant := peer.ID(r.ApplicantId)
	d := &pb.ReviewDecision{Origin: r.Origin, Sequence: seq, Status: next.String(), Data: data, ReceiverNote: note,
		ReviewerName: act.ByName, Applicant: r.ApplicantId, DecidedAt: now.Unix(),
		Request: &pb.ReviewRequest{RequestId: originID(r.Origin), TableId: r.TableId, TableName: r.TableName, Type: r.Type,
			Data: r.Data, SenderNote: r.DescriptionSender, ApplicantName: r.Applicant, CreatedAt: r.CreatedAt}}
	payload, err := proto.Marshal(d)
	if err != nil {
		return err
	}
	body := &pb.Body{Origin: []byte(self), Kind: pb.Kind_KIND_REVIEW_DECISION, DataType: r.TableName,
		Payload: payload, CreatedAtUnixNano: now.UnixNano()}
	// Accepted and edited decisions go to every member (broadcast: the
	// receivers are the members when it is sent); a rejection to the
	// applicant only.
	var to []peer.ID
	if !eff.Broadcast && applicant != self {
		to = []peer.ID{applicant}
		body.To = []byte(applicant)
	}
	ver, sealed, err := tx.AppendOwn(body)
	if err != nil {
		return err
	}
	if eff.Apply {
		tx.PutDecision(seq, ver, sealed.Hash)
		tx.SetCounter(ctrApplied, seq)
	}
	r.Status, r.Sequence, r.Data, r.DescriptionReceiver, r.DecidedAt, r.ChangeVersion = next.String(), seq, data, note, now.Unix(), ver
	// The node whose act decided it (on a review group, the same on every
	// reviewer's copy).
	r.Reviewer, r.ReviewerId = act.ByName, []byte(act.By)
	r.Approvals, r.EditedData = nil, nil
	tx.PutRequest(r)
	protoID, _ := protocols.ProtocolFor(pb.Kind_KIND_REVIEW_DECISION, r.Type)
	if eff.Broadcast || len(to) > 0 {
		s.deliver(tx, store.OwnEntry{Version: ver, Lane: uint8(stream.LaneOf(body)), Kind: pb.Kind_KIND_REVIEW_DECISION,
			Protocol: protoID, RequestID: r.Id, To: to}, sealed)
	}
	tx.OnCommit(func() { s.pub.Publish(SubjectDecided+"."+r.TableName, s.render(r)) })
	return nil
}

// editData is the data an edit asks for: data replacing the round's (the
// pending edit's, else the request's), then the fields of set over it.
func (s *Service) editData(r *storepb.Request, typ Type, req DecideRequest) ([]byte, error) {
	data := r.Data
	if len(r.EditedData) > 0 {
		data = r.EditedData
	}
	var err error
	if len(req.Data) > 0 {
		if data, err = CheckData(r.TableId, req.Data, typ); err != nil {
			return nil, err
		}
	}
	if len(req.Set) > 0 {
		if data, err = SetFields(data, req.Set); err != nil {
			return nil, err
		}
	}
	return data, s.checkSize(data)
}

// stateOf is what the state machine reads of a stored request.
func stateOf(r *storepb.Request, st Status, typ Type) RequestState {
	rs := RequestState{Status: st, Type: typ, Applicant: peer.ID(r.ApplicantId), Data: r.Data}
	if len(r.EditedData) > 0 {
		rs.Edited = r.EditedData
	}
	for _, a := range r.Approvals {
		rs.Approvals = append(rs.Approvals, Approval{ReviewerID: peer.ID(a.ReviewerId), Reviewer: a.Reviewer, At: a.At, Digest: a.Digest})
	}
	return rs
}

func approvalsPB(as []Approval) []*storepb.Approval {
	out := make([]*storepb.Approval, 0, len(as))
	for _, a := range as {
		out = append(out, &storepb.Approval{ReviewerId: []byte(a.ReviewerID), Reviewer: a.Reviewer, At: a.At, Digest: a.Digest})
	}
	return out
}

func defaultNote(t Type, s Status) string {
	switch s {
	case Rejected:
		return "rejected"
	case Edited:
		return "edited"
	}
	switch t {
	case Insert:
		return "added"
	case Update:
		return "updated"
	}
	return "deleted"
}

func originID(origin string) uint64 {
	i := strings.LastIndexByte(origin, '/')
	n, _ := strconv.ParseUint(origin[i+1:], 10, 64)
	return n
}

func applyChange(tx *store.Txn, table string, id uint64, c RowChange) {
	if c.Delete {
		tx.DeleteRow(table, id)
	} else {
		tx.PutRow(table, id, c.Row)
	}
}

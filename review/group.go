package review

// group.go: the review service on a review group (SPEC.md "The review
// group", `reviewers: [R1, R2, R3]`). Every reviewer node runs the group's
// log (reviewgroup.Group); what changes the ledger is a command in it:
//
//   - "request": a request a reviewer took in (from its applicant, or its
//     own), so that every reviewer holds the waiting row;
//   - "act": an operator's accept, edit or reject at any reviewer node,
//     carrying the request too (a reviewer that never saw it takes it in
//     from the command).
//
// The state machine (GroupFSM) applies each committed command to this
// node's store in log order, in one store transaction with the last
// applied log index and the command's id: a replay after a restart applies
// nothing twice, and a command retried under the same id answers what it
// answered first. A deciding act takes the next decision sequence, which is
// the same on every reviewer (they apply the same decisions in the same
// order from the same start), writes the decision signed by this node and
// its delivery records: each reviewer sends its own signed copy, and
// members take a sequence once (receive.go: the same decision from another
// reviewer is a duplicate, a different one an equivocation).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// Proposer commits a command through the review group's log
// (reviewgroup.Group): on the leader, or forwarded to it; it returns once
// this node's state machine applied it, with the state machine's answer.
type Proposer interface {
	Apply(ctx context.Context, cmd []byte) ([]byte, error)
}

// Commands of the group's log.
const (
	opRequest = "request"
	opAct     = "act"
)

// groupCmd is one command of the group's log (JSON).
type groupCmd struct {
	// ID names the command: a retry carries the same one.
	ID string `json:"id"`
	Op string `json:"op"`
	// Origin names the request on every node; Applicant is its applicant's
	// peer id and Request the request as its applicant sent it.
	Origin    string `json:"origin"`
	Applicant []byte `json:"applicant"`
	Request   []byte `json:"request"` // pb.ReviewRequest
	// An act: the decision, the edited data (computed where the operator
	// acted), the note, the reviewer node that acted and when (Unix s).
	Decision  string `json:"decision,omitempty"`
	HasData   bool   `json:"has_data,omitempty"`
	Data      []byte `json:"data,omitempty"`
	Note      string `json:"note,omitempty"`
	Actor     []byte `json:"actor,omitempty"`
	ActorName string `json:"actor_name,omitempty"`
	At        int64  `json:"at,omitempty"`
	// Approvals is review.approvals where the operator acted: every
	// reviewer applies the act with the same k, whatever its own config.
	Approvals int `json:"approvals,omitempty"`
}

// Store keys of the group's state machine: the last log index applied, and
// each command id applied (its answer: the request's origin).
const ctrGroupIndex = "review_group_index"

func auxGroupCmd(id string) string { return cmdPrefix + id }

// AttachGroup makes the service decide through the review group g. The
// node calls it once, after building the group from GroupFSM and before
// Start: the group needs the state machine first, so it cannot be a Deps
// field.
func (s *Service) AttachGroup(g Proposer) { s.group = g }

// grouped reports whether decisions go through a review group.
func (s *Service) grouped() bool { return s.group != nil }

// Close waits for the group proposals in flight (they end when the group or
// ctx does). The node calls it after closing the group.
func (s *Service) Close() { s.g.Close() }

func newCmdID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// requestCmd is the "request" command for a stored row.
func requestCmd(r *storepb.Request) ([]byte, error) {
	rr, err := proto.Marshal(requestOf(r))
	if err != nil {
		return nil, err
	}
	return json.Marshal(groupCmd{ID: "request:" + r.Origin, Op: opRequest, Origin: r.Origin, Applicant: r.ApplicantId, Request: rr})
}

// requestOf is the request as its applicant sent it, from a stored row.
func requestOf(r *storepb.Request) *pb.ReviewRequest {
	return &pb.ReviewRequest{RequestId: originID(r.Origin), TableId: r.TableId, TableName: r.TableName, Type: r.Type,
		Data: r.Data, SenderNote: r.DescriptionSender, ApplicantName: r.Applicant, CreatedAt: r.CreatedAt}
}

// proposeRequest puts a request this reviewer took in into the group's log
// (once per origin: the command id is the origin), in the background; a
// failure is logged only: every reviewer gets the request from its
// applicant too, and an act carries it.
func (s *Service) proposeRequest(r *storepb.Request) {
	cmd, err := requestCmd(r)
	if err != nil {
		s.log.Warn("review group: encode a request", "origin", r.Origin, "err", err)
		return
	}
	origin := r.Origin
	s.g.Go(func() {
		if _, err := s.group.Apply(s.ctx, cmd); err != nil && s.ctx.Err() == nil {
			s.log.Info("review group: request not put in the group's log; its applicant sends it to every reviewer", "origin", origin, "err", err)
		}
	})
}

// decideInGroup runs an operator's act through the group: the row is read
// here (by this node's request id), the act becomes a command, and the
// answer is this node's row once its state machine applied it.
func (s *Service) decideInGroup(ctx context.Context, req DecideRequest, dec Decision, done func(Row, error)) {
	r, err := s.st.Request(req.RequestID)
	if errors.Is(err, store.ErrNotFound) {
		done(Row{}, fmt.Errorf("%w: request %d", ferry.ErrNotFound, req.RequestID))
		return
	}
	if err != nil {
		done(Row{}, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err))
		return
	}
	typ, err := ParseType(r.Type)
	if err != nil {
		done(Row{}, err)
		return
	}
	cur, _ := ParseStatus(r.Status)
	hasData := len(req.Data) > 0 || len(req.Set) > 0
	var edit []byte
	if dec == Edit && hasData {
		if cur == Waiting && typ != Delete {
			if edit, err = s.editData(r, typ, req); err != nil {
				done(Row{}, err)
				return
			}
		}
	}
	rr, err := proto.Marshal(requestOf(r))
	if err != nil {
		done(Row{}, err)
		return
	}
	self := s.roles.Self()
	cmd, err := json.Marshal(groupCmd{ID: newCmdID(), Op: opAct, Origin: r.Origin, Applicant: r.ApplicantId, Request: rr,
		Decision: dec.String(), HasData: hasData, Data: edit, Note: req.Note, Actor: []byte(self), ActorName: s.roles.SelfName(),
		At: s.st.Now().Unix(), Approvals: s.approvals})
	if err != nil {
		done(Row{}, err)
		return
	}
	if !s.g.Go(func() {
		// An answer of unavailable may hide a command that committed (the
		// leader lost its leadership as it did): it is asked once more
		// under the same id, which the state machine answers from what it
		// did, if it did; else the group says why it cannot decide.
		_, err := s.group.Apply(ctx, cmd)
		if errors.Is(err, ferry.ErrUnavailable) && ctx.Err() == nil {
			_, err = s.group.Apply(ctx, cmd)
		}
		if err != nil {
			done(Row{}, err)
			return
		}
		row, err := s.st.RequestByOrigin(r.Origin)
		if err != nil {
			done(Row{}, fmt.Errorf("%w: read the decided request: %w", ferry.ErrUnavailable, err))
			return
		}
		done(s.replied(row), nil)
	}) {
		done(Row{}, fmt.Errorf("%w: the node is closing", ferry.ErrUnavailable))
	}
}

// GroupFSM is the review group's state machine over this service's store
// (the FSM contract of package reviewgroup).
func (s *Service) GroupFSM() raft.FSM { return groupFSM{s} }

type groupFSM struct{ s *Service }

// Apply applies one committed command; its answer is the request's origin,
// or the refusal (a Ferry error: it crosses the wire to the reviewer that
// proposed it).
func (f groupFSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var c groupCmd
	if err := json.Unmarshal(l.Data, &c); err != nil || c.ID == "" || c.Origin == "" {
		return fmt.Errorf("%w: a review group command that is not one (%v)", ferry.ErrBadRequest, err)
	}
	var answer []byte
	err := f.s.st.Update(context.Background(), func(tx *store.Txn) error {
		last, err := tx.CounterValue(ctrGroupIndex)
		if err != nil {
			return err
		}
		if l.Index <= last {
			answer = []byte(c.Origin) // applied before a restart
			return nil
		}
		if prev, err := tx.GetAux(auxGroupCmd(c.ID)); err == nil && len(prev) > 0 {
			answer = prev
			tx.SetCounter(ctrGroupIndex, l.Index)
			return nil
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err := f.s.applyCmd(tx, &c); err != nil {
			return err
		}
		answer = []byte(c.Origin)
		tx.SetAux(auxGroupCmd(c.ID), answer)
		tx.SetCounter(ctrGroupIndex, l.Index)
		return nil
	})
	if err != nil {
		return err
	}
	return answer
}

// applyCmd applies a command in tx.
func (s *Service) applyCmd(tx *store.Txn, c *groupCmd) error {
	r, err := s.groupRow(tx, c)
	if err != nil {
		return err
	}
	if c.Op == opRequest {
		return nil
	}
	if c.Op != opAct {
		return fmt.Errorf("%w: review group command %q", ferry.ErrBadRequest, c.Op)
	}
	dec, err := ParseDecision(c.Decision)
	if err != nil {
		return err
	}
	typ, err := ParseType(r.Type)
	if err != nil {
		return err
	}
	var editErr error
	if dec == Edit && c.HasData && len(c.Data) == 0 {
		editErr = ErrEditWithoutData
	}
	actor := peer.ID(c.Actor)
	act := Act{Decision: dec, By: actor, ByName: c.ActorName, IsReviewer: s.roles.InReviewGroup(actor), At: c.At,
		HasData: c.HasData, Data: c.Data}
	return s.decideRow(tx, r, typ, act, max(c.Approvals, 1), c.Note, editErr)
}

// groupRow is the command's request row: this node's, or a new waiting row
// from the command when this reviewer has not received the request yet.
func (s *Service) groupRow(tx *store.Txn, c *groupCmd) (*storepb.Request, error) {
	r, err := tx.RequestByOrigin(c.Origin)
	if err == nil {
		return r, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	rr := &pb.ReviewRequest{}
	if err := proto.Unmarshal(c.Request, rr); err != nil {
		return nil, fmt.Errorf("%w: the command's request: %w", ferry.ErrBadRequest, err)
	}
	applicant, err := peer.IDFromBytes(c.Applicant)
	if err != nil || originOf(applicant, rr.RequestId) != c.Origin {
		return nil, fmt.Errorf("%w: the command's request is not %s", ferry.ErrBadRequest, c.Origin)
	}
	typ, err := ParseType(rr.Type)
	if err != nil {
		return nil, err
	}
	if !ValidTable(rr.TableName) || rr.TableId == 0 {
		return nil, fmt.Errorf("%w: the command's request names no valid table row", ferry.ErrBadRequest)
	}
	if _, err := CheckData(rr.TableId, rr.Data, typ); err != nil {
		return nil, err
	}
	id, err := tx.Next(store.CtrRequest)
	if err != nil {
		return nil, err
	}
	name := rr.ApplicantName
	if name == "" {
		name = s.roles.Name(applicant)
	}
	r = &storepb.Request{Id: id, TableId: rr.TableId, TableName: rr.TableName, Applicant: name,
		Reviewer: s.roles.SelfName(), Type: typ.String(), Status: Waiting.String(), Data: rr.Data,
		DescriptionSender: rr.SenderNote, CreatedAt: rr.CreatedAt, ApplicantId: []byte(applicant),
		ReviewerId: []byte(s.roles.Self()), Origin: c.Origin}
	tx.PutRequest(r)
	row := r
	tx.OnCommit(func() { s.pub.Publish(SubjectRequested, s.render(row)) })
	return r, nil
}

package review

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// Admit lets in review requests from members to the reviewer, sent by
// their applicant, and decisions signed by the configured reviewer.
func (s *Service) Admit(in *stream.Inbound) error {
	switch in.Body.Kind {
	case pb.Kind_KIND_REVIEW_REQUEST:
		if !s.IsReviewer() {
			return errors.New("this node is not the reviewer")
		}
		if !s.roles.IsMember(in.From) {
			return fmt.Errorf("%s is not a member", in.From)
		}
		if in.Origin != in.From {
			return fmt.Errorf("request origin %s differs from sender %s", in.Origin, in.From)
		}
		return nil
	case pb.Kind_KIND_REVIEW_DECISION:
		return s.AdmitDecision(in.Origin)
	}
	return fmt.Errorf("kind %s is not a review message", in.Body.Kind)
}

// AdmitDecision accepts decisions signed by the configured reviewer, or by
// any reviewer of the review group. A reviewer of a group admits its
// peers' copies (and acknowledges them as duplicates: its own ledger
// follows the group's log); a lone reviewer takes none.
func (s *Service) AdmitDecision(origin peer.ID) error {
	r := s.roles.Reviewer()
	if r == "" {
		return errors.New("no reviewer is configured here")
	}
	if !s.roles.InReviewGroup(origin) {
		return fmt.Errorf("decision signed by %s, not by the reviewer %s or its review group", origin, r)
	}
	if s.IsReviewer() && (!s.grouped() || origin == s.roles.Self()) {
		return errors.New("the reviewer does not take decisions from others")
	}
	return nil
}

// Apply commits a received request or decision.
func (s *Service) Apply(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error) {
	if in.Body.Kind == pb.Kind_KIND_REVIEW_REQUEST {
		return s.applyRequest(tx, in)
	}
	return s.ApplyDecision(tx, in)
}

func (s *Service) applyRequest(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error) {
	rr := &pb.ReviewRequest{}
	if err := proto.Unmarshal(in.Body.Payload, rr); err != nil {
		return 0, stream.Reject("request payload: %v", err)
	}
	if held, err := stream.CheckHeld(tx, in.Origin, in.Body.OriginVersion, in.Hash); err != nil || held {
		return pb.AckStatus_ACK_STATUS_DUPLICATE, err
	}
	origin := originOf(in.Origin, rr.RequestId)
	if have, err := tx.RequestByOrigin(origin); err == nil && s.grouped() && sameRequest(have, rr) {
		// A reviewer of a group that took the request in from the group's
		// log first.
		return pb.AckStatus_ACK_STATUS_DUPLICATE, nil
	} else if err == nil {
		// A request under the same origin with other content: the applicant
		// reused a request id (older applicants numbered requests with a
		// counter a restored store could repeat).
		return 0, &stream.RejectError{Equivocation: true, Reason: fmt.Sprintf("equivocation: this node holds another request %s", origin)}
	} else if !errors.Is(err, store.ErrNotFound) {
		return 0, err
	}
	typ, err := ParseType(rr.Type)
	if err != nil {
		return 0, stream.Reject("%v", err)
	}
	if !ValidTable(rr.TableName) || rr.TableName != in.Body.DataType || rr.TableId == 0 || rr.RequestId == 0 {
		return 0, stream.Reject("request names no valid table row")
	}
	if _, err := CheckData(rr.TableId, rr.Data, typ); err != nil {
		return 0, stream.Reject("%v", err)
	}
	ver, err := in.AppendTo(tx)
	if err != nil {
		return 0, err
	}
	id, err := tx.Next(store.CtrRequest)
	if err != nil {
		return 0, err
	}
	applicant := rr.ApplicantName
	if applicant == "" {
		applicant = s.roles.Name(in.Origin)
	}
	row := &storepb.Request{Id: id, TableId: rr.TableId, TableName: rr.TableName, Applicant: applicant,
		Reviewer: s.roles.SelfName(), Type: typ.String(), Status: Waiting.String(), Data: rr.Data,
		DescriptionSender: rr.SenderNote, CreatedAt: rr.CreatedAt, ApplicantId: []byte(in.Origin),
		ReviewerId: []byte(s.roles.Self()), Origin: origin, ChangeVersion: ver}
	tx.PutRequest(row)
	tx.OnCommit(func() {
		s.pub.Publish(SubjectRequested, s.render(row))
		if s.grouped() {
			s.proposeRequest(row)
		}
	})
	return pb.AckStatus_ACK_STATUS_APPLIED, nil
}

// sameRequest reports whether the stored row is the request rr.
func sameRequest(r *storepb.Request, rr *pb.ReviewRequest) bool {
	return r.TableName == rr.TableName && r.TableId == rr.TableId && r.Type == rr.Type && bytes.Equal(r.Data, rr.Data)
}

// ApplyDecision applies a reviewer decision whose envelope was verified
// against the reviewer. Accepted and edited decisions apply strictly in
// sequence order: one that arrives ahead of a missing one is kept (durably)
// until the gap is filled, then applied with it. Sync uses it too.
func (s *Service) ApplyDecision(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error) {
	body := in.Body
	d := &pb.ReviewDecision{}
	if err := proto.Unmarshal(body.Payload, d); err != nil {
		return 0, stream.Reject("decision payload: %v", err)
	}
	if d.Request == nil {
		return 0, stream.Reject("decision without its request")
	}
	status, err := ParseStatus(d.Status)
	if err != nil || status == Waiting {
		return 0, stream.Reject("decision status %q", d.Status)
	}
	if _, err := ParseType(d.Request.Type); err != nil || !ValidTable(d.Request.TableName) {
		return 0, stream.Reject("decision names no valid table row")
	}
	if s.grouped() && s.IsReviewer() {
		// Another reviewer's copy: this reviewer applied the decision, or
		// will, from the group's log.
		return pb.AckStatus_ACK_STATUS_DUPLICATE, nil
	}
	if held, err := stream.CheckHeld(tx, in.Origin, body.OriginVersion, in.Hash); err != nil || held {
		return pb.AckStatus_ACK_STATUS_DUPLICATE, err
	}
	if dup, err := s.decidedAlready(tx, d, status); err != nil || dup {
		return pb.AckStatus_ACK_STATUS_DUPLICATE, err
	}
	if status == Rejected {
		if d.Sequence != 0 {
			return 0, stream.Reject("a rejection carries no sequence")
		}
		ver, err := in.AppendTo(tx)
		if err != nil {
			return 0, err
		}
		return pb.AckStatus_ACK_STATUS_APPLIED, s.record(tx, d, ver)
	}
	if d.Sequence == 0 {
		return 0, stream.Reject("an applied decision needs a sequence")
	}
	applied, err := tx.CounterValue(ctrApplied)
	if err != nil {
		return 0, err
	}
	switch {
	case d.Sequence <= applied:
		// Held already, under another version: the same decision relayed,
		// or a reviewer that reused a sequence (an equivocation).
		if ver, hash, ok, err := tx.Decision(d.Sequence); err != nil {
			return 0, err
		} else if ok && hash != 0 && hash != in.Hash {
			// Another reviewer's copy of the same decision (the same
			// request and outcome) is a duplicate; anything else under the
			// sequence is an equivocation.
			same, err := s.sameDecision(tx, ver, d)
			if err != nil {
				return 0, err
			}
			if !same {
				return 0, &stream.RejectError{Equivocation: true,
					Reason: fmt.Sprintf("equivocation: this node applied another decision under sequence %d", d.Sequence)}
			}
		}
		return pb.AckStatus_ACK_STATUS_DUPLICATE, nil
	case d.Sequence > applied+1:
		held, err := tx.GetAux(auxHeld(d.Sequence))
		if err == nil && len(held) > 0 {
			return pb.AckStatus_ACK_STATUS_DUPLICATE, nil
		}
		tx.SetAux(auxHeld(d.Sequence), in.EnvelopeRaw())
		if heldMax, err := tx.CounterValue(ctrHeldMax); err != nil {
			return 0, err
		} else if d.Sequence > heldMax {
			tx.SetCounter(ctrHeldMax, d.Sequence)
		}
		// Out of order on gossip is common (news take different paths), and
		// spread asks for a gap that stays; on a stream or by catch-up a
		// held decision is a gap: ask now.
		level := slog.LevelInfo
		if in.Gossip {
			level = slog.LevelDebug
		}
		s.log.Log(context.Background(), level, "decision held until the ones before it arrive", "sequence", d.Sequence, "applied", applied)
		if s.gaps != nil && !in.Gossip {
			from := peer.ID(body.Origin)
			tx.OnCommit(func() { s.gaps.DecisionGap(from, applied, d.Sequence) })
		}
		return pb.AckStatus_ACK_STATUS_APPLIED, nil
	}
	if err := s.applyInOrder(tx, in, d); err != nil {
		return 0, err
	}
	return pb.AckStatus_ACK_STATUS_APPLIED, s.releaseHeld(tx, d.Sequence)
}

// releaseHeld applies the decisions held behind sequence seq, in order.
func (s *Service) releaseHeld(tx *store.Txn, seq uint64) error {
	heldMax, err := tx.CounterValue(ctrHeldMax)
	if err != nil {
		return err
	}
	for next := seq + 1; next <= heldMax; next++ {
		raw, err := tx.GetAux(auxHeld(next))
		if errors.Is(err, store.ErrNotFound) || (err == nil && len(raw) == 0) {
			break
		}
		if err != nil {
			return err
		}
		henv := &pb.Envelope{}
		hbody := &pb.Body{}
		hd := &pb.ReviewDecision{}
		if proto.Unmarshal(raw, henv) != nil || proto.Unmarshal(henv.Body, hbody) != nil || proto.Unmarshal(hbody.Payload, hd) != nil {
			return fmt.Errorf("held decision %d is corrupt", next)
		}
		tx.DeleteAux(auxHeld(next))
		hin := &stream.Inbound{Origin: peer.ID(hbody.Origin), Body: hbody, Raw: raw, Hash: store.BodyHash(henv.Body)}
		if err := s.applyInOrder(tx, hin, hd); err != nil {
			return err
		}
	}
	return nil
}

// applyInOrder applies the decision that is next in sequence.
func (s *Service) applyInOrder(tx *store.Txn, in *stream.Inbound, d *pb.ReviewDecision) error {
	e, held, err := tx.HeldOrigin(in.Origin, in.Body.OriginVersion)
	if err != nil {
		return err
	}
	ver := e.LocalVersion
	if !held {
		if ver, err = in.AppendTo(tx); err != nil {
			return err
		}
	}
	typ, _ := ParseType(d.Request.Type)
	existing, err := tx.GetRow(d.Request.TableName, d.Request.TableId)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	change, err := ApplyRow(typ, d.Request.TableId, existing, d.Data, false)
	if err != nil {
		return err
	}
	applyChange(tx, d.Request.TableName, d.Request.TableId, change)
	tx.PutDecision(d.Sequence, ver, in.Hash)
	tx.SetCounter(ctrApplied, d.Sequence)
	return s.record(tx, d, ver)
}

// sameDecision reports whether the decision stored at log version ver
// decides the same request the same way as d (the copies the reviewers of
// a group each sign).
func (s *Service) sameDecision(tx *store.Txn, ver uint64, d *pb.ReviewDecision) (bool, error) {
	body, err := tx.ChangeBody(ver)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	have := &pb.ReviewDecision{}
	if err := proto.Unmarshal(body.Payload, have); err != nil {
		return false, nil
	}
	return have.Origin == d.Origin && have.Sequence == d.Sequence && have.Status == d.Status && bytes.Equal(have.Data, d.Data), nil
}

// decidedAlready reports whether the request d decides was decided here
// the same way already (another reviewer's copy of a decision, most often
// a rejection: those carry no sequence); a different outcome for it is an
// equivocation.
func (s *Service) decidedAlready(tx *store.Txn, d *pb.ReviewDecision, status Status) (bool, error) {
	r, err := tx.RequestByOrigin(d.Origin)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if r.Status == Waiting.String() || r.Status == "" {
		return false, nil
	}
	if r.Status == status.String() && r.Sequence == d.Sequence && bytes.Equal(r.Data, d.Data) {
		return true, nil
	}
	return false, &stream.RejectError{Equivocation: true,
		Reason: fmt.Sprintf("equivocation: request %s was decided %s here (sequence %d), this decision says %s (sequence %d)",
			d.Origin, r.Status, r.Sequence, d.Status, d.Sequence)}
}

// record writes the request row with its final status and publishes it.
func (s *Service) record(tx *store.Txn, d *pb.ReviewDecision, ver uint64) error {
	r, err := tx.RequestByOrigin(d.Origin)
	switch {
	case errors.Is(err, store.ErrNotFound):
		id, err := tx.Next(store.CtrRequest)
		if err != nil {
			return err
		}
		rq := d.Request
		r = &storepb.Request{Id: id, TableId: rq.TableId, TableName: rq.TableName, Applicant: rq.ApplicantName,
			Type: rq.Type, DescriptionSender: rq.SenderNote, CreatedAt: rq.CreatedAt, ApplicantId: d.Applicant, Origin: d.Origin}
	case err != nil:
		return err
	}
	r.Reviewer = d.ReviewerName
	r.ReviewerId = []byte(s.roles.Reviewer())
	r.Status, r.Sequence, r.Data, r.DescriptionReceiver, r.DecidedAt, r.ChangeVersion = d.Status, d.Sequence, d.Data, d.ReceiverNote, d.DecidedAt, ver
	r.Approvals, r.EditedData = nil, nil
	tx.PutRequest(r)
	tx.OnCommit(func() { s.pub.Publish(SubjectDecided+"."+r.TableName, s.render(r)) })
	return nil
}

package review

import (
	"errors"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// RecoverOwn puts back one of this node's own review changes that a peer
// held and this node's store lost (restored from an older copy): a request
// it submitted gets its row back; a decision it made as the reviewer is
// applied again in sequence order and owed again to members that may lack
// it. It reports whether the change was missing.
func (s *Service) RecoverOwn(tx *store.Txn, in *stream.Inbound) (bool, error) {
	body := in.Body
	ok, err := tx.PutOwnRecovered(body, in.Hash, in.EnvelopeRaw())
	if err != nil || !ok {
		return ok, err
	}
	switch body.Kind {
	case pb.Kind_KIND_REVIEW_REQUEST:
		rr := &pb.ReviewRequest{}
		if proto.Unmarshal(body.Payload, rr) != nil {
			return true, nil
		}
		origin := originOf(s.roles.Self(), rr.RequestId)
		if _, err := tx.RequestByOrigin(origin); err == nil {
			return true, nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return false, err
		}
		id, err := tx.Next(store.CtrRequest)
		if err != nil {
			return false, err
		}
		reviewer := peer.ID(body.To)
		if reviewer == "" {
			reviewer = s.roles.Reviewer() // sent to every reviewer of a review group
		}
		tx.PutRequest(&storepb.Request{Id: id, TableId: rr.TableId, TableName: rr.TableName, Applicant: rr.ApplicantName,
			Reviewer: s.roles.Name(reviewer), Type: rr.Type, Status: Waiting.String(), Data: rr.Data, DescriptionSender: rr.SenderNote,
			CreatedAt: rr.CreatedAt, ApplicantId: []byte(s.roles.Self()), ReviewerId: []byte(reviewer), Origin: origin,
			ChangeVersion: body.OriginVersion})
	case pb.Kind_KIND_REVIEW_DECISION:
		d := &pb.ReviewDecision{}
		if proto.Unmarshal(body.Payload, d) != nil || d.Request == nil {
			return true, nil
		}
		protoID, _ := protocols.ProtocolFor(pb.Kind_KIND_REVIEW_DECISION, d.Request.Type)
		e := store.OwnEntry{Version: body.OriginVersion, Lane: uint8(stream.LaneOf(body)), Kind: body.Kind, Protocol: protoID,
			CreatedAt: body.CreatedAtUnixNano}
		if d.Sequence == 0 {
			if err := s.record(tx, d, body.OriginVersion); err != nil {
				return false, err
			}
			e.To = []peer.ID{peer.ID(d.Applicant)}
		} else {
			if c, err := tx.CounterValue(store.CtrDecision); err != nil {
				return false, err
			} else if d.Sequence > c {
				tx.SetCounter(store.CtrDecision, d.Sequence)
			}
			applied, err := tx.CounterValue(ctrApplied)
			if err != nil {
				return false, err
			}
			switch {
			case d.Sequence == applied+1:
				if err := s.applyInOrder(tx, in, d); err != nil {
					return false, err
				}
				if err := s.releaseHeld(tx, d.Sequence); err != nil {
					return false, err
				}
			case d.Sequence > applied+1:
				tx.SetAux(auxHeld(d.Sequence), in.EnvelopeRaw())
				if m, err := tx.CounterValue(ctrHeldMax); err != nil {
					return false, err
				} else if d.Sequence > m {
					tx.SetCounter(ctrHeldMax, d.Sequence)
				}
			default:
				s.log.Error("a recovered decision reuses a sequence this reviewer gave again after its restore", "sequence", d.Sequence)
			}
		}
		tx.AddOwnEntry(e, nil)
	}
	return true, nil
}

package review

import (
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/natsbridge"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// Event is the event apps were told of when the change at local version ver
// was applied here, for the events stream (package eventstream):
// review.requested for a request this node reviews (received, or its own
// when it is the reviewer), review.decided.<table> for a decision (received,
// or its own on the reviewer). An own request sent to another reviewer has
// none (ok false).
//
// The row is rendered as it was when the change was applied: the stored
// row (its local id and the request's fields), with the fields a later
// decision changed set back from the change itself.
func (s *Service) Event(ver uint64, body *pb.Body) (suffix string, data []byte, ok bool, err error) {
	self := s.roles.Self()
	origin := peer.ID(body.Origin)
	var row *storepb.Request
	switch body.Kind {
	case pb.Kind_KIND_REVIEW_REQUEST:
		if origin == self && peer.ID(body.To) != self {
			return "", nil, false, nil
		}
		rr := &pb.ReviewRequest{}
		if err := proto.Unmarshal(body.Payload, rr); err != nil {
			return "", nil, false, nil // refused when it came: not in the log
		}
		if row, err = s.storedRow(originOf(origin, rr.RequestId)); err != nil {
			return "", nil, false, err
		}
		if row == nil {
			row = &storepb.Request{TableId: rr.TableId, TableName: rr.TableName, Applicant: rr.ApplicantName, Reviewer: s.roles.SelfName(),
				Type: rr.Type, DescriptionSender: rr.SenderNote, CreatedAt: rr.CreatedAt, ApplicantId: []byte(origin),
				ReviewerId: []byte(self), Origin: originOf(origin, rr.RequestId)}
		}
		row.Status, row.Sequence, row.Data, row.DescriptionReceiver, row.DecidedAt = Waiting.String(), 0, rr.Data, "", 0
		suffix = SubjectRequested
	case pb.Kind_KIND_REVIEW_DECISION:
		d := &pb.ReviewDecision{}
		if err := proto.Unmarshal(body.Payload, d); err != nil || d.Request == nil {
			return "", nil, false, nil // refused when it came: not in the log
		}
		if row, err = s.storedRow(d.Origin); err != nil {
			return "", nil, false, err
		}
		if row == nil {
			rq := d.Request
			row = &storepb.Request{TableId: rq.TableId, TableName: rq.TableName, Applicant: rq.ApplicantName, Type: rq.Type,
				DescriptionSender: rq.SenderNote, CreatedAt: rq.CreatedAt, ApplicantId: d.Applicant, Origin: d.Origin}
		}
		if origin != self {
			row.Reviewer, row.ReviewerId = d.ReviewerName, []byte(origin)
		}
		row.Status, row.Sequence, row.Data, row.DescriptionReceiver, row.DecidedAt = d.Status, d.Sequence, d.Data, d.ReceiverNote, d.DecidedAt
		suffix = SubjectDecided + "." + row.TableName
	default:
		return "", nil, false, nil
	}
	row.Approvals, row.EditedData = nil, nil // recorded after the change, while the request waited
	if data, err = natsbridge.Encode(s.render(row)); err != nil {
		return "", nil, false, fmt.Errorf("encode %s event of change %d: %w", suffix, ver, err)
	}
	return suffix, data, true, nil
}

// storedRow is the request row of origin, nil when this node holds none.
func (s *Service) storedRow(origin string) (*storepb.Request, error) {
	r, err := s.st.RequestByOrigin(origin)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	return r, err
}

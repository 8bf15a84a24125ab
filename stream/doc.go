// Package stream carries deliveries between Ferry nodes. The change log is
// the outbox (the shape of a Kafka or JetStream consumer): for each receiver
// and lane the sender keeps a durable ack floor, the highest version the
// receiver has applied in order, and in memory what is in flight. It streams
// the log after the floor, filtered to what is addressed to the receiver,
// many envelopes per frame (a Batch), on one long-lived stream per (peer,
// protocol); the receiver verifies and applies a batch in one store
// transaction and answers "applied through N" on the same stream (a Reply).
// A receiver that was away is simply one whose floor is behind: the same
// stream sends its backlog at full speed under flow control, resent with
// capped exponential backoff and jitter, forever, until acknowledged.
//
// When a stream opens, the receiver first reports how far it holds each of
// the sender's lanes, so the sender resumes exactly there: a receiver
// restored from an older copy gets again what it lost, and a sender whose
// receivers hold more of its versions than it does learns that it was
// restored (SenderOptions.OnAhead).
//
// Nothing is written per (change, receiver): not when a change is committed,
// not when it is acknowledged. This package does not decide what a change
// means; services do, through the Handler interface.
package stream

import "github.com/ferrynet/ferry/protocols/pb"

// Lane is an ordering domain between one sender and one receiver: the
// receiver applies a lane's entries strictly in the sender's version order,
// and acknowledges it cumulatively. Lanes are independent, so a held planner
// stream never blocks resources.
type Lane uint32

// Lanes.
const (
	LaneResource Lane = 1 // create, update, delete of owned resources: broadcast to partners
	LaneConsider Lane = 2 // considers events: addressed to the listed partners
	LanePlanner  Lane = 3 // planner updates: addressed to one partner
	LaneRequest  Lane = 4 // review requests: addressed to the reviewer
	LaneDecision Lane = 5 // review decisions that apply (accepted, edited): broadcast to members
	// LaneRejection carries rejections, addressed to the applicant. They
	// have a lane of their own so that the decision lane holds only what
	// every member applies, in sequence order: a member that applied
	// decisions from gossip holds the decision lane through them.
	LaneRejection Lane = 6
)

const numLanes = 6

// Lanes lists every lane.
var Lanes = []Lane{LaneResource, LaneConsider, LanePlanner, LaneRequest, LaneDecision, LaneRejection}

func (l Lane) String() string {
	switch l {
	case LaneResource:
		return "resource"
	case LaneConsider:
		return "considers"
	case LanePlanner:
		return "planner"
	case LaneRequest:
		return "request"
	case LaneDecision:
		return "decision"
	case LaneRejection:
		return "rejection"
	}
	return "unknown"
}

// LaneOf returns the lane an envelope travels in: its kind's, and for a
// decision addressed to one peer (a rejection), the rejection lane.
func LaneOf(body *pb.Body) Lane {
	if body.Kind == pb.Kind_KIND_REVIEW_DECISION && len(body.To) > 0 {
		return LaneRejection
	}
	return LaneFor(body.Kind)
}

// LaneFor returns the lane of an envelope kind (a decision's: the decision
// lane; see LaneOf).
func LaneFor(kind pb.Kind) Lane {
	switch kind {
	case pb.Kind_KIND_CONSIDERS:
		return LaneConsider
	case pb.Kind_KIND_PLANNER:
		return LanePlanner
	case pb.Kind_KIND_REVIEW_REQUEST:
		return LaneRequest
	case pb.Kind_KIND_REVIEW_DECISION:
		return LaneDecision
	}
	return LaneResource
}

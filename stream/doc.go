// Package stream carries deliveries between Ferry nodes: one long-lived
// outbound stream per (peer, protocol), many messages in flight on it, each
// answered by an ack on the same stream; a retry loop that resends what was
// not acknowledged, forever, with capped exponential backoff and jitter; and
// the receiving side that verifies, orders and hands each message to a
// service inside a store transaction.
//
// The ledger is the store: a delivery is a row until its ack marks it
// sended. This package keeps only what is in flight in memory, so a restart
// loses nothing. It does not decide what a message means; services do,
// through the Handler interface.
package stream

import "github.com/ferrynet/ferry/protocols/pb"

// Lane is an ordering domain between one sender and one receiver: link
// sequence numbers are contiguous per lane, and the receiver applies a
// lane's messages strictly in that order. Lanes are independent, so a held
// planner stream never blocks resources.
type Lane uint32

// Lanes.
const (
	LaneResource Lane = 1 // create, update, delete of owned resources
	LaneConsider Lane = 2 // considers events
	LanePlanner  Lane = 3 // planner updates
	LaneRequest  Lane = 4 // review requests, applicant to reviewer
	LaneDecision Lane = 5 // review decisions, reviewer to members
)

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
	}
	return "unknown"
}

// LaneFor returns the lane of an envelope kind.
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

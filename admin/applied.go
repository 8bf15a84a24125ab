package admin

// applied.go answers who has applied a decision, for the console's
// "applied by N/M": the decision's acknowledgement rows on the reviewer,
// found by the decision's own change version (a short scan from that
// version, not a pass over the whole ledger).

import (
	"errors"
	"fmt"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/store"
)

// Applied says who has a decision: on the reviewer, this node (for an
// accept or an edit, applied when made) and each receiver whose
// acknowledgement row is sended; a rejection goes to the applicant only.
type Applied struct {
	RequestID uint64   `json:"request_id"`
	Status    string   `json:"status"`
	Done      int      `json:"done"`
	Total     int      `json:"total"`
	Waiting   []string `json:"waiting"` // receivers that have not acknowledged it yet
	Refused   []string `json:"refused"` // receivers that refused it for good
	// Left are the receivers that left (members no more) before they
	// acknowledged it: their rows are closed, and they are not counted in
	// Total.
	Left []string `json:"left"`
}

// DecisionApplied reports who has applied request id's decision. Only the
// reviewer knows (it sent the decision): elsewhere, and for a request still
// waiting, it answers conflict.
func (srv *Server) DecisionApplied(id uint64) (Applied, error) {
	if !srv.review.IsReviewer() {
		return Applied{}, fmt.Errorf("%w: only the reviewer knows who applied a decision", ferry.ErrConflict)
	}
	r, err := srv.st.Request(id)
	if errors.Is(err, store.ErrNotFound) {
		return Applied{}, fmt.Errorf("%w: no request %d", ferry.ErrNotFound, id)
	}
	if err != nil {
		return Applied{}, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	if r.Status == "waiting" || r.ChangeVersion == 0 {
		return Applied{}, fmt.Errorf("%w: request %d is %s", ferry.ErrConflict, id, r.Status)
	}
	page, err := srv.Acks(AckQuery{Version: r.ChangeVersion, Limit: MaxAckPage})
	if err != nil {
		return Applied{}, err
	}
	a := Applied{RequestID: id, Status: r.Status, Waiting: []string{}, Refused: []string{}, Left: []string{}}
	if r.Status != "rejected" {
		a.Done, a.Total = 1, 1 // applied here when it was made
	}
	for _, row := range page.Rows {
		if row.Ack == AckClosed {
			a.Left = append(a.Left, row.Receiver)
			continue
		}
		a.Total++
		switch row.Ack {
		case AckSended:
			a.Done++
		case AckRejected:
			a.Refused = append(a.Refused, row.Receiver)
		default:
			a.Waiting = append(a.Waiting, row.Receiver)
		}
	}
	return a, nil
}

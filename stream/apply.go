package stream

import (
	"errors"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// Outcome is what became of one inbound change.
type Outcome int

// Outcomes, in the order of a Counts array.
const (
	Applied Outcome = iota
	Duplicate
	Refused
)

// Counts tallies outcomes: Counts[Applied], Counts[Duplicate], Counts[Refused].
type Counts [3]int

// ApplyOne applies one inbound change under a savepoint of tx, the one way
// every inbound path does it (delivery streams, catch-up, gossip): apply's
// refusal (a *RejectError) undoes what apply wrote unless it asks to keep
// it, and comes back as Refused with the refusal; a duplicate status is
// Duplicate; any other error fails the transaction and is returned.
func ApplyOne(tx *store.Txn, in *Inbound, apply func(*store.Txn, *Inbound) (pb.AckStatus, error)) (Outcome, *RejectError, error) {
	sp := tx.Savepoint()
	st, err := apply(tx, in)
	var rej *RejectError
	switch {
	case errors.As(err, &rej):
		if !rej.Keep {
			tx.RollbackTo(sp)
		}
		return Refused, rej, nil
	case err != nil:
		return 0, nil, err
	case st == pb.AckStatus_ACK_STATUS_DUPLICATE:
		return Duplicate, nil, nil
	}
	return Applied, nil, nil
}

package stream

import (
	"fmt"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// Kinds hands each inbound change to the service of its kind (resources
// to propagate, review requests and decisions to review): the receiver's
// Handler when one node runs several services.
type Kinds map[pb.Kind]Handler

func (k Kinds) handler(kind pb.Kind) (Handler, error) {
	if h := k[kind]; h != nil {
		return h, nil
	}
	return nil, fmt.Errorf("no service for kind %s", kind)
}

// Admit asks the change's service.
func (k Kinds) Admit(in *Inbound) error {
	h, err := k.handler(in.Body.Kind)
	if err != nil {
		return err
	}
	return h.Admit(in)
}

// Prepare hands the change to its service's Prepare, if it has one.
func (k Kinds) Prepare(in *Inbound) {
	if h, err := k.handler(in.Body.Kind); err == nil {
		if p, ok := h.(Preparer); ok {
			p.Prepare(in)
		}
	}
}

// Apply applies the change by its service; a kind no service takes is
// refused for good.
func (k Kinds) Apply(tx *store.Txn, in *Inbound) (pb.AckStatus, error) {
	h, err := k.handler(in.Body.Kind)
	if err != nil {
		return 0, Reject("%v", err)
	}
	return h.Apply(tx, in)
}

// Tracer hears what an inbound path did with a change, for operators
// (`ferry watch`, traces) and nothing else. The receiver (ReceiverOptions)
// and gossip of decisions (spread) are given one at construction and call
// it inside the applying transaction, for each change applied (not a
// duplicate, not a refused one); work that must wait for the commit goes
// to tx.OnCommit.
type Tracer interface {
	Applied(tx *store.Txn, in *Inbound)
}

package propagate

import (
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// auxQuiet + a 20-digit version marks a received resource change that was
// kept without an event: it arrived late (through catch-up, after a later
// change of the same resource), so the row did not move and apps were not
// told. The events stream (package eventstream) skips it as the NATS
// publish did.
const auxQuiet = "quiet/"

func quietKey(ver uint64) string { return fmt.Sprintf("%s%020d", auxQuiet, ver) }

// markQuiet records, in the change's transaction, that the change at ver
// gets no event. The flag is set at once (before the commit): the events
// stream reads only durable changes, so it never misses a mark; a
// transaction that fails only leaves the flag set.
func (s *Service) markQuiet(tx *store.Txn, ver uint64) {
	s.quiet.Store(true)
	tx.SetAux(quietKey(ver), []byte{1})
}

func (s *Service) loadQuiet() error {
	m, err := s.st.AuxPrefix(auxQuiet)
	if err != nil {
		return fmt.Errorf("read quiet marks: %w", err)
	}
	s.quiet.Store(len(m) > 0)
	return nil
}

// NoOwnEvents: an origin publishes no event of its own changes (the events
// stream passes them over without reading them).
func (s *Service) NoOwnEvents() bool { return true }

// Event is the event apps were told of when the change at local version ver
// was applied here (the subject suffix and the body Apply published), for
// the events stream: a partner's resource change, considers or planner
// event. Own changes and late resource changes have none (ok false). The
// change passed prepare's checks when it was applied (a refused one is not
// in the log), so its payload is not scanned again.
func (s *Service) Event(ver uint64, body *pb.Body) (suffix string, data []byte, ok bool, err error) {
	o := peer.ID(body.Origin)
	if o == s.roles.Self() {
		return "", nil, false, nil
	}
	subject, field, ok := eventOf(body.Kind, body.DataType)
	if !ok {
		return "", nil, false, nil
	}
	if field == "resource" && s.quiet.Load() {
		switch _, err := s.st.Aux(quietKey(ver)); {
		case err == nil:
			return "", nil, false, nil
		case !errors.Is(err, store.ErrNotFound):
			return "", nil, false, err
		}
	}
	p := prepared{origin: s.idString(o), field: field}
	return subject, p.event(body.OriginVersion, ver, body.Payload), true, nil
}

package propagate

import (
	"cmp"
	"encoding/json"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/peer"
)

// The receivers a reply names: who the change is addressed to when it is
// committed (the partners, or the peers a considers or planner event names),
// each as {"id", "name"}, for an app that goes on to ask <prefix>.delivery.*
// about them.

// receiverList is one rendering of a list of receivers, kept for the next
// reply: the partners rarely change, and a reply on the busiest subject
// should not encode them each time.
type receiverList struct {
	ids   []peer.ID
	names []string
	raw   json.RawMessage
}

// receiverCache holds the last rendering.
type receiverCache struct{ last atomic.Pointer[receiverList] }

// receivers renders ps (this node left out) as a JSON list of {"id",
// "name"}, in the order of their names (as delivery.status lists them).
func (s *Service) receivers(ps []peer.ID) json.RawMessage {
	self := s.roles.Self()
	type named struct {
		id   peer.ID
		name string
	}
	byName := make([]named, 0, len(ps))
	for _, p := range ps {
		if p != self {
			byName = append(byName, named{p, s.roles.Name(p)})
		}
	}
	slices.SortFunc(byName, func(a, b named) int {
		return cmp.Or(strings.Compare(a.name, b.name), strings.Compare(string(a.id), string(b.id)))
	})
	ids := make([]peer.ID, len(byName))
	names := make([]string, len(byName))
	for i, x := range byName {
		ids[i], names[i] = x.id, x.name
	}
	if c := s.recv.last.Load(); c != nil && slices.Equal(c.ids, ids) && slices.Equal(c.names, names) {
		return c.raw
	}
	type receiver struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	out := make([]receiver, len(ids))
	for i, p := range ids {
		out[i] = receiver{ID: s.idString(p), Name: names[i]}
	}
	raw, err := json.Marshal(out)
	if err != nil { // strings only: not expected
		raw = json.RawMessage("[]")
	}
	s.recv.last.Store(&receiverList{ids: ids, names: names, raw: raw})
	return raw
}

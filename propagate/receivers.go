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
	// in and inNames: the list as it was given (this node left out) and
	// each one's name then, for a reply that asks again (no sort, no
	// allocation when they are the same).
	in      []peer.ID
	inNames []string
}

// same reports whether ps (self left out) names the receivers of c, with
// the names they had.
func (c *receiverList) same(s *Service, self peer.ID, ps []peer.ID) bool {
	i := 0
	for _, p := range ps {
		if p == self {
			continue
		}
		if i == len(c.in) || c.in[i] != p || c.inNames[i] != s.roles.Name(p) {
			return false
		}
		i++
	}
	return i == len(c.in)
}

// receiverCache holds the last rendering.
type receiverCache struct{ last atomic.Pointer[receiverList] }

// receivers renders ps (this node left out) as a JSON list of {"id",
// "name"}, in the order of their names (as delivery.status lists them).
func (s *Service) receivers(ps []peer.ID) json.RawMessage {
	self := s.roles.Self()
	if c := s.recv.last.Load(); c != nil && c.same(s, self, ps) {
		return c.raw
	}
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
	in := make([]peer.ID, 0, len(ids))
	inNames := make([]string, 0, len(ids))
	for _, p := range ps {
		if p != self {
			in, inNames = append(in, p), append(inNames, s.roles.Name(p))
		}
	}
	if c := s.recv.last.Load(); c != nil && slices.Equal(c.ids, ids) && slices.Equal(c.names, names) {
		s.recv.last.Store(&receiverList{ids: c.ids, names: c.names, raw: c.raw, in: in, inNames: inNames})
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
	s.recv.last.Store(&receiverList{ids: ids, names: names, raw: raw, in: in, inNames: inNames})
	return raw
}

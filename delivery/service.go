// Package delivery tells apps how far their changes got: the app subjects
// <prefix>.delivery.status and <prefix>.delivery.wait (SPEC.md), and the
// events <prefix>.delivery.acked.<peer> and <prefix>.delivery.refused.<peer>.
//
// It holds no delivery state of its own and writes nothing: what a change
// of this node's ferry.propagate is owed comes from its delivery record in
// the store (who it is addressed to), the stream sender's ack floor of each
// receiver's lane (acknowledged through a version), its attempts and last
// error, and the refusals the sender recorded. The Watch (watch.go) is the
// sender's stream.FloorTracer: it keeps the open waits indexed per receiver
// and lane by version (index.go), wakes exactly those a floor passes, times
// the others out with one timer, and publishes the events. A wait costs
// memory in the index, no goroutine and no polling.
//
// It must not move floors or send anything: the stream layer does.
package delivery

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// Receiver states.
const (
	StatePending = "pending"
	StateAcked   = "acked"
	StateRefused = "refused"
)

// Lanes reads what the stream sender knows of a receiver's lane.
type Lanes interface {
	Lane(p peer.ID, l stream.Lane) stream.LaneState
}

// Roles is what the service needs to know of the network (the peer book).
type Roles interface {
	Self() peer.ID
	Name(peer.ID) string
	// Receivers lists the receivers of lane l's broadcast entries
	// (stream.Audience): the partners, for resources.
	Receivers(l stream.Lane) []peer.ID
}

// Deps are what New needs.
type Deps struct {
	Store  *store.Store
	Sender Lanes
	Roles  Roles
	Watch  *Watch
	Logger *slog.Logger
}

// Service answers the delivery subjects.
type Service struct {
	st    *store.Store
	lanes Lanes
	roles Roles
	watch *Watch
	log   *slog.Logger
}

// New builds the service.
func New(d Deps) *Service {
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	return &Service{st: d.Store, lanes: d.Sender, roles: d.Roles, watch: d.Watch, log: d.Logger}
}

// Receiver is one receiver of a change, as status and wait answer it.
type Receiver struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	State string `json:"state"` // pending, acked, refused
	// Attempts counts, while pending, the sends of the receiver's lane
	// from its floor since the floor last moved (the change goes with
	// everything after the floor); once acked or refused, 1.
	Attempts uint32 `json:"attempts"`
	// LastError is, while pending, why the last send failed; once
	// refused, the receiver's reason.
	LastError string `json:"last_error,omitempty"`
	// Code is a refusal's code (refused only): equivocation or refused.
	Code string `json:"code,omitempty"`
}

// Status answers <prefix>.delivery.status: who a change of this node's
// ferry.propagate is addressed to, and how far it got with each.
func (s *Service) Status(req StatusRequest) (map[string]any, error) {
	e, err := s.entry(req.Version)
	if err != nil {
		return nil, err
	}
	rs, err := s.render(e, s.receivers(e))
	if err != nil {
		return nil, err
	}
	return map[string]any{"version": e.Version, "receivers": rs}, nil
}

// Wait answers <prefix>.delivery.wait through done: once every receiver
// listed (default: every one the change is addressed to) acknowledged or
// refused it, complete; at the timeout, not complete; with unavailable if
// the node stops first. It returns at once; done runs later, on the
// Watch's goroutine.
func (s *Service) Wait(req WaitRequest, done func(map[string]any, error)) {
	e, err := s.entry(req.Version)
	if err != nil {
		done(nil, err)
		return
	}
	all := s.receivers(e)
	ps := all
	if req.Receivers != nil {
		for _, p := range req.Receivers {
			if !slices.Contains(all, p) {
				done(nil, fmt.Errorf("%w: receivers: %s is not a receiver of version %d (it is addressed to %s)",
					ferry.ErrBadRequest, p, e.Version, s.names(all)))
				return
			}
		}
		ps = req.Receivers
		s.sortByName(ps)
	}
	lane := stream.Lane(e.Lane)
	keys := make([]laneKey, len(ps))
	for i, p := range ps {
		keys[i] = laneKey{p, lane}
	}
	w := &waiter{version: e.Version, deadline: time.Now().Add(req.Timeout), at: -1}
	w.done = func(complete bool, err error) {
		if err != nil {
			done(nil, err)
			return
		}
		rs, err := s.render(e, ps)
		if err != nil {
			done(nil, err)
			return
		}
		done(map[string]any{"version": e.Version, "complete": complete, "receivers": rs}, nil)
	}
	s.watch.add(w, keys, func(k laneKey) uint64 { return s.lanes.Lane(k.p, k.l).Floor })
}

// entry reads the delivery record of a change this node's ferry.propagate
// answered.
func (s *Service) entry(v uint64) (store.OwnEntry, error) {
	e, err := s.st.OwnEntry(v)
	if errors.Is(err, store.ErrNotFound) {
		if b, err := s.st.ChangeBody(v); err == nil && peer.ID(b.Origin) == s.roles.Self() && propagated(stream.LaneOf(b)) {
			return e, fmt.Errorf("%w: version %d: its delivery record was dropped (limits.ack_retention_hours) after every receiver had acknowledged it",
				ferry.ErrNotFound, v)
		}
		return e, fmt.Errorf("%w: version %d is not a change this node's ferry.propagate answered", ferry.ErrNotFound, v)
	}
	if err != nil {
		return e, fmt.Errorf("read the delivery record of version %d: %w", v, err)
	}
	if l := stream.Lane(e.Lane); !propagated(l) {
		return e, fmt.Errorf("%w: version %d is a %s of the review flow, not a change of ferry.propagate", ferry.ErrNotFound, v, l)
	}
	return e, nil
}

// receivers lists who a change is addressed to: the peers its record names,
// or the lane's receivers (the partners, for a resource change) as they
// are now; in the order of their names, this node left out.
func (s *Service) receivers(e store.OwnEntry) []peer.ID {
	to := e.To
	if len(to) == 0 {
		to = s.roles.Receivers(stream.Lane(e.Lane))
	}
	self := s.roles.Self()
	out := make([]peer.ID, 0, len(to))
	for _, p := range to {
		if p != self && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	s.sortByName(out)
	return out
}

func (s *Service) sortByName(ps []peer.ID) {
	slices.SortFunc(ps, func(a, b peer.ID) int {
		if c := strings.Compare(s.roles.Name(a), s.roles.Name(b)); c != 0 {
			return c
		}
		return strings.Compare(string(a), string(b))
	})
}

// names renders peers for a message.
func (s *Service) names(ps []peer.ID) string {
	if len(ps) == 0 {
		return "no one"
	}
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = fmt.Sprintf("%s (%s)", p, s.roles.Name(p))
	}
	return strings.Join(parts, ", ")
}

// render reads each receiver's state of change e now.
func (s *Service) render(e store.OwnEntry, ps []peer.ID) ([]Receiver, error) {
	lane := stream.Lane(e.Lane)
	out := make([]Receiver, 0, len(ps))
	for _, p := range ps {
		r := Receiver{ID: p.String(), Name: s.roles.Name(p), State: StatePending}
		ls := s.lanes.Lane(p, lane)
		if ls.Floor >= e.Version {
			rf, refused, err := s.refusal(p, e.Version)
			if err != nil {
				return nil, err
			}
			r.State, r.Attempts = StateAcked, 1
			if refused {
				r.State, r.Code, r.LastError = StateRefused, rf.code, rf.message
			}
		} else {
			if ls.Inflight > 0 || ls.Attempts > 0 {
				r.Attempts = ls.Attempts
			}
			r.LastError = ls.LastError
		}
		out = append(out, r)
	}
	return out, nil
}

// refusal tells whether p refused version v, and why: heard lately (the
// sender writes refusals lazily) or recorded.
func (s *Service) refusal(p peer.ID, v uint64) (refusal, bool, error) {
	if r, ok := s.watch.recentRefusal(p, v); ok {
		return r, true, nil
	}
	reason, ok, err := s.st.Refusal(p, v)
	if err != nil {
		return refusal{}, false, fmt.Errorf("read the refusals of %s: %w", p, err)
	}
	if !ok {
		return refusal{}, false, nil
	}
	return refusal{code: refusalCode(reason, false), message: reason}, true, nil
}

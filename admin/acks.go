package admin

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/peers"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// The acknowledgement table of source 000 is not stored: each row is one
// (own change, receiver) pair, and its state is derived from the change log,
// the receiver's ack floor of the change's lane and the refusals. A change
// goes to the receivers its entry names, or, broadcast, to the lane's
// receivers (partners for resources, members for decisions). A member that
// left (its record expired, or it was removed: peers/leave.go) keeps the
// rows of the decisions made while it was one: those it had not
// acknowledged are closed, with the reason, instead of pending for ever;
// it has no row of a decision made after it left.

// Limits of one page of acknowledgement rows.
const (
	DefaultAckPage = 100
	MaxAckPage     = 1000
	// DefaultAckLimit and MaxAckLimit name the same limits for callers
	// that speak of a limit.
	DefaultAckLimit = DefaultAckPage
	MaxAckLimit     = MaxAckPage
)

// AckStates and AckKinds are what acknowledgement rows may be filtered by.
var (
	AckStates = []string{AckPending, AckSended, AckRejected, AckClosed}
	AckKinds  = []string{"resource", "considers", "planner", "request", "decision"}
)

// AckQuery selects acknowledgement rows.
type AckQuery struct {
	RequestID uint64 // 0: any
	Receiver  string // peer id or name; "": any
	State     string // "pending", "sended", "rejected", "closed"; "": any
	Kind      string // "resource", "considers", "planner", "request", "decision"; "": any
	Version   uint64 // one change (this node's version); 0: any
	Before    string // page cursor (AckPage.Next); "": start from the newest
	Limit     int    // default DefaultAckPage, at most MaxAckPage
}

// AckPage is one page of rows, newest first.
type AckPage struct {
	Rows []AckRow `json:"rows"`
	Next string   `json:"next,omitempty"` // cursor of the next (older) page; empty: no more
}

// AckRow is a row of the acknowledgement table (source 000), for every
// delivery: owned resources, considers, planner, review requests and
// decisions.
type AckRow struct {
	ID            string    `json:"id"`         // "<version>.<n>": the change and the receiver's place among its receivers
	RequestID     uint64    `json:"request_id"` // review messages; 0 otherwise
	Receiver      string    `json:"receiver"`   // name
	ReceiverID    string    `json:"receiver_id"`
	Ack           string    `json:"ack"`  // pending, sended, rejected, closed
	Kind          string    `json:"kind"` // resource, considers, planner, request, decision
	Protocol      string    `json:"protocol"`
	Version       uint64    `json:"version"`
	Attempts      uint32    `json:"attempts"`
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	CreatedAt     time.Time `json:"created_at"`
	Error         string    `json:"error,omitempty"` // rejected: why; pending: the last send error
	// Reason says why a row is closed: the receiver left ("member left:
	// its record expired at ...", "member removed by the operator at
	// ...", "member removed: not in `members` of the config since ...").
	Reason string `json:"reason,omitempty"`
}

// Ack states.
const (
	AckPending  = "pending"
	AckSended   = "sended"
	AckRejected = "rejected"
	// AckClosed: the receiver was a member and left before it
	// acknowledged the change; nothing more is sent to it (Reason says
	// why). A member that comes back is a receiver again, as a new member
	// is, and its rows are pending until it caught up.
	AckClosed = "closed"
)

func parseCursor(s string) (ver uint64, n int, err error) {
	if s == "" {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(s, ".")
	ver, err1 := strconv.ParseUint(a, 10, 64)
	n, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || ver == 0 || n < 1 {
		return 0, 0, badReq("cursor %q is not <version>.<n>", s)
	}
	return ver, n, nil
}

// Acks lists acknowledgement rows, newest change first, and within a change
// in the order of the receivers' names (as source 000 lays them out).
func (srv *Server) Acks(q AckQuery) (AckPage, error) {
	page := AckPage{Rows: []AckRow{}}
	if q.Limit == 0 {
		q.Limit = DefaultAckPage
	}
	if q.Limit < 0 || q.Limit > MaxAckPage {
		return page, badReq("limit must be 1-%d", MaxAckPage)
	}
	switch q.State {
	case "", AckPending, AckSended, AckRejected, AckClosed:
	default:
		return page, badReq("state %q is not pending, sended, rejected or closed", q.State)
	}
	if q.Kind != "" && !slices.Contains(AckKinds, q.Kind) {
		return page, badReq("kind %q is not resource, considers, planner, request or decision", q.Kind)
	}
	beforeVer, beforeN, err := parseCursor(q.Before)
	if err != nil {
		return page, err
	}
	var want peer.ID
	if q.Receiver != "" {
		if want, err = srv.resolvePeer(q.Receiver); err != nil {
			return page, err
		}
	}
	d := newAckDeriver(srv)
	scanFrom := beforeVer + 1 // OwnEntries lists versions below this
	if beforeVer == 0 {
		scanFrom = 0
	}
	if q.Version > 0 {
		if beforeVer != 0 && q.Version > beforeVer {
			return page, nil
		}
		scanFrom = q.Version + 1
	}
	var scanErr error
	wantID := ""
	if want != "" {
		wantID = want.String()
	}
	err = srv.st.OwnEntries(scanFrom, func(e store.OwnEntry) bool {
		if q.Version > 0 && e.Version != q.Version {
			return false
		}
		if (q.RequestID != 0 && e.RequestID != q.RequestID) || (q.Kind != "" && q.Kind != ackKind(stream.Lane(e.Lane))) {
			return true
		}
		rows, err := d.rows(e)
		if err != nil {
			scanErr = err
			return false
		}
		for i, r := range rows {
			if e.Version == beforeVer && i+1 <= beforeN {
				continue
			}
			if (wantID != "" && r.ReceiverID != wantID) || (q.State != "" && r.Ack != q.State) {
				continue
			}
			if len(page.Rows) == q.Limit {
				page.Next = page.Rows[len(page.Rows)-1].ID
				return false
			}
			page.Rows = append(page.Rows, r)
		}
		return true
	})
	if err == nil {
		err = scanErr
	}
	if err != nil {
		return AckPage{Rows: []AckRow{}}, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	return page, nil
}

// resolvePeer reads a peer id or a peer's name.
func (srv *Server) resolvePeer(s string) (peer.ID, error) {
	if p, err := peer.Decode(s); err == nil {
		return p, nil
	}
	for _, e := range srv.book.Entries() {
		if strings.EqualFold(e.Name, s) {
			return peer.ID(e.Id), nil
		}
	}
	for _, p := range append(srv.book.Partners(), srv.book.Members()...) {
		if strings.EqualFold(srv.book.Name(p), s) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: no peer named %q", ferry.ErrNotFound, s)
}

// ackDeriver renders rows, caching what one listing reads more than once.
type ackDeriver struct {
	srv       *Server
	receivers map[stream.Lane][]peer.ID
	refusals  map[peer.ID]map[uint64]string
	lanes     map[laneOf]stream.LaneState
	ids       map[peer.ID]string // peer ids as text (base58 costs; a listing names each receiver on every row)
	// departed are the members that left (read once per listing), by
	// peer and in the order of their names.
	departed  map[peer.ID]peers.Departure
	leftOrder []peers.Departure
}

type laneOf struct {
	p peer.ID
	l stream.Lane
}

func newAckDeriver(srv *Server) *ackDeriver {
	d := &ackDeriver{srv: srv, receivers: map[stream.Lane][]peer.ID{}, refusals: map[peer.ID]map[uint64]string{},
		lanes: map[laneOf]stream.LaneState{}, ids: map[peer.ID]string{}, departed: map[peer.ID]peers.Departure{}}
	d.leftOrder = srv.book.Departed()
	for _, x := range d.leftOrder {
		d.departed[x.Peer] = x
	}
	return d
}

// withDeparted adds to a decision's broadcast receivers the members that
// left after it was made (created, unix nanoseconds).
func (d *ackDeriver) withDeparted(to []peer.ID, created int64) []peer.ID {
	var add []peer.ID
	for _, x := range d.leftOrder {
		if x.At.UnixNano() >= created {
			add = append(add, x.Peer)
		}
	}
	if len(add) == 0 {
		return to
	}
	out := append(slices.Clone(to), add...)
	d.sortByName(out)
	return out
}

// idText is p.String(), once per listing.
func (d *ackDeriver) idText(p peer.ID) string {
	s, ok := d.ids[p]
	if !ok {
		s = p.String()
		d.ids[p] = s
	}
	return s
}

// broadcast lists a lane's receivers in the order of their names.
func (d *ackDeriver) broadcast(l stream.Lane) []peer.ID {
	if ps, ok := d.receivers[l]; ok {
		return ps
	}
	ps := slices.Clone(d.srv.book.Receivers(l))
	d.sortByName(ps)
	d.receivers[l] = ps
	return ps
}

func (d *ackDeriver) sortByName(ps []peer.ID) {
	slices.SortFunc(ps, func(a, b peer.ID) int {
		if c := strings.Compare(d.srv.book.Name(a), d.srv.book.Name(b)); c != 0 {
			return c
		}
		return strings.Compare(string(a), string(b))
	})
}

func (d *ackDeriver) lane(p peer.ID, l stream.Lane) stream.LaneState {
	k := laneOf{p, l}
	if s, ok := d.lanes[k]; ok {
		return s
	}
	s := d.srv.sender.Lane(p, l)
	d.lanes[k] = s
	return s
}

func (d *ackDeriver) refused(p peer.ID, ver uint64) (string, bool, error) {
	m, ok := d.refusals[p]
	if !ok {
		var err error
		if m, err = d.srv.st.Refusals(p); err != nil {
			return "", false, err
		}
		d.refusals[p] = m
	}
	r, ok := m[ver]
	return r, ok, nil
}

// rows renders the acknowledgement rows of one own change.
func (d *ackDeriver) rows(e store.OwnEntry) ([]AckRow, error) {
	l := stream.Lane(e.Lane)
	to := e.To
	if len(to) == 0 {
		to = d.broadcast(l)
		if l == stream.LaneDecision && d.srv.review.IsReviewer() {
			to = d.withDeparted(to, e.CreatedAt)
		}
	} else if len(to) > 1 {
		to = slices.Clone(to)
		d.sortByName(to)
	}
	out := make([]AckRow, 0, len(to))
	for i, p := range to {
		if p == d.srv.id {
			continue
		}
		r := AckRow{ID: strconv.FormatUint(e.Version, 10) + "." + strconv.Itoa(i+1), RequestID: e.RequestID,
			Receiver: d.srv.book.Name(p), ReceiverID: d.idText(p), Kind: ackKind(l), Protocol: string(e.Protocol),
			Version: e.Version, CreatedAt: time.Unix(0, e.CreatedAt).UTC()}
		ls := d.lane(p, l)
		reason, rejected, err := d.refused(p, e.Version)
		if err != nil {
			return nil, err
		}
		left, gone := d.departed[p]
		switch {
		case rejected:
			r.Ack, r.Error, r.Attempts = AckRejected, reason, 1
		case ls.Floor >= e.Version:
			r.Ack, r.Attempts = AckSended, 1
		case gone && (l == stream.LaneDecision || l == stream.LaneRejection):
			r.Ack, r.Reason, r.Attempts = AckClosed, left.Reason, ls.Attempts
		default:
			r.Ack = AckPending
			if ls.Inflight > 0 || ls.Attempts > 0 {
				r.Attempts = ls.Attempts
			}
			r.NextAttemptAt = ls.NextAttemptAt
			r.Error = ls.LastError
		}
		out = append(out, r)
	}
	return out, nil
}

// DeliveryState is the delivery state of one receiver's lane.
type DeliveryState struct {
	Receiver      string    `json:"receiver"`
	ReceiverID    string    `json:"receiver_id"`
	Lane          string    `json:"lane"`    // resource, considers, planner, request, decision
	Pending       int       `json:"pending"` // changes not yet acknowledged (counted up to MaxPendingCount)
	OldestPending time.Time `json:"oldest_pending,omitzero"`
	Floor         uint64    `json:"floor"` // acknowledged through this version
	Attempts      uint32    `json:"attempts"`
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	LastError     string    `json:"last_error,omitempty"`
	Held          bool      `json:"held"` // a closed planner stream
}

// MaxPendingCount bounds how far Deliveries counts one lane's backlog.
const MaxPendingCount = 1_000_000

// Deliveries reports every receiver lane that has had something to receive.
func (srv *Server) Deliveries() []DeliveryState {
	type key struct {
		p peer.ID
		l stream.Lane
	}
	var keys []key
	seen := map[key]bool{}
	add := func(p peer.ID, l stream.Lane) {
		k := key{p, l}
		if p != srv.id && !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	// Every receiver a lane has, whether or not it owes anything (metrics
	// start at zero): partners, the reviewer, and on the reviewer members.
	for _, l := range []stream.Lane{stream.LaneResource, stream.LaneDecision} {
		for _, p := range srv.book.Receivers(l) {
			add(p, l)
		}
	}
	if r := srv.book.Reviewer(); r != "" && r != srv.id {
		add(r, stream.LaneRequest)
	}
	addressed, _ := srv.st.AddressedReceivers()
	for _, p := range append(addressed, srv.sender.Receivers()...) {
		for _, l := range stream.Lanes {
			add(p, l)
		}
	}
	out := make([]DeliveryState, 0, len(keys))
	for _, k := range keys {
		if k.l == stream.LaneDecision || k.l == stream.LaneRejection {
			if _, left := srv.book.Left(k.p); left {
				continue // its rows are closed: it is owed nothing
			}
		}
		ls := srv.sender.Lane(k.p, k.l)
		broadcast := srv.book.Receives(k.p, k.l)
		if !broadcast && !(k.l == stream.LaneRequest && k.p == srv.book.Reviewer()) {
			if h, _ := srv.st.LaneHead(k.p, uint8(k.l), false); h == 0 {
				continue
			}
		}
		ds := DeliveryState{Receiver: srv.book.Name(k.p), ReceiverID: k.p.String(), Lane: k.l.String(), Floor: ls.Floor,
			Attempts: ls.Attempts, NextAttemptAt: ls.NextAttemptAt, LastError: ls.LastError, Held: ls.Held}
		count, first, err := srv.st.BacklogCount(k.p, uint8(k.l), broadcast, ls.Floor, MaxPendingCount)
		if err == nil && count > 0 {
			ds.Pending = count
			if e, err := srv.st.OwnEntry(first); err == nil {
				ds.OldestPending = time.Unix(0, e.CreatedAt).UTC()
			}
		}
		out = append(out, ds)
	}
	slices.SortFunc(out, func(a, b DeliveryState) int {
		if c := strings.Compare(a.Receiver, b.Receiver); c != 0 {
			return c
		}
		return strings.Compare(a.Lane, b.Lane)
	})
	return out
}

// pendingTotal counts what every receiver still owes an acknowledgement for.
func (srv *Server) pendingTotal() int {
	total := 0
	for _, d := range srv.Deliveries() {
		total += d.Pending
	}
	return total
}

// ackKind is the kind an acknowledgement row shows: its lane's, with
// rejections (a lane of their own) shown as the decisions they are.
func ackKind(l stream.Lane) string {
	if l == stream.LaneRejection {
		return stream.LaneDecision.String()
	}
	return l.String()
}

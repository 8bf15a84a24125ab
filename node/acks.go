package node

// acks.go derives the acknowledgement rows (source 000) and the delivery
// state per receiver and lane from the current store: one storepb.Delivery
// row per (change, receiver) and the pending index. It is the only file
// that reads those rows for operators; when delivery becomes a log with
// per-receiver ack floors (issue 8), this file is replaced and the callers
// (admin API, console, CLI, metrics, trace) stay as they are.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// Acknowledgement-row listing limits.
const (
	DefaultAckLimit = 100
	MaxAckLimit     = 1000
	// deliveriesTTL is how long one Deliveries() answer is reused: metrics
	// scrapes, the console and `ferry status` ask often, and counting a
	// large backlog reads every pending row.
	deliveriesTTL = 2 * time.Second
	// scanChunk is how many delivery ids one backward step reads.
	scanChunk = 256
)

// Ack states and kinds, as the API spells them.
var (
	AckStates = []string{"pending", "sended", "rejected"}
	AckKinds  = []string{"resource", "considers", "planner", "request", "decision"}
)

// AckQuery selects acknowledgement rows.
type AckQuery struct {
	RequestID uint64 // 0: any
	Receiver  string // peer id or name; "": any
	State     string // "pending", "sended", "rejected"; "": any
	Kind      string // "resource", "considers", "planner", "request", "decision"; "": any
	Version   uint64 // one change (this node's version); 0: any
	Before    string // page cursor (AckPage.Next); "": start from the newest
	Limit     int    // default 100, at most 1000
}

// AckPage is one page of acknowledgement rows, newest change first and, within
// one change, receivers in their order.
type AckPage struct {
	Rows []AckRow `json:"rows"`
	Next string   `json:"next,omitempty"` // cursor of the next (older) page; empty: no more
}

// AckRow is a row of the acknowledgement table (source 000), for every
// delivery: review requests and decisions, and owned resources.
type AckRow struct {
	ID            string    `json:"id"`         // "<version>.<n>": the change and the receiver's place among its receivers
	RequestID     uint64    `json:"request_id"` // review messages; 0 otherwise
	Receiver      string    `json:"receiver"`   // name
	ReceiverID    string    `json:"receiver_id"`
	Ack           string    `json:"ack"`  // pending, sended, rejected
	Kind          string    `json:"kind"` // resource, considers, planner, request, decision
	Protocol      string    `json:"protocol"`
	Version       uint64    `json:"version"`
	Attempts      uint32    `json:"attempts"`
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	CreatedAt     time.Time `json:"created_at"`
	Error         string    `json:"error,omitempty"` // rejected: why; pending: the last send error
}

// DeliveryState is what one receiver is owed on one lane.
type DeliveryState struct {
	Receiver      string    `json:"receiver"`
	ReceiverID    string    `json:"receiver_id"`
	Lane          string    `json:"lane"`    // resource, considers, planner, request, decision
	Pending       int       `json:"pending"` // changes not yet acknowledged
	OldestPending time.Time `json:"oldest_pending,omitzero"`
	Floor         uint64    `json:"floor"` // acknowledged through this version
	Attempts      uint32    `json:"attempts"`
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	LastError     string    `json:"last_error,omitempty"`
	Held          bool      `json:"held"` // a closed planner stream
}

func validOneOf(what, v string, set []string) error {
	if v == "" || slices.Contains(set, v) {
		return nil
	}
	return badReq("%s %q is not one of %s", what, v, strings.Join(set, ", "))
}

// Acks lists acknowledgement rows, newest change first.
func (n *Node) Acks(q AckQuery) (AckPage, error) {
	if err := validOneOf("state", q.State, AckStates); err != nil {
		return AckPage{}, err
	}
	if err := validOneOf("kind", q.Kind, AckKinds); err != nil {
		return AckPage{}, err
	}
	switch {
	case q.Limit < 0:
		return AckPage{}, badReq("limit %d is negative", q.Limit)
	case q.Limit == 0:
		q.Limit = DefaultAckLimit
	case q.Limit > MaxAckLimit:
		q.Limit = MaxAckLimit
	}
	var before uint64
	if q.Before != "" {
		var err error
		if before, err = strconv.ParseUint(q.Before, 10, 64); err != nil || before == 0 {
			return AckPage{}, badReq("before %q is not a cursor from a previous page", q.Before)
		}
	}
	var recv peer.ID
	if q.Receiver != "" {
		if id, err := peer.Decode(q.Receiver); err == nil {
			recv = id
		}
	}
	match := func(d *storepb.Delivery) bool {
		switch {
		case q.RequestID != 0 && d.RequestId != q.RequestID,
			q.Version != 0 && d.ChangeVersion != q.Version,
			q.State != "" && ackState(d) != q.State,
			q.Kind != "" && stream.Lane(d.Lane).String() != q.Kind:
			return false
		case q.Receiver != "":
			if recv != "" {
				return peer.ID(d.Receiver) == recv
			}
			return strings.EqualFold(d.ReceiverName, q.Receiver)
		}
		return true
	}
	errs := n.sendErrors()
	page := AckPage{Rows: []AckRow{}}
	full, first := false, true
	var last uint64 // delivery id of the page's last row: the next page's cursor
	err := n.ackRuns(before, func(run []*storepb.Delivery) bool {
		if q.Version != 0 && run[0].ChangeVersion < q.Version {
			return false // runs come newest change first: the change is behind
		}
		skip := first && before != 0
		first = false
		for i, d := range run {
			if skip && d.Id <= before {
				continue // shown on an earlier page
			}
			if !match(d) {
				continue
			}
			if full {
				// One more row exists: the page ends at the previous one.
				page.Next = strconv.FormatUint(last, 10)
				return false
			}
			page.Rows = append(page.Rows, ackRow(d, i+1, errs))
			last = d.Id
			if len(page.Rows) == q.Limit {
				full = true
			}
		}
		return true
	})
	if err != nil {
		return AckPage{}, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	return page, nil
}

func ackState(d *storepb.Delivery) string {
	switch d.State {
	case storepb.Delivery_STATE_PENDING:
		return "pending"
	case storepb.Delivery_STATE_SENDED:
		return "sended"
	}
	return "rejected"
}

func ackRow(d *storepb.Delivery, place int, errs map[peer.ID]string) AckRow {
	p := peer.ID(d.Receiver)
	a := AckRow{ID: fmt.Sprintf("%d.%d", d.ChangeVersion, place), RequestID: d.RequestId, Receiver: d.ReceiverName,
		ReceiverID: p.String(), Ack: ackState(d), Kind: stream.Lane(d.Lane).String(), Protocol: d.Protocol,
		Version: d.ChangeVersion, Attempts: d.Attempts, Error: d.Error}
	if d.CreatedAt > 0 {
		a.CreatedAt = time.Unix(0, d.CreatedAt).UTC()
	}
	if a.Ack == "pending" {
		if d.NextAttemptAt > 0 && d.Attempts > 0 {
			a.NextAttemptAt = time.Unix(0, d.NextAttemptAt).UTC()
		}
		if a.Error == "" && d.Attempts > 0 {
			a.Error = errs[p]
		}
	}
	return a
}

// ackRuns calls fn with the deliveries of one change at a time (a run: the
// rows one commit added for that change, in id order), newest change
// first, starting with the change that holds delivery id `from` (0: the
// newest), until fn returns false.
func (n *Node) ackRuns(from uint64, fn func([]*storepb.Delivery) bool) error {
	top := uint64(0)
	if from != 0 {
		// Start at the end of the cursor's run.
		d, err := n.st.Delivery(from)
		if errors.Is(err, store.ErrNotFound) {
			return badReq("the page cursor %d is gone (pruned); start again from the newest", from)
		}
		if err != nil {
			return err
		}
		top = from
		for {
			next, err := n.st.Delivery(top + 1)
			if err != nil || next.ChangeVersion != d.ChangeVersion {
				break
			}
			top++
		}
	} else {
		_ = n.st.DeliveriesNewestFirst(func(d *storepb.Delivery) bool { top = d.Id; return false })
	}
	var run []*storepb.Delivery
	stop := false
	for hi := top; hi > 0 && !stop; {
		lo := uint64(1)
		if hi > scanChunk {
			lo = hi - scanChunk + 1
		}
		var chunk []*storepb.Delivery
		err := n.st.Deliveries(lo, func(d *storepb.Delivery) bool {
			if d.Id > hi {
				return false
			}
			chunk = append(chunk, d)
			return true
		})
		if err != nil {
			return err
		}
		if len(chunk) == 0 && lo > 1 {
			// A pruned stretch: jump to the next row below it.
			hi = n.highestBelow(lo)
			continue
		}
		for i := len(chunk) - 1; i >= 0 && !stop; i-- {
			d := chunk[i]
			if len(run) > 0 && d.ChangeVersion != run[0].ChangeVersion {
				slices.Reverse(run)
				stop = !fn(run)
				run = nil
			}
			run = append(run, d)
		}
		hi = lo - 1
	}
	if !stop && len(run) > 0 {
		slices.Reverse(run)
		fn(run)
	}
	return nil
}

// highestBelow finds the highest delivery id below id (0: none), across a
// stretch that retention pruned.
func (n *Node) highestBelow(id uint64) uint64 {
	lo, hi := uint64(1), id-1 // the answer is in [lo, hi] if anything is
	found := uint64(0)
	for lo <= hi {
		mid := lo + (hi-lo)/2
		var first uint64
		_ = n.st.Deliveries(mid, func(d *storepb.Delivery) bool { first = d.Id; return false })
		if first != 0 && first < id {
			found = first
			lo = first + 1
		} else {
			if mid == 0 {
				break
			}
			hi = mid - 1
		}
	}
	return found
}

// Deliveries reports, per receiver and lane, what this node still owes.
// Every partner (resource lane), the reviewer (request lane, on a member)
// and every member (decision lane, on the reviewer) is listed even when
// nothing is pending, so metrics show zeros rather than nothing.
func (n *Node) Deliveries() []DeliveryState {
	n.dsMu.Lock()
	defer n.dsMu.Unlock()
	if time.Since(n.dsAt) < deliveriesTTL && n.dsCache != nil {
		return slices.Clone(n.dsCache)
	}
	out, err := n.deliveries()
	if err != nil {
		n.log.Warn("read delivery state", "err", err)
		return nil
	}
	n.dsCache, n.dsAt = out, time.Now()
	return slices.Clone(out)
}

type laneOf struct {
	p    peer.ID
	lane stream.Lane
}

func (n *Node) deliveries() ([]DeliveryState, error) {
	ver, _ := n.st.Counter(store.CtrVersion)
	errs := n.sendErrors()
	want := map[laneOf]bool{}
	for _, p := range n.book.Partners() {
		want[laneOf{p, stream.LaneResource}] = true
	}
	if r := n.book.Reviewer(); r != "" {
		if r != n.id {
			want[laneOf{r, stream.LaneRequest}] = true
		} else {
			for _, m := range n.book.Members() {
				want[laneOf{m, stream.LaneDecision}] = true
			}
		}
	}
	recvs, err := n.st.PendingReceivers()
	if err != nil {
		return nil, err
	}
	states := map[laneOf]*DeliveryState{}
	for _, p := range recvs {
		for l := stream.LaneResource; l <= stream.LaneDecision; l++ {
			var after uint64
			for {
				ds, err := n.st.PendingFrom(p, uint32(l), after, 4096)
				if err != nil {
					return nil, err
				}
				if len(ds) == 0 {
					break
				}
				k := laneOf{p, l}
				s := states[k]
				if s == nil {
					d := ds[0]
					s = &DeliveryState{OldestPending: time.Unix(0, d.CreatedAt).UTC(), Floor: d.ChangeVersion - 1,
						Attempts: d.Attempts}
					if d.Attempts > 0 && d.NextAttemptAt > 0 {
						s.NextAttemptAt = time.Unix(0, d.NextAttemptAt).UTC()
					}
					states[k] = s
				}
				s.Pending += len(ds)
				after = ds[len(ds)-1].LinkSeq
			}
		}
	}
	for k := range want {
		if states[k] == nil {
			states[k] = &DeliveryState{Floor: ver}
		}
	}
	out := make([]DeliveryState, 0, len(states))
	for k, s := range states {
		s.Receiver, s.ReceiverID, s.Lane = n.book.Name(k.p), k.p.String(), k.lane.String()
		if s.Pending > 0 {
			s.LastError = errs[k.p]
			s.Held = n.prop.Hold(k.p, k.lane)
		}
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b DeliveryState) int {
		if c := strings.Compare(a.Receiver, b.Receiver); c != 0 {
			return c
		}
		if c := strings.Compare(a.ReceiverID, b.ReceiverID); c != 0 {
			return c
		}
		return strings.Compare(a.Lane, b.Lane)
	})
	return out, nil
}

// pendingTotal counts every pending delivery.
func (n *Node) pendingTotal() int {
	c, _ := n.st.PendingCount()
	return c
}

// ---- the last send error per receiver ----

// sendErrorTap keeps the last delivery error the sender logged for each
// peer, so rows and delivery state can show it (the current ledger keeps
// only attempts and the next attempt). A success (an ack) clears it.
type sendErrorTap struct {
	slog.Handler
	errs *sendErrors
}

type sendErrors struct {
	mu sync.Mutex
	m  map[peer.ID]string
}

func (t sendErrorTap) Enabled(ctx context.Context, l slog.Level) bool {
	return true // see every failure, whatever the level it is logged at
}

func (t sendErrorTap) Handle(ctx context.Context, r slog.Record) error {
	var p peer.ID
	var msg string
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "peer":
			if id, ok := a.Value.Any().(peer.ID); ok {
				p = id
			}
		case "err":
			msg = a.Value.String()
		}
		return true
	})
	if p != "" && msg != "" {
		t.errs.mu.Lock()
		t.errs.m[p] = msg
		t.errs.mu.Unlock()
	}
	if t.Handler.Enabled(ctx, r.Level) {
		return t.Handler.Handle(ctx, r)
	}
	return nil
}

func (t sendErrorTap) WithAttrs(as []slog.Attr) slog.Handler {
	return sendErrorTap{t.Handler.WithAttrs(as), t.errs}
}

func (t sendErrorTap) WithGroup(name string) slog.Handler {
	return sendErrorTap{t.Handler.WithGroup(name), t.errs}
}

func (e *sendErrors) clear(p peer.ID) {
	e.mu.Lock()
	delete(e.m, p)
	e.mu.Unlock()
}

func (n *Node) sendErrors() map[peer.ID]string {
	n.sendErrs.mu.Lock()
	defer n.sendErrs.mu.Unlock()
	out := make(map[peer.ID]string, len(n.sendErrs.m))
	for k, v := range n.sendErrs.m {
		out[k] = v
	}
	return out
}

package admin

// events.go is the node's live activity feed for operators (`ferry watch`,
// the console): what the node commits and sends, what its receivers
// acknowledge, what it receives and applies, what it decides and what it
// publishes to its apps. It is in memory only and best effort: a slow
// watcher misses events (and is told how many) rather than slowing the node.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/natsbridge"
	"github.com/ferrynet/ferry/propagate"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/review"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// Event types.
const (
	EventCommitted = "committed" // a change of this node is on disk and queued for its receivers
	EventAcked     = "acked"     // a receiver acknowledged a change of this node
	EventRejected  = "rejected"  // a receiver refused a change of this node for good
	EventApplied   = "applied"   // a change from a peer is applied here (and published to apps)
	EventSubmitted = "submitted" // a review request of this node's apps is on disk
	EventDecided   = "decided"   // the operator here decided a request
	EventPublished = "published" // an event went out on this node's NATS
)

// Event is one line of `ferry watch`.
type Event struct {
	Seq           uint64    `json:"seq"`
	Time          time.Time `json:"time"`
	Type          string    `json:"type"`
	Kind          string    `json:"kind,omitempty"`
	Peer          string    `json:"peer,omitempty"` // receiver or sender name
	PeerID        string    `json:"peer_id,omitempty"`
	Version       uint64    `json:"version,omitempty"` // this node's version
	Origin        string    `json:"origin,omitempty"`  // origin peer id of a received change
	OriginVersion uint64    `json:"origin_version,omitempty"`
	RequestID     uint64    `json:"request_id,omitempty"`
	Subject       string    `json:"subject,omitempty"`
	To            []string  `json:"to,omitempty"` // receivers of a committed change
	Detail        string    `json:"detail,omitempty"`
	// fill completes the event when someone reads it (what it costs to
	// say, e.g. a resource's id read from its payload, is not paid for
	// the events nobody watches).
	fill func(*Event)
}

// complete runs the event's fill once.
func (e *Event) complete() {
	if e.fill != nil {
		f := e.fill
		e.fill = nil
		f(e)
	}
}

// completed is e filled in. A copy: the event emit holds stays on its stack
// (filling through a pointer would move every event to the heap, watched
// or not).
//
//go:noinline
func completed(e Event) Event {
	e.complete()
	return e
}

const (
	eventBacklog = 256 // recent events a new watcher gets first
	watcherQueue = 1024
)

// eventHub keeps the last eventBacklog events, always (a watcher that
// connects gets them first), and fans events out to watchers. Recording is
// a write into a ring under a mutex; what costs more (the receivers of a
// committed change) is filled in when someone reads the event.
type eventHub struct {
	mu       sync.Mutex
	seq      uint64
	ring     [eventBacklog]Event
	next     int // where the next event goes
	full     bool
	watchers map[*watcher]struct{}
}

type watcher struct {
	ch      chan Event
	dropped int
}

func newEventHub() *eventHub { return &eventHub{watchers: map[*watcher]struct{}{}} }

// active reports whether anyone watches (callers skip costly detail when not).
func (h *eventHub) active() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.watchers) > 0
}

func (h *eventHub) emit(e Event) {
	if e.fill != nil && h.active() {
		e = completed(e) // outside the hub's lock: filling may read the store
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	e.Seq = h.seq
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	if len(h.watchers) > 0 && e.fill != nil {
		e = completed(e) // a watcher came between the check above and now
	}
	h.ring[h.next] = e
	h.next++
	if h.next == eventBacklog {
		h.next, h.full = 0, true
	}
	for w := range h.watchers {
		select {
		case w.ch <- e:
		default:
			w.dropped++
		}
	}
}

// recent is the kept events, oldest first; callers hold h.mu.
func (h *eventHub) recent() []Event {
	for i := range h.ring {
		h.ring[i].complete()
	}
	if !h.full {
		return slices.Clone(h.ring[:h.next])
	}
	return append(slices.Clone(h.ring[h.next:]), h.ring[:h.next]...)
}

// watch registers a watcher and returns the recent events to show first.
func (h *eventHub) watch() (*watcher, []Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := &watcher{ch: make(chan Event, watcherQueue)}
	h.watchers[w] = struct{}{}
	return w, h.recent()
}

func (h *eventHub) unwatch(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.watchers, w)
}

// takeDropped returns and resets how many events w missed.
func (h *eventHub) takeDropped(w *watcher) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := w.dropped
	w.dropped = 0
	return d
}

// Feed is what the services tell operators (`ferry watch`, the console,
// the decisions metric): the tracer each gets at construction
// (stream.Tracer for the inbound paths, propagate.Tracer, review.Tracer,
// natsbridge.Tracer) and the sender's OnAcked. It records events in the
// hub; what costs more to say (a resource's id, the receivers of a
// change) is filled in when someone reads them.
type Feed struct {
	hub       *eventHub
	st        *store.Store
	names     interface{ Name(peer.ID) string }
	decisions *prometheus.CounterVec
	onAcked   func(p peer.ID, lane stream.Lane, through uint64, refused []*pb.Refusal)
	ids       sync.Map // peer.ID -> its text
	// acks wakes the Server's rate sampler from its rest (rates.go).
	acks *ackSignal
}

// FeedDeps is what a Feed needs; it is built before the services, which
// take it as their tracer.
type FeedDeps struct {
	Store *store.Store
	// Names names peers in events (the peer book).
	Names interface{ Name(peer.ID) string }
	// Decisions is ferry_review_decisions_total, counted by outcome.
	Decisions *prometheus.CounterVec
	// OnAcked, if set, is called first on every acknowledgement
	// (SenderOptions.OnAcked of the node's options: tests).
	OnAcked func(p peer.ID, lane stream.Lane, through uint64, refused []*pb.Refusal)
}

// NewFeed builds the feed and its event hub (the last events are kept
// from then on, watched or not).
func NewFeed(d FeedDeps) *Feed {
	return &Feed{hub: newEventHub(), st: d.Store, names: d.Names, decisions: d.Decisions, onAcked: d.OnAcked, acks: newAckSignal()}
}

var (
	_ stream.Tracer     = (*Feed)(nil)
	_ propagate.Tracer  = (*Feed)(nil)
	_ review.Tracer     = (*Feed)(nil)
	_ natsbridge.Tracer = (*Feed)(nil)
)

// Acked is the sender's hook: a receiver acknowledged (or refused) a delivery.
func (f *Feed) Acked(p peer.ID, lane stream.Lane, through uint64, refused []*pb.Refusal) {
	if f.onAcked != nil {
		f.onAcked(p, lane, through, refused)
	}
	f.acks.acked()
	name := f.names.Name(p)
	f.hub.emit(Event{Type: EventAcked, Kind: lane.String(), Peer: name, PeerID: p.String(), Version: through})
	for _, r := range refused {
		f.hub.emit(Event{Type: EventRejected, Kind: lane.String(), Peer: name, PeerID: p.String(), Version: r.Version, Detail: r.Reason})
	}
}

// Committed reports a change of this node (its receivers are filled in
// when the event is read: receiversOf).
func (f *Feed) Committed(action string, version uint64, detail string) {
	f.hub.emit(Event{Type: EventCommitted, Kind: action, Version: version, Detail: detail})
}

// Published reports an event that went out on this node's NATS.
func (f *Feed) Published(subject string) {
	f.hub.emit(Event{Type: EventPublished, Subject: subject})
}

// Submitted reports a review request of this node's apps on disk.
func (f *Feed) Submitted(row review.Row) {
	f.hub.emit(Event{Type: EventSubmitted, Kind: "request", RequestID: row.ID,
		Detail: row.Type + " " + row.TableName + " row " + strconv.FormatUint(row.TableID, 10) + " to " + row.Reviewer})
}

// Decided counts a decision by outcome and reports it (the receivers of
// the change it made are filled in when the event is read).
func (f *Feed) Decided(row review.Row, err error) {
	outcome := "refused"
	switch {
	case err != nil:
	case row.Status == "waiting": // an approval kept; more are needed
		outcome = "approved"
	default:
		outcome = row.Status
	}
	f.decisions.WithLabelValues(outcome).Inc()
	if err != nil {
		return
	}
	e := Event{Type: EventDecided, Kind: "decision", RequestID: row.ID,
		Detail: fmt.Sprintf("%s %s %s row %d (sequence %d)", row.Status, row.Type, row.TableName, row.TableID, row.Sequence)}
	if outcome == "approved" {
		e.Detail = fmt.Sprintf("approved %s %s row %d (%d of %d approvals)", row.Type, row.TableName, row.TableID, len(row.Approvals), row.ApprovalsRequired)
	}
	if r, _ := f.st.Request(row.ID); r != nil {
		e.Version = r.ChangeVersion
	}
	f.hub.emit(e)
}

// Applied is called inside the transaction that applies a change from a
// peer; the event follows its commit.
func (f *Feed) Applied(tx *store.Txn, in *stream.Inbound) {
	from, body := in.From, in.Body
	tx.OnCommit(func() {
		// The names are filled in when someone reads the event, as the
		// detail is: a receiver applies thousands a second, unwatched.
		e := Event{Time: time.Now().UTC(), Type: EventApplied, Kind: stream.LaneFor(body.Kind).String(), OriginVersion: body.OriginVersion, Detail: body.DataType,
			fill: func(e *Event) {
				e.Peer, e.PeerID, e.Origin = f.names.Name(from), f.idText(from), f.idText(peer.ID(body.Origin))
				f.appliedDetail(e, body)
			}}
		f.hub.emit(e)
	})
}

// appliedDetail says what an applied change was, for a person: the
// resource's id, or the decision's outcome and this node's request id.
func (f *Feed) appliedDetail(e *Event, body *pb.Body) {
	switch body.Kind {
	case pb.Kind_KIND_RESOURCE_CREATE, pb.Kind_KIND_RESOURCE_UPDATE, pb.Kind_KIND_RESOURCE_DELETE:
		if id, ok := propagate.ResourceID(body.Payload); ok {
			e.Detail = propagate.KindName(body.Kind) + " " + body.DataType + " " + id
		}
	case pb.Kind_KIND_REVIEW_DECISION:
		d := &pb.ReviewDecision{}
		if proto.Unmarshal(body.Payload, d) != nil || d.Request == nil {
			return
		}
		e.Detail = fmt.Sprintf("%s %s %s row %d (sequence %d)", d.Status, d.Request.Type, d.Request.TableName, d.Request.TableId, d.Sequence)
		if r, err := f.st.RequestByOrigin(d.Origin); err == nil {
			e.RequestID = r.Id
		}
	}
}

// idText is a peer id's text, cached (base58 is not free, and every applied
// change names its origin and sender).
func (f *Feed) idText(p peer.ID) string {
	if v, ok := f.ids.Load(p); ok {
		return v.(string)
	}
	s := p.String()
	f.ids.Store(p, s)
	return s
}

// receiversOf fills in who a committed change, or the change a decision
// made, goes to (its acknowledgement rows), when the event is read.
func (srv *Server) receiversOf(e *Event) {
	if (e.Type != EventCommitted && e.Type != EventDecided) || e.To != nil || e.Version == 0 {
		return
	}
	e.To = []string{}
	if page, err := srv.Acks(AckQuery{Version: e.Version, Limit: MaxAckPage}); err == nil {
		for _, r := range page.Rows {
			e.To = append(e.To, r.Receiver)
		}
	}
}

// serveEvents streams events as server-sent events (text/event-stream): the
// recent ones first, then each as it happens, with a comment line every
// 15 s so proxies and clients see the stream is alive.
func (srv *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		fail(w, fmt.Errorf("%w: streaming is not supported here", ferry.ErrUnavailable))
		return
	}
	wt, recent := srv.hub.watch()
	defer srv.hub.unwatch(wt)
	for i := range recent {
		srv.receiversOf(&recent[i])
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	send := func(e Event) bool {
		b, _ := json.Marshal(e)
		_, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Type, b)
		return err == nil
	}
	if r.URL.Query().Get("recent") != "0" {
		for _, e := range recent {
			if !send(e) {
				return
			}
		}
	}
	fl.Flush()
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-srv.quit:
			return
		case e := <-wt.ch:
			srv.receiversOf(&e)
			if !send(e) {
				return
			}
			if d := srv.hub.takeDropped(wt); d > 0 {
				if _, err := fmt.Fprintf(w, "event: dropped\ndata: {\"dropped\":%d}\n\n", d); err != nil {
					return
				}
			}
			fl.Flush()
		case <-keep.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		}
	}
}

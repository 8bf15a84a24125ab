package delivery

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/stream"
)

// Tuning.
const (
	// AckEvery is the least time between two acked events of one receiver
	// and lane: a floor that moves a thousand times a second is told ten
	// times, each with the newest floor.
	AckEvery = 100 * time.Millisecond
	// recentRefusals bounds the refusals the Watch keeps in memory until
	// the sender's lazy write of them is readable (store.Store.Refusal).
	recentRefusals = 4096
)

// Refusal codes of <prefix>.delivery.refused events and of refused
// receivers in status and wait answers.
const (
	// CodeEquivocation: the receiver holds another change of this node
	// under the same version (this node's store was restored from an
	// older copy while its clock went back).
	CodeEquivocation = "equivocation"
	// CodeRefused: the receiver's checks refused the change for good; the
	// message says why.
	CodeRefused = "refused"
)

// refusalCode tells the code of a refusal from its reason (and the wire's
// equivocation flag, when known).
func refusalCode(reason string, equivocation bool) string {
	if equivocation || strings.HasPrefix(reason, stream.EquivocationPrefix) {
		return CodeEquivocation
	}
	return CodeRefused
}

// Publisher publishes events on the local NATS under the node's prefix.
type Publisher interface {
	Publish(suffix string, v any)
}

// Names gives a peer's name for events.
type Names interface {
	Name(peer.ID) string
}

// WatchDeps are what NewWatch needs.
type WatchDeps struct {
	Publisher  Publisher
	Names      Names
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Watch follows the sender's ack floors (it is the sender's
// stream.FloorTracer): it wakes the waits a floor passes, times out the
// others with one timer, and publishes the acked (coalesced) and refused
// events. One goroutine (loop) answers the waits and publishes; the
// tracer's calls only update the index under the mutex and wake it.
//
// Built before the stream sender, which it hears from; the Service, built
// after the sender, opens waits on it.
type Watch struct {
	pub   Publisher
	names Names
	log   *slog.Logger
	ctx   context.Context
	stop  context.CancelFunc
	g     lifecycle.Group
	wake  chan struct{}

	mu      sync.Mutex
	closed  bool
	ix      index
	ready   []*waiter // complete, not answered yet
	acks    map[laneKey]*ackState
	dirty   map[laneKey]*ackState // acks with a floor to publish
	ackDue  time.Time             // the earliest time one of dirty may be published
	refused []refusedEvent        // to publish
	recent  map[refusalKey]refusal
	order   []refusalKey // recent, oldest first (a ring)
	oldest  int

	m watchMetrics
}

type watchMetrics struct {
	waiters prometheus.Gauge
	waits   *prometheus.CounterVec
	events  *prometheus.CounterVec
}

// ackState is the acked event of one receiver's lane.
type ackState struct {
	receiver string // the peer id's text
	lane     stream.Lane
	floor    uint64    // newest floor heard
	sent     uint64    // floor of the last event
	last     time.Time // when the last event went out
}

type refusalKey struct {
	p peer.ID
	v uint64
}

type refusal struct {
	code, message string
}

type refusedEvent struct {
	p       peer.ID
	version uint64
	refusal
}

// NewWatch builds a Watch; Start runs its goroutine.
func NewWatch(d WatchDeps) (*Watch, error) {
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	ctx, stop := context.WithCancel(context.Background())
	w := &Watch{pub: d.Publisher, names: d.Names, log: d.Logger, ctx: ctx, stop: stop, wake: make(chan struct{}, 1),
		acks: map[laneKey]*ackState{}, dirty: map[laneKey]*ackState{}, recent: map[refusalKey]refusal{},
		order: make([]refusalKey, 0, recentRefusals)}
	w.m = watchMetrics{
		waiters: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "ferry", Subsystem: "delivery", Name: "waiters",
			Help: "Apps' delivery.wait requests waiting for their receivers."}),
		waits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "delivery", Name: "waits_total",
			Help: "delivery.wait requests answered, by outcome (complete, timeout, closed)."}, []string{"outcome"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "delivery", Name: "events_total",
			Help: "delivery.acked and delivery.refused events published, by kind."}, []string{"kind"}),
	}
	for _, o := range []string{"complete", "timeout", "closed"} {
		w.m.waits.WithLabelValues(o)
	}
	for _, k := range []string{"acked", "refused"} {
		w.m.events.WithLabelValues(k)
	}
	if d.Registerer != nil {
		for _, c := range []prometheus.Collector{w.m.waiters, w.m.waits, w.m.events} {
			if err := d.Registerer.Register(c); err != nil {
				stop()
				return nil, fmt.Errorf("register delivery status metrics: %w", err)
			}
		}
	}
	return w, nil
}

// Start runs the goroutine that answers waits and publishes events.
func (w *Watch) Start() { w.g.Go(w.loop) }

// errClosed answers the waits open when the node stops.
var errClosed = fmt.Errorf("%w: the node is shutting down; ask again once it is back", ferry.ErrUnavailable)

// Close answers every open wait with unavailable, and stops the
// goroutine. Later tracer calls are ignored and later waits answered
// unavailable at once. It is idempotent.
func (w *Watch) Close() {
	w.g.Shut()
	w.stop()
	w.g.Close()
	w.mu.Lock()
	w.closed = true
	all := append(w.ready, w.ix.removeAll()...)
	w.ready = nil
	w.mu.Unlock()
	w.m.waiters.Sub(float64(len(all)))
	for _, wt := range all {
		w.m.waits.WithLabelValues("closed").Inc()
		wt.done(false, errClosed)
	}
}

// Waiting is the number of open waits.
func (w *Watch) Waiting() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ix.size() + len(w.ready)
}

func (w *Watch) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// add opens a wait for every key of keys (distinct receivers of one lane);
// wt.done runs once: on the Watch's goroutine when every receiver's floor
// reached wt.version (complete) or at wt.deadline (not complete), or with
// an error when the Watch closes (at once if it is closed). floor reads a
// receiver's floor now; it is called after the wait is in the index, so a
// floor that moves after the read wakes the wait through FloorMoved, and
// one that moved before is in what it reads.
func (w *Watch) add(wt *waiter, keys []laneKey, floor func(laneKey) uint64) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.m.waits.WithLabelValues("closed").Inc()
		wt.done(false, errClosed)
		return
	}
	next, had := w.ix.next()
	w.m.waiters.Inc()
	if !w.ix.add(wt, keys) {
		w.ready = append(w.ready, wt)
	}
	poke := !had || wt.deadline.Before(next) || len(w.ready) > 0
	w.mu.Unlock()
	for _, k := range keys {
		f := floor(k)
		w.mu.Lock()
		done := w.ix.pass(k, f)
		w.ready = append(w.ready, done...)
		w.mu.Unlock()
		poke = poke || len(done) > 0
	}
	if poke {
		w.poke()
	}
}

// propagated reports whether lane l carries changes of ferry.propagate:
// the lanes apps may ask about, and the only ones events are published for.
func propagated(l stream.Lane) bool {
	return l == stream.LaneResource || l == stream.LaneConsider || l == stream.LanePlanner
}

// Refused records refusals for the status answers until the sender's lazy
// write of them is readable, and queues one refused event each
// (stream.FloorTracer).
func (w *Watch) Refused(p peer.ID, l stream.Lane, refused []*pb.Refusal) {
	if !propagated(l) {
		return
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	for _, r := range refused {
		rf := refusal{code: refusalCode(r.Reason, r.Equivocation), message: r.Reason}
		w.remember(refusalKey{p, r.Version}, rf)
		w.refused = append(w.refused, refusedEvent{p: p, version: r.Version, refusal: rf})
	}
	w.mu.Unlock()
	w.poke()
}

// remember keeps a refusal among the recent ones; callers hold w.mu.
func (w *Watch) remember(k refusalKey, r refusal) {
	if _, ok := w.recent[k]; !ok {
		if len(w.order) == recentRefusals {
			delete(w.recent, w.order[w.oldest])
			w.order[w.oldest] = k
			w.oldest = (w.oldest + 1) % recentRefusals
		} else {
			w.order = append(w.order, k)
		}
	}
	w.recent[k] = r
}

// recentRefusal is a refusal heard lately (the store may not show it yet).
func (w *Watch) recentRefusal(p peer.ID, v uint64) (refusal, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.recent[refusalKey{p, v}]
	return r, ok
}

// FloorMoved wakes the waits the floor passed and queues an acked event
// (stream.FloorTracer). Calls may come out of order (a lane's protocols
// each have a stream): a floor below the newest heard is taken only when
// it says it is a rewind.
func (w *Watch) FloorMoved(p peer.ID, l stream.Lane, floor uint64, rewound bool) {
	if !propagated(l) {
		return
	}
	k := laneKey{p, l}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	var done []*waiter
	if !rewound {
		done = w.ix.pass(k, floor)
		w.ready = append(w.ready, done...)
	}
	st := w.acks[k]
	if st == nil {
		st = &ackState{receiver: p.String(), lane: l}
		w.acks[k] = st
	}
	poke := len(done) > 0
	switch {
	case rewound:
		st.floor = floor // no event: nothing new was acknowledged
	case floor > st.floor:
		st.floor = floor
		if _, ok := w.dirty[k]; !ok && st.floor != st.sent {
			w.dirty[k] = st
			if due := st.last.Add(AckEvery); w.ackDue.IsZero() || due.Before(w.ackDue) {
				w.ackDue = due
				poke = true
			}
		}
	}
	w.mu.Unlock()
	if poke {
		w.poke()
	}
}

// acked is one acked event to publish.
type acked struct {
	p  peer.ID
	st ackState
}

// loop answers complete and expired waits and publishes events, sleeping
// on one timer until the next deadline or event due.
func (w *Watch) loop() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		w.mu.Lock()
		ready := w.ready
		w.ready = nil
		expired := w.ix.expire(now)
		refused := w.refused
		w.refused = nil
		var events []acked
		if !w.ackDue.IsZero() && !now.Before(w.ackDue) {
			w.ackDue = time.Time{}
			for k, st := range w.dirty {
				due := st.last.Add(AckEvery)
				if now.Before(due) {
					if w.ackDue.IsZero() || due.Before(w.ackDue) {
						w.ackDue = due
					}
					continue
				}
				delete(w.dirty, k)
				if st.floor == st.sent {
					continue
				}
				st.sent, st.last = st.floor, now
				events = append(events, acked{p: k.p, st: *st})
			}
		}
		next, ok := w.ix.next()
		if !w.ackDue.IsZero() && (!ok || w.ackDue.Before(next)) {
			next, ok = w.ackDue, true
		}
		w.mu.Unlock()

		w.m.waiters.Sub(float64(len(ready) + len(expired)))
		for _, wt := range ready {
			w.m.waits.WithLabelValues("complete").Inc()
			wt.done(true, nil)
		}
		for _, wt := range expired {
			w.m.waits.WithLabelValues("timeout").Inc()
			wt.done(false, nil)
		}
		w.publish(events, refused)

		if ok {
			t.Reset(time.Until(next))
		} else {
			t.Stop()
		}
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
		case <-w.wake:
		}
	}
}

// publish sends the events (on the loop, with no lock held).
func (w *Watch) publish(events []acked, refused []refusedEvent) {
	if w.pub == nil {
		return
	}
	for _, e := range events {
		w.pub.Publish("delivery.acked."+e.st.receiver, map[string]any{"receiver": e.st.receiver, "name": w.names.Name(e.p),
			"lane": e.st.lane.String(), "through": e.st.sent})
		w.m.events.WithLabelValues("acked").Inc()
	}
	for _, r := range refused {
		id := r.p.String()
		w.pub.Publish("delivery.refused."+id, map[string]any{"receiver": id, "name": w.names.Name(r.p),
			"version": r.version, "code": r.code, "message": r.message})
		w.m.events.WithLabelValues("refused").Inc()
	}
}

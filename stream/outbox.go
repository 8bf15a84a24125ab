package stream

// The outbox: the sending state of one receiver (its lanes, its streams, its
// retry schedule) and its pump, the goroutine that writes what the lanes may
// send. The state of a lane changes only through laneState.step (lane.go):
// the outbox runs a step under its mutex and carries out the actions
// (metrics, logs, callbacks, store writes) after it lets go.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// outbox is the sending state of one receiver. Its pump goroutine is the
// only writer of its streams; one reader per stream takes the replies.
type outbox struct {
	s    *Sender
	peer peer.ID
	wake chan struct{}

	// Guarded by Sender.mu: whether the pump runs, and how many times box
	// found it running (someone with news counts on it: idle looks again
	// before it exits).
	running bool
	pokes   uint64

	// frame is the buffer each batch frame is encoded into (pump's).
	frame []byte

	mu        sync.Mutex
	lanes     [numLanes + 1]laneState
	streams   map[protocol.ID]*outStream
	retry     retry
	idleSince time.Time
	// noRoomSince is when SenderOptions.Room first said no since the
	// receiver last answered (zero: it did not).
	noRoomSince time.Time
	acked       uint64 // entries this receiver acknowledged since start (refused ones included)
}

func newOutbox(s *Sender, p peer.ID) *outbox {
	o := &outbox{s: s, peer: p, wake: make(chan struct{}, 1), streams: map[protocol.ID]*outStream{}}
	for _, l := range Lanes {
		ls := laneState{lane: l}
		if f := s.floors[store.FloorKey{Receiver: p, Lane: uint8(l)}]; f != nil {
			ls.floor, ls.saved, ls.ackedAt, ls.cursor = f.Version, f.Version, f.AckedAt, f.Version
		}
		o.lanes[l] = ls
	}
	return o
}

// stepLocked runs one event on lane l and keeps the outbox's own counts
// (failures, acknowledged entries) in step; callers hold o.mu, and carry
// out the rest of the actions after they let it go (count, among others).
func (o *outbox) stepLocked(l Lane, in laneInput) laneActions {
	var a laneActions
	before := o.lanes[l].floor
	o.lanes[l], a = o.lanes[l].step(in)
	if f := o.lanes[l].floor; f != before {
		a.floorMoved, a.newFloor = true, f
	}
	if a.progress {
		o.retry = o.retry.progress()
		o.noRoomSince = time.Time{}
	}
	o.acked += uint64(a.ackedEntries)
	return a
}

// count moves the delivery metrics by a step's actions.
func (o *outbox) count(a laneActions) {
	if n := a.forgot + a.ackedBatches; n > 0 {
		o.s.m.inflight.Sub(float64(n))
	}
	if a.ackedEntries > 0 {
		o.s.m.acked.Add(float64(a.ackedEntries))
	}
}

// traceFloor tells SenderOptions.Floors of a floor a step moved; callers
// hold no lock.
func (o *outbox) traceFloor(l Lane, a laneActions) {
	if t := o.s.opts.Floors; t != nil && a.floorMoved {
		t.FloorMoved(o.peer, l, a.newFloor, a.rewound)
	}
}

func (o *outbox) wakeUp() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *outbox) noteAddressed(l Lane, v uint64) {
	o.mu.Lock()
	o.stepLocked(l, laneInput{ev: evAddressed, version: v})
	o.mu.Unlock()
}

// laneView is what the outbox asks outside itself about each lane, with
// no lock held: whether the receiver gets the lane's broadcasts (the
// Audience) and whether the lane is held (SenderOptions.Hold).
type laneView struct {
	bcast [numLanes + 1]bool
	held  [numLanes + 1]bool
}

// view asks the Audience, and with hold SenderOptions.Hold, about every
// lane; callers hold no lock.
func (o *outbox) view(hold bool) laneView {
	var v laneView
	for _, l := range Lanes {
		v.bcast[l] = (l == LaneResource || l == LaneDecision) && o.s.aud.Receives(o.peer, l)
		if hold {
			v.held[l] = o.s.opts.Hold(o.peer, l)
		}
	}
	return v
}

// bcastHead is the last broadcast entry of lane l this receiver gets (0:
// it does not receive the lane's broadcasts): an atomic read.
func (o *outbox) bcastHead(v laneView, l Lane) uint64 {
	if v.bcast[l] {
		return o.s.heads[l].Load()
	}
	return 0
}

// busyLocked reports whether a lane keeps the pump from its idle exit;
// callers hold o.mu.
func (o *outbox) busyLocked(v laneView, now time.Time) bool {
	for _, l := range Lanes {
		if o.lanes[l].busy(now, v.held[l], o.bcastHead(v, l)) {
			return true
		}
	}
	return false
}

// loadHeads reads, once per outbox, the last entry addressed to the receiver
// in each lane.
func (o *outbox) loadHeads() error {
	for _, l := range Lanes {
		o.mu.Lock()
		done := o.lanes[l].addrLoaded
		o.mu.Unlock()
		if done {
			continue
		}
		h, err := o.s.st.LaneHead(o.peer, uint8(l), false)
		if err != nil {
			return err
		}
		o.mu.Lock()
		o.stepLocked(l, laneInput{ev: evHeadLoaded, version: h})
		o.mu.Unlock()
	}
	return nil
}

func (o *outbox) run() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	if err := o.loadHeads(); err != nil && o.s.ctx.Err() == nil {
		o.s.log.Warn("read backlog heads", "peer", o.peer, "err", err)
	}
	for {
		if o.s.ctx.Err() != nil {
			o.resetAll()
			return
		}
		o.mu.Lock()
		wait := time.Until(o.retry.at)
		o.mu.Unlock()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-o.wake:
			case <-o.s.ctx.Done():
			}
			t.Stop()
			continue
		}
		if o.pump() {
			continue
		}
		if o.idle() {
			return
		}
		select {
		case <-o.wake:
		case <-tick.C:
			o.checkTimeouts()
		case <-o.s.ctx.Done():
		}
	}
}

// plan is one batch to write.
type plan struct {
	lane    Lane
	after   uint64
	entries []store.Entry
}

// pump writes what the window allows on every lane; it reports whether it
// wrote anything.
func (o *outbox) pump() bool {
	var plans []plan
	now := time.Now()
	v := o.view(true)
	type want struct {
		lane  Lane
		after uint64
		room  int
	}
	var wants []want
	o.mu.Lock()
	for _, l := range Lanes {
		a := o.stepLocked(l, laneInput{ev: evPump, now: now, held: v.held[l], bcastHead: o.bcastHead(v, l), window: o.s.opts.Window})
		if a.send {
			wants = append(wants, want{l, a.sendAfter, a.room})
		}
	}
	o.mu.Unlock()
	for _, w := range wants {
		broadcast := v.bcast[w.lane]
		if w.room == o.s.opts.Window {
			// Nothing in flight: the first batch goes alone, so that the
			// receiver starts on it while the next pump reads the rest
			// (a backlog's first change arrives sooner).
			w.room = 1
		}
		maxEntries, maxBytes := w.room*o.s.opts.BatchEntries, w.room*o.s.opts.BatchBytes
		es, ok := o.s.tail.backlog(o.peer, w.lane, broadcast, w.after, maxEntries, maxBytes)
		if !ok {
			var err error
			es, err = o.s.st.Backlog(o.peer, uint8(w.lane), broadcast, w.after, maxEntries, maxBytes)
			if err != nil {
				o.failed(fmt.Errorf("read backlog: %w", err))
				return false
			}
		}
		if w.lane == LaneDecision && o.s.opts.DecisionFallback > 0 && len(es) > 0 {
			if es = o.fallbackDue(es, now); len(es) == 0 {
				continue // nothing old enough yet: the next tick looks again
			}
		}
		if len(es) == 0 {
			// The head moved past entries that are not on disk for this
			// receiver (another receiver's, or truncated): nothing to send.
			durable := o.s.st.DurableVersion()
			o.mu.Lock()
			a := o.stepLocked(w.lane, laneInput{ev: evEmpty, after: w.after, bcastHead: o.bcastHead(v, w.lane), durable: durable})
			o.mu.Unlock()
			o.traceFloor(w.lane, a)
			continue
		}
		plans = append(plans, o.cut(w.lane, w.after, es, w.room)...)
	}
	if len(plans) == 0 {
		return false
	}
	o.write(plans)
	return true
}

// fallbackDue keeps the decisions that may go on the stream now: those
// older than DecisionFallback (a version is the clock in microseconds when
// the change was made, or a little past it), up to the first that is not.
func (o *outbox) fallbackDue(es []store.Entry, now time.Time) []store.Entry {
	due := uint64(now.Add(-o.s.opts.DecisionFallback).UnixMicro())
	i, _ := slices.BinarySearchFunc(es, due+1, func(e store.Entry, v uint64) int {
		return cmp.Compare(e.Version, v)
	})
	return es[:i]
}

// cut groups entries into batches: consecutive entries of one protocol, at
// most BatchEntries and about BatchBytes each, counted as the compact frame
// holds them (protocols.CompactCost: a body, and a tree's proof once).
func (o *outbox) cut(lane Lane, after uint64, es []store.Entry, room int) []plan {
	var out []plan
	start, size := 0, 0
	var sig []byte
	for i, e := range es {
		cost, esig := protocols.CompactCost(e.Env, e.Shape, sig)
		if i > start && (e.Protocol != es[start].Protocol || i-start >= o.s.opts.BatchEntries || size+cost > o.s.opts.BatchBytes) {
			out = append(out, plan{lane: lane, after: after, entries: es[start:i]})
			after = es[i-1].Version
			start, size = i, 0
			if len(out) == room {
				return out
			}
			cost, esig = protocols.CompactCost(e.Env, e.Shape, nil)
		}
		size += cost
		sig = esig
	}
	return append(out, plan{lane: lane, after: after, entries: es[start:]})
}

// replies applies what a receiver answered: floors move, position reports
// rewind or advance lanes, refusals are recorded.
func (o *outbox) replies(rs []*pb.Reply) {
	epoch := o.s.st.Epoch()
	durable := o.s.st.DurableVersion()
	type stepped struct {
		l Lane
		a laneActions
	}
	var done []stepped
	now := time.Now()
	o.mu.Lock()
	for _, r := range rs {
		l := Lane(r.Lane)
		if l < LaneResource || l > numLanes {
			continue
		}
		a := o.stepLocked(l, laneInput{ev: evReply, now: now, reply: r, epoch: epoch, durable: durable})
		done = append(done, stepped{l, a})
	}
	o.mu.Unlock()
	var refused []*pb.Refusal
	for _, d := range done {
		o.count(d.a)
		if d.a.rewound {
			o.s.log.Info("receiver holds less than it acknowledged (its store was restored or replaced); resending from its position",
				"peer", o.peer, "lane", d.l, "floor", d.a.rewoundFrom, "position", d.a.rewoundTo)
		}
		for _, f := range d.a.refused {
			refused = append(refused, f)
			o.s.m.refused.Inc()
			if f.Equivocation {
				o.s.m.equivocations.Inc()
				o.s.log.Error("receiver holds another change under this node's version: equivocation (was this node's store restored from an older copy while its clock went back?)",
					"peer", o.peer, "lane", d.l, "version", f.Version, "reason", f.Reason)
			} else {
				o.s.log.Warn("receiver refused a change for good", "peer", o.peer, "lane", d.l, "version", f.Version, "reason", f.Reason)
			}
		}
	}
	o.wakeUp()
	if t := o.s.opts.Floors; t != nil {
		for _, d := range done {
			if len(d.a.refused) > 0 {
				t.Refused(o.peer, d.l, d.a.refused)
			}
			o.traceFloor(d.l, d.a)
		}
	}
	for _, d := range done {
		if d.a.ahead > 0 {
			o.s.opts.OnAhead(o.peer, d.l, d.a.ahead)
		}
	}
	if o.s.opts.OnAcked != nil {
		for _, d := range done {
			if d.a.answered {
				o.s.opts.OnAcked(o.peer, d.l, d.a.through, d.a.refused)
			}
		}
	}
	if len(refused) > 0 {
		o.s.st.SubmitLazy(o.s.ctx, func(tx *store.Txn) error {
			for _, r := range refused {
				reason := r.Reason
				if r.Equivocation && !strings.HasPrefix(reason, EquivocationPrefix) {
					reason = EquivocationPrefix + " " + reason // the record keeps only the reason
				}
				tx.SetRefused(o.peer, r.Version, reason)
			}
			return nil
		}, nil)
	}
	o.saveFloors(o.s.ctx)
}

// saveFloors writes the floors that moved, without an fsync of their own: a
// floor lost in a crash only means a resend the receiver answers at once.
func (o *outbox) saveFloors(ctx context.Context) {
	type fl struct {
		lane Lane
		f    *storepb.Floor
	}
	var fs []fl
	o.mu.Lock()
	for _, l := range Lanes {
		if a := o.stepLocked(l, laneInput{ev: evSave}); a.save {
			fs = append(fs, fl{l, &storepb.Floor{Version: a.saveFloor, AckedAt: a.saveAckedAt}})
		}
	}
	o.mu.Unlock()
	if len(fs) == 0 {
		return
	}
	o.s.st.SubmitLazy(ctx, func(tx *store.Txn) error {
		for _, f := range fs {
			tx.SetFloor(o.peer, uint8(f.lane), f.f)
		}
		return nil
	}, nil)
}

// idle ends the pump when nothing was owed or in flight for IdleExit; it
// reports whether the pump should return. It asks Hold and the Audience
// before it takes a lock, holds both locks only while running goes false
// (box starts a new pump only after that), and closes the quiet streams
// after it lets go.
func (o *outbox) idle() bool {
	o.s.mu.Lock()
	pokes := o.pokes
	o.s.mu.Unlock()
	v := o.view(true)
	now := time.Now()
	o.mu.Lock()
	if o.busyLocked(v, now) {
		o.idleSince = time.Time{}
		o.mu.Unlock()
		return false
	}
	if o.idleSince.IsZero() {
		o.idleSince = now
		o.mu.Unlock()
		return false
	}
	if now.Sub(o.idleSince) < o.s.opts.IdleExit {
		o.mu.Unlock()
		return false
	}
	o.mu.Unlock()
	o.s.mu.Lock()
	o.mu.Lock()
	if o.pokes != pokes || o.busyLocked(v, now) {
		// Someone found the pump running since the view was taken (with
		// news the view may not hold: a head that moved, a hold lifted),
		// or a lane moved: not idle yet; the pump looks again.
		o.mu.Unlock()
		o.s.mu.Unlock()
		return false
	}
	o.running = false
	quiet := make([]*outStream, 0, len(o.streams))
	for _, st := range o.streams {
		st.closing = true // a quiet close, not a failure (streamDown)
		quiet = append(quiet, st)
	}
	o.mu.Unlock()
	o.s.mu.Unlock()
	if len(quiet) > 0 {
		o.s.log.Debug("nothing owed: closing the quiet delivery streams", "peer", o.peer, "streams", len(quiet))
	}
	for _, st := range quiet {
		_ = st.s.Close()
	}
	return true
}

// streamDown drops a stream. Every lane with batches in flight on it goes
// back to its floor (go-back-N: later batches of the lane may be held by
// the receiver waiting for this stream's), and is resent from there.
func (o *outbox) streamDown(st *outStream, err error) {
	o.mu.Lock()
	if o.streams[st.proto] == st {
		delete(o.streams, st.proto)
	}
	lost, forgot := 0, 0
	for _, l := range Lanes {
		a := o.stepLocked(l, laneInput{ev: evStreamDown, st: st})
		lost += a.lost
		forgot += a.forgot
	}
	closing := st.closing
	o.mu.Unlock()
	o.count(laneActions{forgot: forgot})
	if err != nil {
		_ = st.s.Reset()
	} else {
		_ = st.s.Close()
	}
	// A stream this node closed with nothing in flight ends however its
	// reader learns of it (EOF, or a reset of the closed stream): that is
	// no failure, and says nothing to operators above DEBUG.
	quiet := closing && lost == 0
	if quiet {
		o.s.log.Debug("closed a quiet delivery stream", "peer", o.peer, "protocol", st.proto, "end", err)
	}
	if (err != nil && !quiet) || (lost > 0 && !closing) {
		if err == nil {
			err = errors.New("stream closed with batches in flight")
		}
		o.s.m.failures.Inc()
		o.failed(err)
	}
	o.wakeUp()
}

// failed schedules the next attempt with capped exponential backoff and jitter.
func (o *outbox) failed(err error) {
	o.mu.Lock()
	var d time.Duration
	o.retry, d = o.retry.fail(err, time.Now(), o.s.opts.BackoffMin, o.s.opts.BackoffMax, rand.N[time.Duration])
	failures := o.retry.failures
	o.mu.Unlock()
	if o.s.ctx.Err() != nil {
		return
	}
	level := slog.LevelDebug
	if (failures == 1 || failures%10 == 0) && !errors.Is(err, ErrNoRoom) {
		level = slog.LevelInfo
	}
	o.s.log.Log(o.s.ctx, level, "delivery to peer failed; will retry", "peer", o.peer, "failures", failures, "retry_in", d.Round(time.Millisecond), "err", err)
}

// ErrNoRoom: a new connection to the receiver does not fit within the
// node's connection bound now (SenderOptions.Room).
var ErrNoRoom = errors.New("no room for a new connection under connections.max")

// room asks SenderOptions.Room before a stream to a receiver this node
// holds no connection with: ErrNoRoom while it says no, for at most
// RoomWait since the receiver last answered; then the dial goes anyway.
// dial reports whether the stream may dial: not when the node was
// connected to the receiver as room looked (a connection closed since, to
// make room for another, must not come back without Room's word).
func (o *outbox) room() (dial bool, err error) {
	if o.s.opts.Room == nil {
		return true, nil
	}
	if o.s.host.Network().Connectedness(o.peer) == network.Connected {
		return false, nil
	}
	ok := o.s.opts.Room(o.peer)
	now := time.Now()
	o.mu.Lock()
	since := o.noRoomSince
	switch {
	case ok:
		o.noRoomSince = time.Time{}
	case since.IsZero():
		o.noRoomSince = now
	case now.Sub(since) >= o.s.opts.RoomWait:
		o.noRoomSince = time.Time{}
	}
	o.mu.Unlock()
	switch {
	case ok:
		return true, nil
	case !since.IsZero() && now.Sub(since) >= o.s.opts.RoomWait:
		o.s.m.roomForced.Inc()
		o.s.log.Warn("no room under connections.max for this long: dialing anyway", "peer", o.peer, "waited", now.Sub(since).Round(time.Second))
		return true, nil
	}
	o.s.m.roomWaits.Inc()
	return false, ErrNoRoom
}

// checkTimeouts resets a stream on which batches wait and nothing was
// answered for AckTimeout (since the later of the last answer and the
// oldest batch's send): a receiver that keeps answering is slow, not stuck.
func (o *outbox) checkTimeouts() {
	o.mu.Lock()
	var stuck *outStream
	now := time.Now()
	for _, l := range Lanes {
		for _, b := range o.lanes[l].inflight {
			last := time.Unix(0, b.st.lastReply.Load())
			if b.at.After(last) {
				last = b.at
			}
			if now.Sub(last) > o.s.opts.AckTimeout {
				stuck = b.st
				break
			}
		}
		if stuck != nil {
			break
		}
	}
	o.mu.Unlock()
	if stuck != nil {
		o.s.log.Info("no answer in time; resetting stream", "peer", o.peer, "protocol", stuck.proto)
		_ = stuck.s.Reset() // the reader sees the error and calls streamDown
	}
}

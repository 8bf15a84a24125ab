package stream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

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

	running bool // guarded by Sender.mu

	mu        sync.Mutex
	lanes     [numLanes + 1]*laneState
	streams   map[protocol.ID]*outStream
	failures  int
	retryAt   time.Time
	lastErr   string
	idleSince time.Time
	acked     uint64 // entries this receiver acknowledged since start (refused ones included)
}

// laneState is one lane of one receiver. The receiver has applied every
// entry up to floor; entries up to cursor were written and are in flight.
type laneState struct {
	lane       Lane
	floor      uint64
	saved      uint64 // the floor on disk
	ackedAt    int64
	cursor     uint64
	inflight   []*sent
	addrHead   uint64 // last entry addressed to this receiver in this lane (0: unknown yet)
	addrLoaded bool
	attempts   uint32    // sends of the entry after the floor
	pausedTo   time.Time // a new member fetches a snapshot (decision lane)
}

// sent is one batch in flight.
type sent struct {
	after, through uint64
	entries        int
	st             *outStream
	at             time.Time
}

func newOutbox(s *Sender, p peer.ID) *outbox {
	o := &outbox{s: s, peer: p, wake: make(chan struct{}, 1), streams: map[protocol.ID]*outStream{}}
	for _, l := range Lanes {
		ls := &laneState{lane: l}
		if f := s.floors[store.FloorKey{Receiver: p, Lane: uint8(l)}]; f != nil {
			ls.floor, ls.saved, ls.ackedAt, ls.cursor = f.Version, f.Version, f.AckedAt, f.Version
		}
		o.lanes[l] = ls
	}
	return o
}

func (o *outbox) wakeUp() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *outbox) noteAddressed(l Lane, v uint64) {
	o.mu.Lock()
	if ls := o.lanes[l]; v > ls.addrHead {
		ls.addrHead = v
	}
	o.mu.Unlock()
}

// head is the last entry of a lane this receiver gets; callers hold o.mu.
func (o *outbox) head(ls *laneState) uint64 {
	h := ls.addrHead
	if (ls.lane == LaneResource || ls.lane == LaneDecision) && o.s.aud.Receives(o.peer, ls.lane) {
		h = max(h, o.s.heads[ls.lane].Load())
	}
	return h
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
		ls := o.lanes[l]
		ls.addrHead, ls.addrLoaded = max(ls.addrHead, h), true
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
		wait := time.Until(o.retryAt)
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
	ls      *laneState
	after   uint64
	entries []store.Entry
}

// pump writes what the window allows on every lane; it reports whether it
// wrote anything.
func (o *outbox) pump() bool {
	var plans []plan
	now := time.Now()
	o.mu.Lock()
	type want struct {
		ls    *laneState
		after uint64
		room  int
	}
	var wants []want
	for _, l := range Lanes {
		ls := o.lanes[l]
		if now.Before(ls.pausedTo) || o.s.opts.Hold(o.peer, l) {
			continue
		}
		room := o.s.opts.Window - len(ls.inflight)
		if room <= 0 || ls.cursor >= o.head(ls) {
			continue
		}
		wants = append(wants, want{ls, ls.cursor, room})
	}
	o.mu.Unlock()
	for _, w := range wants {
		broadcast := (w.ls.lane == LaneResource || w.ls.lane == LaneDecision) && o.s.aud.Receives(o.peer, w.ls.lane)
		maxEntries, maxBytes := w.room*o.s.opts.BatchEntries, w.room*o.s.opts.BatchBytes
		es, ok := o.s.tail.backlog(o.peer, w.ls.lane, broadcast, w.after, maxEntries, maxBytes)
		if !ok {
			var err error
			es, err = o.s.st.Backlog(o.peer, uint8(w.ls.lane), broadcast, w.after, maxEntries, maxBytes)
			if err != nil {
				o.failed(fmt.Errorf("read backlog: %w", err))
				return false
			}
		}
		if w.ls.lane == LaneDecision && o.s.opts.DecisionFallback > 0 && len(es) > 0 {
			if es = o.fallbackDue(es, now); len(es) == 0 {
				continue // nothing old enough yet: the next tick looks again
			}
		}
		if len(es) == 0 {
			// The head moved past entries that are not on disk for this
			// receiver (another receiver's, or truncated): nothing to send.
			o.mu.Lock()
			if w.ls.cursor == w.after {
				w.ls.cursor = max(w.ls.cursor, min(o.head(w.ls), o.s.st.DurableVersion()))
				if len(w.ls.inflight) == 0 && w.ls.floor < w.ls.cursor {
					// nothing in flight and nothing owed below the cursor
					w.ls.floor = w.ls.cursor
				}
			}
			o.mu.Unlock()
			continue
		}
		plans = append(plans, o.cut(w.ls, w.after, es, w.room)...)
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
// most BatchEntries and about BatchBytes each.
func (o *outbox) cut(ls *laneState, after uint64, es []store.Entry, room int) []plan {
	var out []plan
	start, size := 0, 0
	for i, e := range es {
		if i > start && (e.Protocol != es[start].Protocol || i-start >= o.s.opts.BatchEntries || size+len(e.Env) > o.s.opts.BatchBytes) {
			out = append(out, plan{ls: ls, after: after, entries: es[start:i]})
			after = es[i-1].Version
			start, size = i, 0
			if len(out) == room {
				return out
			}
		}
		size += len(e.Env)
	}
	return append(out, plan{ls: ls, after: after, entries: es[start:]})
}

// replies applies what a receiver answered: floors move, position reports
// rewind or advance lanes, refusals are recorded.
func (o *outbox) replies(st *outStream, rs []*pb.Reply) {
	epoch := o.s.st.Epoch()
	durable := o.s.st.DurableVersion()
	type refusal struct {
		ver    uint64
		reason string
	}
	var refused []refusal
	var ahead []struct {
		l Lane
		v uint64
	}
	type ackNote struct {
		l       Lane
		through uint64
		refused []*pb.Refusal
	}
	var acks []ackNote
	now := time.Now()
	o.mu.Lock()
	for _, r := range rs {
		l := Lane(r.Lane)
		if l < LaneResource || l > numLanes {
			continue
		}
		ls := o.lanes[l]
		through := r.Through
		if r.Epoch != epoch {
			through = 0 // the receiver holds nothing of this incarnation
		}
		if r.WantSnapshot {
			ls.pausedTo = now.Add(snapshotPause)
			o.dropInflight(ls)
			ls.cursor = ls.floor
			continue
		}
		if r.Report {
			if through > durable {
				ahead = append(ahead, struct {
					l Lane
					v uint64
				}{l, through})
			}
			switch {
			case through < ls.floor:
				o.s.log.Info("receiver holds less than it acknowledged (its store was restored or replaced); resending from its position",
					"peer", o.peer, "lane", l, "floor", ls.floor, "position", through)
				ls.floor = through
				o.dropInflight(ls)
				ls.cursor = ls.floor
			case through > ls.floor:
				ls.floor, ls.ackedAt = through, now.UnixNano()
			}
			if through > 0 {
				ls.pausedTo = time.Time{}
			}
		} else {
			if through > ls.floor {
				ls.floor, ls.ackedAt = through, now.UnixNano()
				ls.attempts = 0
				o.failures = 0
				o.lastErr = ""
			}
			if o.s.opts.OnAcked != nil {
				acks = append(acks, ackNote{l, through, r.Refused})
			}
		}
		if ls.cursor < ls.floor {
			ls.cursor = ls.floor
		}
		kept := ls.inflight[:0]
		for _, b := range ls.inflight {
			if b.through > ls.floor {
				kept = append(kept, b)
			} else {
				o.s.m.inflight.Dec()
				o.s.m.acked.Add(float64(b.entries))
				o.acked += uint64(b.entries)
			}
		}
		clear(ls.inflight[len(kept):])
		ls.inflight = kept
		for _, f := range r.Refused {
			refused = append(refused, refusal{f.Version, f.Reason})
			o.s.m.refused.Inc()
			if f.Equivocation {
				o.s.m.equivocations.Inc()
				o.s.log.Error("receiver holds another change under this node's version: equivocation (was this node's store restored from an older copy while its clock went back?)",
					"peer", o.peer, "lane", l, "version", f.Version, "reason", f.Reason)
			} else {
				o.s.log.Warn("receiver refused a change for good", "peer", o.peer, "lane", l, "version", f.Version, "reason", f.Reason)
			}
		}
	}
	o.mu.Unlock()
	o.wakeUp()
	for _, a := range ahead {
		o.s.opts.OnAhead(o.peer, a.l, a.v)
	}
	for _, a := range acks {
		o.s.opts.OnAcked(o.peer, a.l, a.through, a.refused)
	}
	if len(refused) > 0 {
		o.s.st.SubmitLazy(o.s.ctx, func(tx *store.Txn) error {
			for _, r := range refused {
				tx.SetRefused(o.peer, r.ver, r.reason)
			}
			return nil
		}, nil)
	}
	o.saveFloors(o.s.ctx)
}

// dropInflight forgets a lane's batches in flight (they will be read
// again from the log); callers hold o.mu.
func (o *outbox) dropInflight(ls *laneState) {
	o.s.m.inflight.Sub(float64(len(ls.inflight)))
	clear(ls.inflight)
	ls.inflight = ls.inflight[:0]
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
		ls := o.lanes[l]
		if ls.floor != ls.saved {
			ls.saved = ls.floor
			fs = append(fs, fl{l, &storepb.Floor{Version: ls.floor, AckedAt: ls.ackedAt}})
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

// idle ends the pump when nothing was owed or in flight for a while; it
// reports whether the pump should return.
func (o *outbox) idle() bool {
	o.s.mu.Lock()
	defer o.s.mu.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	for _, l := range Lanes {
		ls := o.lanes[l]
		if len(ls.inflight) > 0 || (ls.cursor < o.head(ls) && !o.s.opts.Hold(o.peer, l) && !now.Before(ls.pausedTo)) {
			o.idleSince = time.Time{}
			return false
		}
	}
	if o.idleSince.IsZero() {
		o.idleSince = now
		return false
	}
	if now.Sub(o.idleSince) < o.s.opts.IdleExit {
		return false
	}
	o.running = false
	if len(o.streams) > 0 {
		o.s.log.Debug("nothing owed: closing the quiet delivery streams", "peer", o.peer, "streams", len(o.streams))
	}
	for _, st := range o.streams {
		st.closing = true // a quiet close, not a failure (streamDown)
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
	lost := 0
	for _, l := range Lanes {
		ls := o.lanes[l]
		hit := false
		for _, b := range ls.inflight {
			if b.st == st {
				hit = true
				lost += b.entries
			}
		}
		if hit {
			o.dropInflight(ls)
			ls.cursor = ls.floor
		}
	}
	closing := st.closing
	o.mu.Unlock()
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
	o.failures++
	d := o.s.opts.BackoffMin << min(o.failures-1, 20)
	if d > o.s.opts.BackoffMax || d <= 0 {
		d = o.s.opts.BackoffMax
	}
	d = d/2 + rand.N(d/2+1)
	o.retryAt = time.Now().Add(d)
	o.lastErr = err.Error()
	failures := o.failures
	o.mu.Unlock()
	if o.s.ctx.Err() != nil {
		return
	}
	level := slog.LevelDebug
	if failures == 1 || failures%10 == 0 {
		level = slog.LevelInfo
	}
	o.s.log.Log(o.s.ctx, level, "delivery to peer failed; will retry", "peer", o.peer, "failures", failures, "retry_in", d.Round(time.Millisecond), "err", err)
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

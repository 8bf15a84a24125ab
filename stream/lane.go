package stream

import (
	"time"

	"github.com/ferrynet/ferry/protocols/pb"
)

// The sending state of one receiver's lane is a value (laneState), and what
// happens to it is one pure function (laneState.step): given an event (a
// reply, a decision to send, a batch written, a stream lost, a receiver's
// word), it returns the new state and the actions the outbox takes (write
// from a version, forget batches, count acknowledged entries, record
// refusals, report a rewind or an ahead receiver, save the floor). step does
// no I/O, takes no lock and reads no clock: the time comes with the event.
// The outbox holds the states under its mutex and carries out the actions
// after it lets go (outbox.go); lane_test.go tests step case by case.
//
// The retry schedule of a receiver (one per outbox, not per lane) is a value
// of the same kind (retry).

// laneState is one lane of one receiver. The receiver has applied every
// entry up to floor; entries up to cursor were written and are in flight.
type laneState struct {
	lane       Lane
	floor      uint64
	saved      uint64 // the floor on disk
	ackedAt    int64
	cursor     uint64
	inflight   []sent // never changed in place: step builds a new slice
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

// laneEvent names what happened to a lane.
type laneEvent int

const (
	// evReply: the receiver answered (reply): a batch applied through a
	// version (its duplicates included, refusals named), a position report
	// when a stream opens, or a new member's wish for a snapshot first (a
	// pause of the lane).
	evReply laneEvent = iota + 1
	// evPump: may the lane send now (held, bcastHead, window)? A held or
	// paused lane, a full window or a lane with nothing past its cursor
	// sends nothing.
	evPump
	// evSent: a batch (batch) is about to be written.
	evSent
	// evOpenFailed: the stream for the lane's next batch could not be
	// opened: the entry after the floor was tried again.
	evOpenFailed
	// evEmpty: the backlog after `after` holds nothing for this receiver
	// (the head moved past others' or truncated entries); the lane may skip
	// to min(head, durable).
	evEmpty
	// evStreamDown: stream st failed or closed: a lane with batches on it
	// goes back to its floor (go-back-N).
	evStreamDown
	// evHoldsAtMost: the receiver said (its hello) that it holds nothing
	// after version; the caller checked that the lane owes it an entry in
	// (version, floor].
	evHoldsAtMost
	// evAddressed: an entry addressed to the receiver was committed at version.
	evAddressed
	// evHeadLoaded: the last entry addressed to the receiver, read once
	// from the store, is version.
	evHeadLoaded
	// evSave: the floor is about to be written to disk if it moved.
	evSave
)

// laneInput is one event and what comes with it. now is the time of the
// event; a field an event does not use is ignored.
type laneInput struct {
	ev  laneEvent
	now time.Time

	// evReply
	reply   *pb.Reply
	epoch   uint64 // this node's epoch: a reply of another is about nothing it holds
	durable uint64 // this node's durable version: a report past it is an ahead receiver

	// evPump, evEmpty: the lane's last broadcast entry this receiver gets
	// (0 when it does not receive the lane's broadcasts).
	bcastHead uint64
	// evPump
	held   bool // SenderOptions.Hold
	window int  // batches in flight allowed

	// evSent
	batch sent
	// evStreamDown
	st *outStream
	// evEmpty: the cursor the backlog was read after.
	after uint64
	// evHoldsAtMost, evAddressed, evHeadLoaded
	version uint64
}

// laneActions are what a step asks of the outbox; the zero value asks
// nothing.
type laneActions struct {
	// send (evPump): read the backlog after sendAfter and write up to
	// room batches.
	send      bool
	sendAfter uint64
	room      int
	// stale (evSent): the lane moved while the backlog was read: write
	// nothing, read again.
	stale bool
	// resend (evSent): the batch's entries were written before.
	resend bool
	// forgot batches in flight without an answer (they will be read again
	// from the log): the in-flight gauge goes down by it. lost counts
	// their entries (evStreamDown).
	forgot, lost int
	// ackedBatches and ackedEntries were answered and leave the window
	// (dropped through the floor).
	ackedBatches, ackedEntries int
	// progress: an answer moved the floor; the receiver's failures clear.
	progress bool
	// rewound: the receiver holds less than it acknowledged; the floor
	// went back from rewoundFrom to rewoundTo.
	rewound                bool
	rewoundFrom, rewoundTo uint64
	// ahead (non-zero): the receiver holds this node's versions up to it,
	// beyond this node's durable log (SenderOptions.OnAhead).
	ahead uint64
	// answered: the reply was an answer (not a report), applied through
	// `through` (SenderOptions.OnAcked).
	answered bool
	through  uint64
	// refused are the changes the receiver refused for good: counted,
	// logged and recorded.
	refused []*pb.Refusal
	// save: write the floor (saveFloor, acked at saveAckedAt) to disk.
	save        bool
	saveFloor   uint64
	saveAckedAt int64
	// floorMoved: the floor is now newFloor. Set by outbox.stepLocked
	// (the floor before and after the step), not by step.
	floorMoved bool
	newFloor   uint64
}

// head is the last entry of the lane this receiver gets, given the lane's
// broadcast head for it.
func (ls laneState) head(bcastHead uint64) uint64 { return max(ls.addrHead, bcastHead) }

// busy reports whether the lane keeps the outbox from its idle exit:
// batches in flight, or something to send that is neither held nor paused.
func (ls laneState) busy(now time.Time, held bool, bcastHead uint64) bool {
	return len(ls.inflight) > 0 || (ls.cursor < ls.head(bcastHead) && !held && !now.Before(ls.pausedTo))
}

// owes reports whether the receiver may have something to receive in the
// lane: batches in flight, a head past the floor, or (addressed) entries
// addressed to it that were not looked for yet.
func (ls laneState) owes(bcastHead uint64, addressed bool) bool {
	return len(ls.inflight) > 0 || ls.floor < ls.head(bcastHead) || (!ls.addrLoaded && addressed)
}

// forget drops the batches in flight (they will be read again from the
// log) and counts them in a.
func (ls *laneState) forget(a *laneActions) {
	a.forgot += len(ls.inflight)
	ls.inflight = nil
}

// step returns the lane's state after the event in, and what the outbox is
// to do about it. It changes nothing it was given.
func (ls laneState) step(in laneInput) (laneState, laneActions) {
	var a laneActions
	switch in.ev {
	case evReply:
		return ls.onReply(in)
	case evPump:
		if in.now.Before(ls.pausedTo) || in.held {
			break
		}
		room := in.window - len(ls.inflight)
		if room <= 0 || ls.cursor >= ls.head(in.bcastHead) {
			break
		}
		a.send, a.sendAfter, a.room = true, ls.cursor, room
	case evSent:
		if ls.cursor != in.batch.after {
			a.stale = true
			break
		}
		a.resend = in.batch.after < ls.floor || (len(ls.inflight) == 0 && ls.attempts > 0)
		b := in.batch
		b.at = in.now
		ls.inflight = append(ls.inflight[:len(ls.inflight):len(ls.inflight)], b) // a new array: the given state keeps its own
		ls.cursor = b.through
		if len(ls.inflight) == 1 {
			ls.attempts++
		}
	case evOpenFailed:
		ls.attempts++
	case evEmpty:
		if ls.cursor != in.after {
			break // a reply moved the lane while the backlog was read
		}
		ls.cursor = max(ls.cursor, min(ls.head(in.bcastHead), in.durable))
		if len(ls.inflight) == 0 && ls.floor < ls.cursor {
			// nothing in flight and nothing owed below the cursor
			ls.floor = ls.cursor
		}
	case evStreamDown:
		hit := false
		for _, b := range ls.inflight {
			if b.st == in.st {
				hit = true
				a.lost += b.entries
			}
		}
		if hit {
			ls.forget(&a)
			ls.cursor = ls.floor
		}
	case evHoldsAtMost:
		if ls.floor > in.version {
			a.rewound, a.rewoundFrom, a.rewoundTo = true, ls.floor, in.version
			ls.floor = in.version
			ls.forget(&a)
			ls.cursor = in.version
		}
	case evAddressed:
		ls.addrHead = max(ls.addrHead, in.version)
	case evHeadLoaded:
		ls.addrHead, ls.addrLoaded = max(ls.addrHead, in.version), true
	case evSave:
		if ls.floor != ls.saved {
			ls.saved = ls.floor
			a.save, a.saveFloor, a.saveAckedAt = true, ls.floor, ls.ackedAt
		}
	}
	return ls, a
}

// onReply is step for a reply: floors move, position reports rewind or
// advance the lane, a wish for a snapshot pauses it, refusals are named.
func (ls laneState) onReply(in laneInput) (laneState, laneActions) {
	var a laneActions
	r := in.reply
	through := r.Through
	if r.Epoch != in.epoch {
		through = 0 // the receiver holds nothing of this incarnation
	}
	if r.WantSnapshot {
		ls.pausedTo = in.now.Add(snapshotPause)
		ls.forget(&a)
		ls.cursor = ls.floor
		return ls, a
	}
	if r.Report {
		if through > in.durable {
			a.ahead = through
		}
		switch {
		case through < ls.floor:
			a.rewound, a.rewoundFrom, a.rewoundTo = true, ls.floor, through
			ls.floor = through
			ls.forget(&a)
			ls.cursor = ls.floor
		case through > ls.floor:
			ls.floor, ls.ackedAt = through, in.now.UnixNano()
		}
		if through > 0 {
			ls.pausedTo = time.Time{} // the new member has its snapshot: resume
		}
	} else {
		if through > ls.floor {
			ls.floor, ls.ackedAt = through, in.now.UnixNano()
			ls.attempts = 0
			a.progress = true
		}
		a.answered, a.through = true, through
	}
	if ls.cursor < ls.floor {
		ls.cursor = ls.floor
	}
	var kept []sent
	for i, b := range ls.inflight {
		if b.through > ls.floor {
			if kept != nil {
				kept = append(kept, b)
			}
			continue
		}
		if kept == nil {
			kept = append(make([]sent, 0, len(ls.inflight)), ls.inflight[:i]...)
		}
		a.ackedBatches++
		a.ackedEntries += b.entries
	}
	if kept != nil {
		ls.inflight = kept
	}
	a.refused = r.Refused
	return ls, a
}

// retry is a receiver's schedule of attempts after failures.
type retry struct {
	failures int
	at       time.Time // no attempt before
	lastErr  string
}

// fail schedules the next attempt after a failure at now: capped
// exponential backoff from lo to hi, with jitter drawn by draw (rand.N: a
// value in [0, n)). It returns the new schedule and the delay.
func (r retry) fail(err error, now time.Time, lo, hi time.Duration, draw func(n time.Duration) time.Duration) (retry, time.Duration) {
	r.failures++
	d := lo << min(r.failures-1, 20)
	if d > hi || d <= 0 {
		d = hi
	}
	d = d/2 + draw(d/2+1)
	r.at = now.Add(d)
	r.lastErr = err.Error()
	return r, d
}

// progress clears the failures after an answer moved a floor (the
// schedule's time stays: it has passed, or a kick cuts it short).
func (r retry) progress() retry {
	r.failures, r.lastErr = 0, ""
	return r
}

package stream

import (
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/ferrynet/ferry/protocols/pb"
)

// The lane step (lane.go) case by case: each reply (applied through,
// duplicate, refused, another epoch, position report, snapshot wish), each
// hold and pause, sends, lost streams and a receiver's word, checked as
// the state it returns and the actions it asks for.

var (
	t0      = time.Unix(1_700_000_000, 0)
	stA     = &outStream{proto: "/a"}
	stB     = &outStream{proto: "/b"}
	epochA  = uint64(77)
	refusal = []*pb.Refusal{{Version: 15, Reason: "bad"}}
	equivoc = []*pb.Refusal{{Version: 16, Reason: "other content", Equivocation: true}}
)

func inBatch(after, through uint64, entries int, st *outStream) sent {
	return sent{after: after, through: through, entries: entries, st: st, at: t0}
}

// busyLane: floor 10, two batches in flight on stA (10..20, 5 entries;
// 20..30, 4 entries), one attempt.
func busyLane() laneState {
	return laneState{lane: LaneResource, floor: 10, saved: 10, ackedAt: 1, cursor: 30, attempts: 1,
		inflight: []sent{inBatch(10, 20, 5, stA), inBatch(20, 30, 4, stA)}}
}

func answer(through uint64, refused ...*pb.Refusal) laneInput {
	return laneInput{ev: evReply, now: t0, epoch: epochA, durable: 1000,
		reply: &pb.Reply{Lane: uint32(LaneResource), Epoch: epochA, Through: through, Refused: refused}}
}

func report(through uint64) laneInput {
	return laneInput{ev: evReply, now: t0, epoch: epochA, durable: 1000,
		reply: &pb.Reply{Lane: uint32(LaneResource), Epoch: epochA, Through: through, Report: true}}
}

func with(ls laneState, f func(*laneState)) laneState { f(&ls); return ls }

// clone copies a state deeply enough to see whether step changed it.
func clone(ls laneState) laneState {
	ls.inflight = slices.Clone(ls.inflight)
	return ls
}

type laneCase struct {
	name string
	in   laneState
	ev   laneInput
	want laneState
	act  laneActions
}

func runLaneCases(t *testing.T, cases []laneCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := clone(c.in)
			got, act := c.in.step(c.ev)
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("state\n got %+v\nwant %+v", got, c.want)
			}
			if !reflect.DeepEqual(act, c.act) {
				t.Errorf("actions\n got %+v\nwant %+v", act, c.act)
			}
			if !reflect.DeepEqual(c.in, before) {
				t.Errorf("step changed the state it was given: %+v, was %+v", c.in, before)
			}
		})
	}
}

func TestLaneReplies(t *testing.T) {
	other := answer(30)
	other.reply.Epoch = epochA + 1
	otherReport := report(30)
	otherReport.reply.Epoch = epochA + 1
	bothRefused := answer(30, append(slices.Clone(refusal), equivoc...)...)
	runLaneCases(t, []laneCase{
		{
			name: "applied through the first batch: the floor moves, it leaves the window, failures clear",
			in:   busyLane(), ev: answer(20),
			want: with(busyLane(), func(ls *laneState) {
				ls.floor, ls.ackedAt, ls.attempts = 20, t0.UnixNano(), 0
				ls.inflight = []sent{inBatch(20, 30, 4, stA)}
			}),
			act: laneActions{progress: true, answered: true, through: 20, ackedBatches: 1, ackedEntries: 5},
		},
		{
			name: "applied through both batches",
			in:   busyLane(), ev: answer(30),
			want: with(busyLane(), func(ls *laneState) {
				ls.floor, ls.ackedAt, ls.attempts = 30, t0.UnixNano(), 0
				ls.inflight = []sent{}
			}),
			act: laneActions{progress: true, answered: true, through: 30, ackedBatches: 2, ackedEntries: 9},
		},
		{
			name: "applied through the middle of a batch: the batch stays in flight",
			in:   busyLane(), ev: answer(25),
			want: with(busyLane(), func(ls *laneState) {
				ls.floor, ls.ackedAt, ls.attempts = 25, t0.UnixNano(), 0
				ls.inflight = []sent{inBatch(20, 30, 4, stA)}
			}),
			act: laneActions{progress: true, answered: true, through: 25, ackedBatches: 1, ackedEntries: 5},
		},
		{
			name: "duplicate (an answer at or below the floor): nothing moves, the attempts stay",
			in:   busyLane(), ev: answer(10),
			want: busyLane(),
			act:  laneActions{answered: true, through: 10},
		},
		{
			name: "an older answer never moves the floor back",
			in:   busyLane(), ev: answer(5),
			want: busyLane(),
			act:  laneActions{answered: true, through: 5},
		},
		{
			name: "refused (rejected) changes are named and the floor passes them",
			in:   busyLane(), ev: bothRefused,
			want: with(busyLane(), func(ls *laneState) {
				ls.floor, ls.ackedAt, ls.attempts = 30, t0.UnixNano(), 0
				ls.inflight = []sent{}
			}),
			act: laneActions{progress: true, answered: true, through: 30, ackedBatches: 2, ackedEntries: 9,
				refused: bothRefused.reply.Refused},
		},
		{
			name: "a refusal in a duplicate answer is still named",
			in:   busyLane(), ev: answer(10, refusal...),
			want: busyLane(),
			act:  laneActions{answered: true, through: 10, refused: refusal},
		},
		{
			name: "an answer about another epoch holds nothing of this one",
			in:   busyLane(), ev: other,
			want: busyLane(),
			act:  laneActions{answered: true, through: 0},
		},
		{
			name: "an answer past the cursor (an acknowledgement from gossip) moves the cursor too",
			in:   laneState{lane: LaneDecision, floor: 10, saved: 10, cursor: 10},
			ev:   answer(40),
			want: laneState{lane: LaneDecision, floor: 40, saved: 10, cursor: 40, ackedAt: t0.UnixNano()},
			act:  laneActions{progress: true, answered: true, through: 40},
		},
		{
			name: "report behind the floor: the floor goes back, the window empties, resend from there",
			in:   busyLane(), ev: report(4),
			want: with(busyLane(), func(ls *laneState) { ls.floor, ls.cursor, ls.inflight = 4, 4, nil }),
			act:  laneActions{rewound: true, rewoundFrom: 10, rewoundTo: 4, forgot: 2},
		},
		{
			name: "report of another epoch: the receiver holds nothing, back to 0",
			in:   busyLane(), ev: otherReport,
			want: with(busyLane(), func(ls *laneState) { ls.floor, ls.cursor, ls.inflight = 0, 0, nil }),
			act:  laneActions{rewound: true, rewoundFrom: 10, rewoundTo: 0, forgot: 2},
		},
		{
			name: "report past the floor: the floor moves, the attempts stay (no answer to a send)",
			in:   busyLane(), ev: report(20),
			want: with(busyLane(), func(ls *laneState) {
				ls.floor, ls.ackedAt = 20, t0.UnixNano()
				ls.inflight = []sent{inBatch(20, 30, 4, stA)}
			}),
			act: laneActions{ackedBatches: 1, ackedEntries: 5},
		},
		{
			name: "report at the floor: nothing",
			in:   busyLane(), ev: report(10),
			want: busyLane(),
		},
		{
			name: "report past this node's durable log: the receiver is ahead",
			in:   laneState{lane: LaneResource, floor: 900, cursor: 900},
			ev:   report(1200),
			want: laneState{lane: LaneResource, floor: 1200, cursor: 1200, ackedAt: t0.UnixNano()},
			act:  laneActions{ahead: 1200},
		},
	})
}

func TestLanePauses(t *testing.T) {
	paused := with(busyLane(), func(ls *laneState) { ls.lane, ls.pausedTo = LaneDecision, t0.Add(time.Second) })
	snap := laneInput{ev: evReply, now: t0, epoch: epochA, reply: &pb.Reply{Lane: uint32(LaneDecision), Epoch: epochA, WantSnapshot: true, Through: 25, Refused: refusal}}
	runLaneCases(t, []laneCase{
		{
			name: "a new member wants a snapshot first: the lane pauses and goes back to its floor",
			in:   busyLane(), ev: snap,
			want: with(busyLane(), func(ls *laneState) { ls.pausedTo, ls.cursor, ls.inflight = t0.Add(snapshotPause), 10, nil }),
			act:  laneActions{forgot: 2},
		},
		{
			name: "its report after the snapshot resumes the lane",
			in:   paused, ev: report(20),
			want: with(paused, func(ls *laneState) {
				ls.pausedTo, ls.floor, ls.ackedAt = time.Time{}, 20, t0.UnixNano()
				ls.inflight = []sent{inBatch(20, 30, 4, stA)}
			}),
			act: laneActions{ackedBatches: 1, ackedEntries: 5},
		},
		{
			name: "a report of nothing held keeps the pause",
			in:   with(paused, func(ls *laneState) { ls.floor, ls.cursor, ls.inflight = 0, 0, nil }), ev: report(0),
			want: with(paused, func(ls *laneState) { ls.floor, ls.cursor, ls.inflight = 0, 0, nil }),
		},
		{
			name: "an answer does not resume a paused lane",
			in:   paused, ev: answer(20),
			want: with(paused, func(ls *laneState) {
				ls.floor, ls.ackedAt, ls.attempts = 20, t0.UnixNano(), 0
				ls.inflight = []sent{inBatch(20, 30, 4, stA)}
			}),
			act: laneActions{progress: true, answered: true, through: 20, ackedBatches: 1, ackedEntries: 5},
		},
	})
}

func TestLaneSendsHoldsAndPauses(t *testing.T) {
	idle := laneState{lane: LaneResource, floor: 10, cursor: 10}
	pump := func(held bool, head uint64, now time.Time) laneInput {
		return laneInput{ev: evPump, now: now, held: held, bcastHead: head, window: 8}
	}
	pausedIdle := with(idle, func(ls *laneState) { ls.pausedTo = t0.Add(time.Second) })
	addressed := with(idle, func(ls *laneState) { ls.lane, ls.addrHead = LanePlanner, 50 })
	runLaneCases(t, []laneCase{
		{name: "something past the cursor: send from it, the whole window", in: idle, ev: pump(false, 40, t0), want: idle,
			act: laneActions{send: true, sendAfter: 10, room: 8}},
		{name: "with batches in flight: send from the cursor, the rest of the window", in: busyLane(), ev: pump(false, 40, t0), want: busyLane(),
			act: laneActions{send: true, sendAfter: 30, room: 6}},
		{name: "held: nothing", in: idle, ev: pump(true, 40, t0), want: idle},
		{name: "paused: nothing", in: pausedIdle, ev: pump(false, 40, t0), want: pausedIdle},
		{name: "a pause that passed: send", in: pausedIdle, ev: pump(false, 40, t0.Add(time.Second)), want: pausedIdle,
			act: laneActions{send: true, sendAfter: 10, room: 8}},
		{name: "caught up: nothing", in: idle, ev: pump(false, 10, t0), want: idle},
		{name: "window full: nothing", in: with(busyLane(), func(ls *laneState) {
			for range 6 {
				ls.inflight = append(ls.inflight, inBatch(30, 30, 0, stA))
			}
		}), ev: pump(false, 40, t0), want: with(busyLane(), func(ls *laneState) {
			for range 6 {
				ls.inflight = append(ls.inflight, inBatch(30, 30, 0, stA))
			}
		})},
		{name: "entries addressed to the receiver past the cursor: send", in: addressed, ev: pump(false, 0, t0), want: addressed,
			act: laneActions{send: true, sendAfter: 10, room: 8}},
	})
}

func TestLaneWrites(t *testing.T) {
	sentAt := func(after, through uint64, now time.Time) laneInput {
		return laneInput{ev: evSent, now: now, batch: sent{after: after, through: through, entries: 3, st: stB}}
	}
	t1 := t0.Add(time.Minute)
	fresh := laneState{lane: LaneResource, floor: 10, cursor: 10}
	retried := with(fresh, func(ls *laneState) { ls.attempts = 2 })
	runLaneCases(t, []laneCase{
		{name: "the first batch: in flight, the cursor moves, one attempt", in: fresh, ev: sentAt(10, 13, t1),
			want: with(fresh, func(ls *laneState) {
				ls.cursor, ls.attempts = 13, 1
				ls.inflight = []sent{{after: 10, through: 13, entries: 3, st: stB, at: t1}}
			})},
		{name: "a batch behind others: the attempts stay", in: busyLane(), ev: sentAt(30, 33, t1),
			want: with(busyLane(), func(ls *laneState) {
				ls.cursor = 33
				ls.inflight = append(slices.Clone(ls.inflight), sent{after: 30, through: 33, entries: 3, st: stB, at: t1})
			})},
		{name: "after a failure: a resend", in: retried, ev: sentAt(10, 13, t1),
			want: with(retried, func(ls *laneState) {
				ls.cursor, ls.attempts = 13, 3
				ls.inflight = []sent{{after: 10, through: 13, entries: 3, st: stB, at: t1}}
			}), act: laneActions{resend: true}},
		{name: "from below the floor: a resend", in: with(fresh, func(ls *laneState) { ls.cursor = 5 }), ev: sentAt(5, 13, t1),
			want: with(fresh, func(ls *laneState) {
				ls.cursor, ls.attempts = 13, 1
				ls.inflight = []sent{{after: 5, through: 13, entries: 3, st: stB, at: t1}}
			}), act: laneActions{resend: true}},
		{name: "the lane moved while the backlog was read: stale, nothing written", in: busyLane(), ev: sentAt(20, 25, t1),
			want: busyLane(), act: laneActions{stale: true}},
		{name: "the stream could not open: one attempt more", in: fresh, ev: laneInput{ev: evOpenFailed},
			want: with(fresh, func(ls *laneState) { ls.attempts = 1 })},
	})
}

func TestLaneLostStreamsAndWords(t *testing.T) {
	mixed := with(busyLane(), func(ls *laneState) { ls.inflight = []sent{inBatch(10, 20, 5, stA), inBatch(20, 30, 4, stB)} })
	empty := func(after, head, durable uint64) laneInput {
		return laneInput{ev: evEmpty, after: after, bcastHead: head, durable: durable}
	}
	idle := laneState{lane: LaneResource, floor: 10, cursor: 10}
	runLaneCases(t, []laneCase{
		{name: "error on the stream of its batches: go back to the floor (go-back-N)", in: busyLane(), ev: laneInput{ev: evStreamDown, st: stA},
			want: with(busyLane(), func(ls *laneState) { ls.cursor, ls.inflight = 10, nil }),
			act:  laneActions{forgot: 2, lost: 9}},
		{name: "error on one of two streams: every batch goes, later ones may wait for it", in: mixed, ev: laneInput{ev: evStreamDown, st: stB},
			want: with(mixed, func(ls *laneState) { ls.cursor, ls.inflight = 10, nil }),
			act:  laneActions{forgot: 2, lost: 4}},
		{name: "error on another stream: nothing", in: busyLane(), ev: laneInput{ev: evStreamDown, st: stB}, want: busyLane()},
		{name: "the receiver holds less than its floor: back to what it holds", in: busyLane(), ev: laneInput{ev: evHoldsAtMost, version: 7},
			want: with(busyLane(), func(ls *laneState) { ls.floor, ls.cursor, ls.inflight = 7, 7, nil }),
			act:  laneActions{rewound: true, rewoundFrom: 10, rewoundTo: 7, forgot: 2}},
		{name: "the receiver holds its floor: nothing", in: busyLane(), ev: laneInput{ev: evHoldsAtMost, version: 10}, want: busyLane()},
		{name: "nothing on disk for it: skip to the head, and the floor with it", in: idle, ev: empty(10, 40, 1000),
			want: with(idle, func(ls *laneState) { ls.floor, ls.cursor = 40, 40 })},
		{name: "nothing on disk for it: no further than the durable log", in: idle, ev: empty(10, 40, 25),
			want: with(idle, func(ls *laneState) { ls.floor, ls.cursor = 25, 25 })},
		{name: "nothing on disk, batches in flight: the cursor skips, the floor waits", in: busyLane(), ev: empty(30, 40, 1000),
			want: with(busyLane(), func(ls *laneState) { ls.cursor = 40 })},
		{name: "nothing on disk after a cursor that moved since: nothing", in: busyLane(), ev: empty(20, 40, 1000), want: busyLane()},
		{name: "an addressed entry raises the head", in: idle, ev: laneInput{ev: evAddressed, version: 50},
			want: with(idle, func(ls *laneState) { ls.addrHead = 50 })},
		{name: "an older addressed entry does not lower it", in: with(idle, func(ls *laneState) { ls.addrHead = 50 }), ev: laneInput{ev: evAddressed, version: 30},
			want: with(idle, func(ls *laneState) { ls.addrHead = 50 })},
		{name: "the addressed head read from the store", in: with(idle, func(ls *laneState) { ls.addrHead = 50 }), ev: laneInput{ev: evHeadLoaded, version: 45},
			want: with(idle, func(ls *laneState) { ls.addrHead, ls.addrLoaded = 50, true })},
		{name: "a floor that moved is saved once", in: with(idle, func(ls *laneState) { ls.floor, ls.ackedAt = 40, 9 }), ev: laneInput{ev: evSave},
			want: with(idle, func(ls *laneState) { ls.floor, ls.saved, ls.ackedAt = 40, 40, 9 }),
			act:  laneActions{save: true, saveFloor: 40, saveAckedAt: 9}},
		{name: "a saved floor is not saved again", in: with(idle, func(ls *laneState) { ls.floor, ls.saved = 40, 40 }), ev: laneInput{ev: evSave},
			want: with(idle, func(ls *laneState) { ls.floor, ls.saved = 40, 40 })},
	})
}

// TestLaneStepKeepsItsInput: two steps from one state (one with room in
// its slice) give two states that share nothing the other can change.
func TestLaneStepKeepsItsInput(t *testing.T) {
	ls := busyLane()
	ls.inflight = append(make([]sent, 0, 8), ls.inflight...)
	first, _ := ls.step(laneInput{ev: evSent, now: t0, batch: inBatch(30, 31, 1, stA)})
	second, _ := ls.step(laneInput{ev: evSent, now: t0, batch: inBatch(30, 32, 2, stB)})
	if first.inflight[2].through != 31 || second.inflight[2].through != 32 {
		t.Fatalf("the steps share their batches in flight: %+v and %+v", first.inflight, second.inflight)
	}
	acked, _ := first.step(answer(20))
	if len(first.inflight) != 3 || first.inflight[0].through != 20 || len(acked.inflight) != 2 {
		t.Fatalf("an answer changed the state it was given: %+v (after: %+v)", first.inflight, acked.inflight)
	}
}

// TestLaneBusyAndOwes: what keeps an outbox from its idle exit, and what
// makes a receiver owed something.
func TestLaneBusyAndOwes(t *testing.T) {
	idle := laneState{lane: LaneResource, floor: 10, cursor: 10, addrLoaded: true}
	ahead := with(idle, func(ls *laneState) { ls.cursor = 40 }) // written, all answered (a skip past others' entries)
	paused := with(idle, func(ls *laneState) { ls.pausedTo = t0.Add(time.Second) })
	for _, c := range []struct {
		name      string
		ls        laneState
		now       time.Time
		held      bool
		head      uint64
		addressed bool
		busy      bool
		owes      bool
	}{
		{name: "caught up", ls: idle, now: t0, head: 10},
		{name: "batches in flight", ls: busyLane(), now: t0, head: 30, busy: true, owes: true},
		{name: "batches in flight, held", ls: busyLane(), now: t0, held: true, head: 30, busy: true, owes: true},
		{name: "something to send", ls: idle, now: t0, head: 40, busy: true, owes: true},
		{name: "something to send, held", ls: idle, now: t0, held: true, head: 40, owes: true},
		{name: "something to send, paused", ls: paused, now: t0, head: 40, owes: true},
		{name: "something to send, pause passed", ls: paused, now: t0.Add(time.Second), head: 40, busy: true, owes: true},
		{name: "cursor past the floor, nothing in flight", ls: ahead, now: t0, head: 40, owes: true},
		{name: "addressed entries not looked for yet", ls: with(idle, func(ls *laneState) { ls.addrLoaded = false }), now: t0, head: 10, addressed: true, owes: true},
		{name: "addressed entries looked for", ls: idle, now: t0, head: 10, addressed: true},
		{name: "addressed entries not looked for, not asked about", ls: with(idle, func(ls *laneState) { ls.addrLoaded = false }), now: t0, head: 10},
	} {
		if got := c.ls.busy(c.now, c.held, c.head); got != c.busy {
			t.Errorf("%s: busy %v, want %v", c.name, got, c.busy)
		}
		if got := c.ls.owes(c.head, c.addressed); got != c.owes {
			t.Errorf("%s: owes %v, want %v", c.name, got, c.owes)
		}
	}
}

// TestRetrySchedule: capped exponential backoff with jitter; an answer that
// moves a floor clears the failures.
func TestRetrySchedule(t *testing.T) {
	lo, hi := 100*time.Millisecond, time.Second
	top := func(n time.Duration) time.Duration { return n - 1 } // the longest jitter
	none := func(time.Duration) time.Duration { return 0 }
	var r retry
	var d time.Duration
	for i, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		r, d = r.fail(errors.New("boom"), t0, lo, hi, top)
		if d != want || r.failures != i+1 || !r.at.Equal(t0.Add(want)) || r.lastErr != "boom" {
			t.Fatalf("failure %d: delay %v at %v (failures %d, %q), want %v", i+1, d, r.at, r.failures, r.lastErr, want)
		}
	}
	if _, d = r.fail(errors.New("boom"), t0, lo, hi, none); d != hi/2 {
		t.Fatalf("least jitter: %v, want %v", d, hi/2)
	}
	r.failures = 100 // a shift past 20 stays capped
	if _, d = r.fail(errors.New("boom"), t0, lo, hi, top); d != hi {
		t.Fatalf("after many failures: %v, want %v", d, hi)
	}
	at := r.at
	if r = r.progress(); r.failures != 0 || r.lastErr != "" || !r.at.Equal(at) {
		t.Fatalf("after progress: %+v", r)
	}
}

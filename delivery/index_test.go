package delivery

import (
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/stream"
)

// The index (index.go) case by case: a floor pops exactly the waits it
// passes, a wait of several receivers completes with its last one, a
// deadline removes a wait with its marks, and nothing is left behind.

var (
	t0     = time.Unix(1_700_000_000, 0)
	pB, pC = peer.ID("B"), peer.ID("C")
	kB     = laneKey{pB, stream.LaneResource}
	kC     = laneKey{pC, stream.LaneResource}
	kBCons = laneKey{pB, stream.LaneConsider}
)

func newWaiter(v uint64, after time.Duration) *waiter {
	return &waiter{version: v, deadline: t0.Add(after), at: -1}
}

func versions(ws []*waiter) []uint64 {
	out := make([]uint64, 0, len(ws))
	for _, w := range ws {
		out = append(out, w.version)
	}
	slices.Sort(out)
	return out
}

// empty checks that the index holds nothing: no wait, no mark.
func empty(t *testing.T, ix *index) {
	t.Helper()
	if ix.size() != 0 || len(ix.lanes) != 0 {
		t.Fatalf("index not empty: %d waits, %d lanes", ix.size(), len(ix.lanes))
	}
	if _, ok := ix.next(); ok {
		t.Fatal("an empty index has a next deadline")
	}
}

func TestIndexFloorPopsExactlyWhatItPasses(t *testing.T) {
	var ix index
	for _, v := range []uint64{50, 10, 30, 20, 40} {
		ix.add(newWaiter(v, time.Minute), []laneKey{kB})
	}
	if got := ix.pass(kB, 5); len(got) != 0 {
		t.Fatalf("floor 5 woke %v", versions(got))
	}
	if got := versions(ix.pass(kB, 30)); !slices.Equal(got, []uint64{10, 20, 30}) {
		t.Fatalf("floor 30 woke %v, want 10 20 30", got)
	}
	if got := ix.pass(kC, 100); len(got) != 0 {
		t.Fatalf("another receiver's floor woke %v", versions(got))
	}
	if got := ix.pass(kBCons, 100); len(got) != 0 {
		t.Fatalf("another lane's floor woke %v", versions(got))
	}
	if got := ix.pass(kB, 30); len(got) != 0 {
		t.Fatalf("the same floor again woke %v", versions(got))
	}
	if ix.size() != 2 {
		t.Fatalf("%d waits open, want 2", ix.size())
	}
	if got := versions(ix.pass(kB, 1000)); !slices.Equal(got, []uint64{40, 50}) {
		t.Fatalf("floor 1000 woke %v", got)
	}
	empty(t, &ix)
}

func TestIndexWaitOfSeveralReceiversCompletesWithTheLast(t *testing.T) {
	var ix index
	w := newWaiter(10, time.Minute)
	ix.add(w, []laneKey{kB, kC})
	if got := ix.pass(kB, 10); len(got) != 0 || w.left != 1 {
		t.Fatalf("B alone completed the wait (%v, left %d)", versions(got), w.left)
	}
	if got := ix.pass(kC, 12); len(got) != 1 || got[0] != w || w.left != 0 {
		t.Fatalf("C's floor: %v, left %d", versions(got), w.left)
	}
	empty(t, &ix)
}

func TestIndexDeadlines(t *testing.T) {
	var ix index
	early, late := newWaiter(10, time.Second), newWaiter(20, time.Minute)
	both := newWaiter(30, 2*time.Second)
	ix.add(late, []laneKey{kB})
	ix.add(early, []laneKey{kB})
	ix.add(both, []laneKey{kB, kC})
	if next, ok := ix.next(); !ok || !next.Equal(t0.Add(time.Second)) {
		t.Fatalf("next %v %v, want the earliest deadline", next, ok)
	}
	if got := ix.expire(t0.Add(time.Second - 1)); len(got) != 0 {
		t.Fatalf("expired before its deadline: %v", versions(got))
	}
	if got := versions(ix.expire(t0.Add(time.Second))); !slices.Equal(got, []uint64{10}) {
		t.Fatalf("at the first deadline: %v", got)
	}
	// B passed 30, C not: the wait of both is open until its deadline,
	// which removes its mark on C too.
	if got := versions(ix.pass(kB, 30)); !slices.Equal(got, []uint64{20}) {
		t.Fatalf("B's floor 30 woke %v, want 20 (30 waits for C)", got)
	}
	if got := versions(ix.expire(t0.Add(time.Hour))); !slices.Equal(got, []uint64{30}) {
		t.Fatalf("at the last deadline: %v", got)
	}
	if both.left != 0 || both.marks[0] != nil || both.marks[1] != nil {
		t.Fatalf("expired wait keeps marks: %+v", both)
	}
	empty(t, &ix)
	// A wait that timed out is not woken later.
	if got := ix.pass(kC, 100); len(got) != 0 {
		t.Fatalf("a timed-out wait was woken: %v", versions(got))
	}
}

// Timed-out waits leave nothing behind in the receiver's heap while its
// floor never moves (a partner that stays away).
func TestIndexTimeoutsLeaveNoMarks(t *testing.T) {
	var ix index
	for i := range 1000 {
		ix.add(newWaiter(uint64(i+1), time.Duration(i%7)*time.Millisecond), []laneKey{kB, kC})
	}
	if got := ix.expire(t0.Add(time.Second)); len(got) != 1000 {
		t.Fatalf("expired %d of 1000", len(got))
	}
	empty(t, &ix)
}

func TestIndexNoKeysAndRemoveAll(t *testing.T) {
	var ix index
	if ix.add(newWaiter(1, time.Minute), nil) {
		t.Fatal("a wait for no receiver was kept")
	}
	empty(t, &ix)
	ix.add(newWaiter(1, time.Minute), []laneKey{kB})
	ix.add(newWaiter(2, time.Minute), []laneKey{kB, kC})
	if got := versions(ix.removeAll()); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("removeAll %v", got)
	}
	empty(t, &ix)
}

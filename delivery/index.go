package delivery

import (
	"container/heap"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/stream"
)

// The index of open waits: per (receiver, lane) a heap of marks ordered by
// version, so a floor that moves pops exactly the waits it passes; and one
// heap of waits ordered by deadline, so one timer serves them all. A wait
// has one mark per receiver it still waits for; it is complete when its
// last mark is popped. The index is a plain value: no locks, no clock, no
// goroutine (the Watch holds it under its mutex); index_test.go tests it.

// laneKey names one receiver's lane.
type laneKey struct {
	p peer.ID
	l stream.Lane
}

// waiter is one open wait.
type waiter struct {
	version  uint64
	deadline time.Time
	marks    []*mark // one per receiver; nil once passed or removed
	left     int     // marks still in their heaps
	at       int     // position in the deadline heap; -1 when out of it
	// done answers the wait once (see Watch.add).
	done func(complete bool, err error)
}

// mark is a waiter's place in one receiver lane's heap.
type mark struct {
	w   *waiter
	key laneKey
	at  int // position in its heap
}

// marks is a heap of marks by version.
type marks []*mark

func (h marks) Len() int           { return len(h) }
func (h marks) Less(i, j int) bool { return h[i].w.version < h[j].w.version }
func (h marks) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].at, h[j].at = i, j
}
func (h *marks) Push(x any) {
	m := x.(*mark)
	m.at = len(*h)
	*h = append(*h, m)
}
func (h *marks) Pop() any {
	old := *h
	m := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	m.at = -1
	return m
}

// deadlines is a heap of waiters by deadline.
type deadlines []*waiter

func (h deadlines) Len() int           { return len(h) }
func (h deadlines) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h deadlines) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].at, h[j].at = i, j
}
func (h *deadlines) Push(x any) {
	w := x.(*waiter)
	w.at = len(*h)
	*h = append(*h, w)
}
func (h *deadlines) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	w.at = -1
	return w
}

// index holds the open waits.
type index struct {
	lanes map[laneKey]*marks
	due   deadlines
}

// size is the number of open waits.
func (ix *index) size() int { return len(ix.due) }

// add opens w, waiting for every key of keys (distinct receivers of one
// lane). A wait with no key is complete at once: add reports false and
// keeps nothing.
func (ix *index) add(w *waiter, keys []laneKey) bool {
	if len(keys) == 0 {
		return false
	}
	if ix.lanes == nil {
		ix.lanes = map[laneKey]*marks{}
	}
	w.marks = make([]*mark, len(keys))
	w.left = len(keys)
	for i, k := range keys {
		h := ix.lanes[k]
		if h == nil {
			h = &marks{}
			ix.lanes[k] = h
		}
		m := &mark{w: w, key: k}
		w.marks[i] = m
		heap.Push(h, m)
	}
	heap.Push(&ix.due, w)
	return true
}

// pass tells the index that key's floor is floor: every mark of the lane
// at or below it leaves, and the waits that had no other mark left are
// complete: they leave the index and are returned.
func (ix *index) pass(k laneKey, floor uint64) []*waiter {
	h := ix.lanes[k]
	if h == nil {
		return nil
	}
	var done []*waiter
	for h.Len() > 0 && (*h)[0].w.version <= floor {
		m := heap.Pop(h).(*mark)
		w := m.w
		w.dropMark(m)
		if w.left == 0 {
			heap.Remove(&ix.due, w.at)
			done = append(done, w)
		}
	}
	if h.Len() == 0 {
		delete(ix.lanes, k)
	}
	return done
}

// dropMark forgets m, which left its heap.
func (w *waiter) dropMark(m *mark) {
	for i, x := range w.marks {
		if x == m {
			w.marks[i] = nil
			w.left--
			return
		}
	}
}

// next is the earliest deadline (ok false: no wait is open).
func (ix *index) next() (time.Time, bool) {
	if len(ix.due) == 0 {
		return time.Time{}, false
	}
	return ix.due[0].deadline, true
}

// expire removes and returns the waits whose deadline is at or before now,
// with their marks.
func (ix *index) expire(now time.Time) []*waiter {
	var out []*waiter
	for len(ix.due) > 0 && !ix.due[0].deadline.After(now) {
		w := heap.Pop(&ix.due).(*waiter)
		ix.unmark(w)
		out = append(out, w)
	}
	return out
}

// unmark takes w's marks out of their heaps.
func (ix *index) unmark(w *waiter) {
	for i, m := range w.marks {
		if m == nil {
			continue
		}
		h := ix.lanes[m.key]
		heap.Remove(h, m.at)
		if h.Len() == 0 {
			delete(ix.lanes, m.key)
		}
		w.marks[i] = nil
		w.left--
	}
}

// removeAll empties the index and returns every open wait.
func (ix *index) removeAll() []*waiter {
	out := make([]*waiter, 0, len(ix.due))
	for _, w := range ix.due {
		w.at = -1
		for i := range w.marks {
			w.marks[i] = nil
		}
		w.left = 0
		out = append(out, w)
	}
	ix.due = nil
	ix.lanes = nil
	return out
}

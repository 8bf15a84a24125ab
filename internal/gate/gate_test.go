package gate

import (
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errShut = errors.New("waiting for a partner")

// record collects what a gate did with each request.
type record struct {
	mu     sync.Mutex
	ran    []int
	failed map[int]error
	done   chan struct{}
	left   int
}

func newRecord(n int) *record {
	return &record{failed: map[int]error{}, done: make(chan struct{}), left: n}
}

func (r *record) finish() {
	r.left--
	if r.left == 0 {
		close(r.done)
	}
}

func (r *record) do(g *Gate, i int) {
	g.Do(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.ran = append(r.ran, i)
		r.finish()
	}, func(err error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.failed[i] = err
		r.finish()
	})
}

func (r *record) wait(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("requests still unanswered: %d", r.left)
	}
}

func TestZeroGateIsOpen(t *testing.T) {
	var g Gate
	r := newRecord(1)
	r.do(&g, 1)
	r.wait(t)
	if len(r.ran) != 1 || !g.IsOpen() {
		t.Fatalf("ran %v, open %v", r.ran, g.IsOpen())
	}
}

func TestHeldRequestsRunInOrderAtOpen(t *testing.T) {
	g := New(time.Hour, 100, func() error { return errShut })
	r := newRecord(20)
	for i := range 10 {
		r.do(g, i)
	}
	if g.IsOpen() || g.Waiting() != 10 {
		t.Fatalf("open %v waiting %d before Open", g.IsOpen(), g.Waiting())
	}
	r.mu.Lock()
	ran := len(r.ran)
	r.mu.Unlock()
	if ran != 0 {
		t.Fatalf("%d ran before Open", ran)
	}
	g.Open()
	g.Open() // idempotent
	for i := 10; i < 20; i++ {
		r.do(g, i)
	}
	r.wait(t)
	for i, v := range r.ran {
		if v != i {
			t.Fatalf("ran in order %v", r.ran)
		}
	}
	if len(r.failed) != 0 {
		t.Fatalf("failed: %v", r.failed)
	}
}

// A request that arrives while Open lets the held ones through queues
// behind them: an update sent right after a held create never overtakes it.
func TestRequestDuringOpenQueuesBehind(t *testing.T) {
	g := New(time.Hour, 100, func() error { return errShut })
	r := newRecord(3)
	arrived := make(chan struct{})
	g.Do(func() {
		go func() { r.do(g, 2); close(arrived) }()
		<-arrived // Do returned: the request is queued, not run
		r.mu.Lock()
		r.ran = append(r.ran, 0)
		r.finish()
		r.mu.Unlock()
	}, func(error) { t.Error("first request failed") })
	r.do(g, 1)
	g.Open()
	r.wait(t)
	if len(r.ran) != 3 || r.ran[0] != 0 || r.ran[1] != 1 || r.ran[2] != 2 {
		t.Fatalf("ran %v, want [0 1 2]", r.ran)
	}
}

func TestWaitedTooLongFailsWithTheReason(t *testing.T) {
	g := New(50*time.Millisecond, 100, func() error { return errShut })
	r := newRecord(3)
	for i := range 3 {
		r.do(g, i)
	}
	r.wait(t)
	if len(r.ran) != 0 || len(r.failed) != 3 || !errors.Is(r.failed[0], errShut) {
		t.Fatalf("ran %v failed %v", r.ran, r.failed)
	}
	// Still shut: a later request waits again.
	r2 := newRecord(1)
	r2.do(g, 9)
	g.Open()
	r2.wait(t)
	if len(r2.ran) != 1 {
		t.Fatalf("after Open: ran %v failed %v", r2.ran, r2.failed)
	}
}

func TestFullQueueFailsAtOnce(t *testing.T) {
	g := New(time.Hour, 2, func() error { return errShut })
	defer g.Close()
	r := newRecord(1)
	held := newRecord(2)
	held.do(g, 0)
	held.do(g, 1)
	r.do(g, 2)
	r.wait(t)
	if !errors.Is(r.failed[2], errShut) {
		t.Fatalf("third request: %v", r.failed)
	}
}

func TestCloseFailsHeldAndLater(t *testing.T) {
	g := New(time.Hour, 100, func() error { return errShut })
	r := newRecord(2)
	r.do(g, 0)
	g.Close()
	r.do(g, 1)
	r.wait(t)
	if !errors.Is(r.failed[0], ErrClosed) || !errors.Is(r.failed[1], ErrClosed) {
		t.Fatalf("failed %v", r.failed)
	}
	g.Open() // after Close, nothing runs
	if len(r.ran) != 0 {
		t.Fatalf("ran %v after Close", r.ran)
	}
}

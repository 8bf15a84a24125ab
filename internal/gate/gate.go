// Package gate holds requests back until a condition is met, then lets them
// through in the order they came; a request that waited too long is failed
// with the reason the gate gives.
//
// Ferry uses it for owned-resource writes at start: a node with partners
// takes them only once a partner has said what it holds of this node's
// changes (a store restored from an older copy would otherwise answer a
// retried request a second time, with a new version).
//
// A Gate holds no goroutine of its own: a timer fails the requests that
// waited too long, and Close stops it and fails the rest.
package gate

import (
	"errors"
	"sync"
	"time"
)

// ErrClosed is the reason given to requests still waiting at Close.
var ErrClosed = errors.New("the node is stopping")

// Gate holds requests until Open. The zero Gate is open.
type Gate struct {
	mu      sync.Mutex
	shut    bool // requests wait
	closed  bool // Close ran: requests fail
	opening bool // Open is running the queue: new requests queue behind it
	wait    time.Duration
	max     int
	why     func() error
	queue   []waiter
	timer   *time.Timer
}

type waiter struct {
	until time.Time
	run   func()
	fail  func(error)
}

// New returns a shut gate. A request waits at most wait, then fails with
// why(); beyond max waiting requests, a new one fails at once.
func New(wait time.Duration, max int, why func() error) *Gate {
	return &Gate{shut: true, wait: wait, max: max, why: why}
}

// IsOpen reports whether requests pass without waiting.
func (g *Gate) IsOpen() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.shut && !g.opening
}

// Waiting is the number of requests held now.
func (g *Gate) Waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.queue)
}

// Do runs run now if the gate is open; otherwise it holds it until Open,
// or calls fail with the gate's reason once it has waited too long.
// Exactly one of run and fail is called, on the caller's goroutine or on
// the one that opens the gate or times the request out.
func (g *Gate) Do(run func(), fail func(error)) {
	g.mu.Lock()
	switch {
	case g.closed:
		g.mu.Unlock()
		fail(ErrClosed)
		return
	case !g.shut && !g.opening:
		g.mu.Unlock()
		run()
		return
	case len(g.queue) >= g.max:
		g.mu.Unlock()
		fail(g.why())
		return
	}
	g.queue = append(g.queue, waiter{until: time.Now().Add(g.wait), run: run, fail: fail})
	if g.timer == nil && !g.opening {
		g.timer = time.AfterFunc(g.wait, g.expire)
	}
	g.mu.Unlock()
}

// expire fails the requests that waited too long and sets the timer for
// the next one. Requests queue in arrival order with one wait, so the ones
// due are a prefix.
func (g *Gate) expire() {
	g.mu.Lock()
	if g.closed || !g.shut || g.opening {
		g.mu.Unlock()
		return
	}
	now := time.Now()
	n := 0
	for n < len(g.queue) && !g.queue[n].until.After(now) {
		n++
	}
	due := append([]waiter(nil), g.queue[:n]...)
	g.queue = append(g.queue[:0], g.queue[n:]...)
	g.timer = nil
	if len(g.queue) > 0 {
		g.timer = time.AfterFunc(time.Until(g.queue[0].until), g.expire)
	}
	var reason error
	if len(due) > 0 {
		reason = g.why()
	}
	g.mu.Unlock()
	for _, w := range due {
		w.fail(reason)
	}
}

// Open lets every held request through, in the order they came, on the
// caller's goroutine, then lets new ones pass. A request that arrives while
// the held ones are let through queues behind them. Open is idempotent.
func (g *Gate) Open() {
	g.mu.Lock()
	if !g.shut || g.opening || g.closed {
		g.mu.Unlock()
		return
	}
	g.opening = true
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
	for {
		q := g.queue
		g.queue = nil
		if len(q) == 0 {
			g.shut, g.opening = false, false
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		for _, w := range q {
			w.run()
		}
		g.mu.Lock()
		if g.closed {
			g.opening = false
			g.mu.Unlock()
			return
		}
	}
}

// Close fails every held request with ErrClosed, and every later one.
func (g *Gate) Close() {
	g.mu.Lock()
	g.closed = true
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
	q := g.queue
	g.queue = nil
	g.mu.Unlock()
	for _, w := range q {
		w.fail(ErrClosed)
	}
}

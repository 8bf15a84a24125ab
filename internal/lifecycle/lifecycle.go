// Package lifecycle is the one guarded way a Ferry component starts and
// counts the goroutines it owns, so Close can wait for all of them and none
// starts after Close began (the refCount of go-libp2p identify, the goFunc of
// hashicorp/raft).
//
// A Group replaces the pattern "mutex + closing flag + WaitGroup" that each
// component wrote by hand: calling WaitGroup.Add while Wait runs is a race
// (and a panic when the counter was zero), which a libp2p stream handler
// calling wg.Add concurrently with Close does. Group.Add and Group.Go refuse
// once Close has begun, under the same lock that Close takes.
//
// It must not do more than that: no contexts, no restarts, no logging.
package lifecycle

import "sync"

// Group tracks goroutines and handler calls. The zero Group is ready to use.
type Group struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// Go runs fn on a new goroutine that Close waits for. Once Close has begun
// it runs nothing and returns false.
func (g *Group) Go(fn func()) bool {
	if !g.Add() {
		return false
	}
	go func() {
		defer g.Done()
		fn()
	}()
	return true
}

// Add counts in work the caller runs on its own goroutine (a stream handler
// libp2p called); Done must follow. It returns false, counting nothing, once
// Close has begun: the caller then refuses the work.
func (g *Group) Add() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

// Done counts out work that Add counted in.
func (g *Group) Done() { g.wg.Done() }

// Closed reports whether Close has begun.
func (g *Group) Closed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// Close refuses new work, then waits for everything counted in to end. It
// is idempotent; later calls wait too. Whatever makes the goroutines return
// (a cancelled context, a closed channel) must happen before or during
// Close, from another goroutine.
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}

// Shut refuses new work without waiting (the first step of a Close that
// cancels its goroutines next, then calls Close to wait).
func (g *Group) Shut() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

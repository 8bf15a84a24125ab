package lifecycle

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGoAndClose(t *testing.T) {
	var g Group
	stop := make(chan struct{})
	var ran atomic.Int32
	for range 10 {
		if !g.Go(func() { <-stop; ran.Add(1) }) {
			t.Fatal("Go refused before Close")
		}
	}
	closed := make(chan struct{})
	go func() { g.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while goroutines run")
	case <-time.After(50 * time.Millisecond):
	}
	close(stop)
	<-closed
	if ran.Load() != 10 {
		t.Fatalf("%d goroutines ran, want 10", ran.Load())
	}
	if g.Go(func() { t.Error("ran after Close") }) {
		t.Fatal("Go accepted work after Close")
	}
	if g.Add() {
		t.Fatal("Add accepted work after Close")
	}
	if !g.Closed() {
		t.Fatal("Closed is false after Close")
	}
	g.Close() // idempotent
}

// TestAddRacesClose is what a libp2p handler does: Add on the handler's own
// goroutine while Close runs. Under -race, a bare WaitGroup fails this.
func TestAddRacesClose(t *testing.T) {
	for range 200 {
		var g Group
		var wg sync.WaitGroup
		var inside atomic.Int32
		var after atomic.Bool
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if !g.Add() {
					return
				}
				defer g.Done()
				if after.Load() {
					t.Error("work counted in after Close returned")
				}
				inside.Add(1)
			}()
		}
		g.Close()
		after.Store(true)
		wg.Wait()
	}
}

func TestShutThenClose(t *testing.T) {
	var g Group
	release := make(chan struct{})
	g.Go(func() { <-release })
	g.Shut()
	if g.Go(func() {}) {
		t.Fatal("Go accepted work after Shut")
	}
	close(release)
	g.Close()
}

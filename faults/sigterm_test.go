package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
)

// externalNATS runs a NATS server for the test on a free port of 127.0.0.1.
func externalNATS(t *testing.T) string {
	t.Helper()
	port := proc.FreePort(t)
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true, MaxPayload: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

// TestSIGTERMUnderLoad stops a node with SIGTERM while 64 apps keep
// sending creates, again and again. The node's NATS server is external and
// stays up, so a request that reaches no node is told at once (no
// responders), and a request the node took and never answered would time
// out: none may. Every stop exits 0 within its bound, and every
// acknowledged create reaches the partner. (Issue 11: 329 requests
// unanswered over 12 stops, 44 of them committed and delivered.)
func TestSIGTERMUnderLoad(t *testing.T) {
	stops := pick(2, 12)
	url := externalNATS(t)
	a := proc.New(t, proc.Options{Name: "A", Configure: func(c *node.Config) { c.NATS.URL = url }})
	b := proc.New(t, proc.Options{Name: "B"})
	proc.Partners(a, b)
	a.Start()
	b.Start()
	app := connect(t, url)
	tl := newTally()
	var stopTimes []time.Duration
	for cycle := range stops {
		ctx, cancel := context.WithCancel(context.Background())
		wg := load(ctx, app, 64, 256, fmt.Sprintf("c%d", cycle), 25*time.Second, tl)
		// Let the load run, then stop the node in the middle of it.
		before := tl.count(okReply)
		t.Cleanup(cancel) // the load stops if the wait fails
		wait.Until(t, 30*time.Second, fmt.Sprintf("cycle %d: the load advances by 500 creates", cycle), func() error {
			if tl.count(okReply) < before+500 {
				return fmt.Errorf("%s", tl)
			}
			return nil
		})
		// A random point of the load, not an event to wait for: the stop
		// lands anywhere in the next half second of creates.
		time.Sleep(time.Duration(rand.IntN(500)) * time.Millisecond)
		start := time.Now()
		code := a.Term(40 * time.Second)
		took := time.Since(start)
		stopTimes = append(stopTimes, took)
		if code != 0 {
			cancel()
			t.Fatalf("cycle %d: exit %d after SIGTERM, want 0:\n%s", cycle, code, a.Stderr())
		}
		cancel()
		wg.Wait()
		if n := tl.count(timedOut); n > 0 {
			t.Fatalf("cycle %d: %d requests taken and never answered (timed out): %s", cycle, n, tl)
		}
		a.Start()
	}
	acked := tl.ackedIDs()
	holdsAll(t, b, acked, 120*time.Second)
	holdsAll(t, a, acked, 10*time.Second)
	t.Logf("%d stops under load: %s; SIGTERM to exit: %v", stops, tl, stopTimes)
	if tl.count(timedOut) > 0 || tl.count(connFailed) > 0 {
		t.Fatalf("unanswered requests: %s", tl)
	}
}

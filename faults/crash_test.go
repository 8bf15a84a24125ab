package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/testnet"
)

// change is one entry of ferry.changes, as the crash tests read it.
type change struct {
	Version       uint64 `json:"version"`
	Origin        string `json:"origin"`
	OriginVersion uint64 `json:"origin_version"`
	Kind          string `json:"kind"`
	Payload       struct {
		ID string `json:"id"`
	} `json:"payload"`
}

// changesOf reads a node's whole change log through ferry.changes, page
// after page, as an app that keeps its place would; an error answer fails
// the test.
func changesOf(t *testing.T, nc *nats.Conn) []change {
	t.Helper()
	all, code, msg := readChanges(t, nc)
	if code != "" {
		t.Fatalf("ferry.changes after %d changes: %s: %s", len(all), code, msg)
	}
	return all
}

// pendingAcks is a node's count of changes not yet acknowledged by their
// receivers (the status of its admin API).
func pendingAcks(t *testing.T, n *proc.Node) int {
	t.Helper()
	code, b, err := n.Get("/api/v1/status")
	if err != nil || code != 200 {
		return -1
	}
	var s struct {
		Status struct {
			PendingAcks int `json:"pending_acks"`
		} `json:"status"`
	}
	if json.Unmarshal(b, &s) != nil {
		return -1
	}
	return s.Status.PendingAcks
}

// sendAll sends creates "<prefix>-<i>" for i in [0, total) from workers
// apps-in-flight at once, each with its id as idempotency key, and retries
// each until a reply says ok: a crash of the node may cost an answer, never
// a change. It returns the version each create was acknowledged with, and
// how many attempts went unanswered. progress counts the acknowledged.
func sendAll(t *testing.T, nc *nats.Conn, prefix string, total, workers int, progress *atomic.Int64) (map[string]uint64, int) {
	t.Helper()
	return sendAllPad(t, nc, prefix, total, workers, 160, progress)
}

// sendAllPad is sendAll with documents of pad bytes.
func sendAllPad(t *testing.T, nc *nats.Conn, prefix string, total, workers, pad int, progress *atomic.Int64) (map[string]uint64, int) {
	t.Helper()
	var (
		mu       sync.Mutex
		acked    = make(map[string]uint64, total)
		retries  int
		next     atomic.Int64
		firstErr error
		wg       sync.WaitGroup
	)
	deadline := time.Now().Add(10 * time.Minute)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= total {
					return
				}
				id := fmt.Sprintf("%s-%d", prefix, i)
				for attempt := 0; ; attempt++ {
					o, r := request(nc, createMsg(id, pad, id), 5*time.Second)
					if o == okReply {
						mu.Lock()
						acked[id] = r.Version
						mu.Unlock()
						progress.Add(1)
						break
					}
					if o == errReply && (r.Error == nil || r.Error.Code != "unavailable") {
						mu.Lock()
						if firstErr == nil {
							firstErr = fmt.Errorf("create %s: %+v", id, r.Error)
						}
						mu.Unlock()
						return
					}
					mu.Lock()
					retries++
					mu.Unlock()
					if time.Now().After(deadline) {
						mu.Lock()
						if firstErr == nil {
							firstErr = fmt.Errorf("create %s: no ok answer in 10 minutes (last: %v)", id, o)
						}
						mu.Unlock()
						return
					}
					time.Sleep(time.Duration(20+rand.IntN(80)) * time.Millisecond) // the app's retry pause (load pacing)
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	return acked, retries
}

// crasher SIGKILLs n at kills random points of the load (chosen by how
// many creates were acknowledged out of total) and starts it again after a
// random pause, until the load ends. It returns when it made every kill or
// ctx ends, and says how many it made.
func crasher(ctx context.Context, t *testing.T, n *proc.Node, kills, total int, progress *atomic.Int64) <-chan int {
	points := make([]int, kills)
	for i := range points {
		points[i] = total/20 + rand.IntN(total*17/20)
	}
	slices.Sort(points)
	done := make(chan int, 1)
	go func() {
		made := 0
		defer func() { done <- made }()
		for _, p := range points {
			for int(progress.Load()) < p {
				select {
				case <-ctx.Done():
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
			n.Kill()
			made++
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(rand.IntN(400)) * time.Millisecond):
			}
			if err := n.StartErr(); err != nil {
				t.Errorf("restart %s after kill %d: %v", n.Name(), made, err)
				return
			}
		}
	}()
	return done
}

// checkDelivered verifies what a receiver's change log holds of one origin:
// every acknowledged create exactly once, with the version the origin
// answered, in the origin's order, and nothing else.
func checkDelivered(t *testing.T, who string, got []change, origin string, acked map[string]uint64) {
	t.Helper()
	seen := make(map[string]int, len(acked))
	var last uint64
	n := 0
	for _, c := range got {
		if c.Origin != origin {
			continue
		}
		n++
		if c.OriginVersion <= last {
			t.Fatalf("%s: %s's change %d (%s) after %d: the origin's order is broken", who, origin, c.OriginVersion, c.Payload.ID, last)
		}
		last = c.OriginVersion
		seen[c.Payload.ID]++
		want, ok := acked[c.Payload.ID]
		if !ok {
			t.Fatalf("%s holds %s (version %d), which no reply acknowledged", who, c.Payload.ID, c.OriginVersion)
		}
		if c.OriginVersion != want {
			t.Fatalf("%s holds %s at version %d; the origin answered %d", who, c.Payload.ID, c.OriginVersion, want)
		}
	}
	lost, dup := 0, 0
	var example string
	for id := range acked {
		switch seen[id] {
		case 0:
			lost++
			example = id
		case 1:
		default:
			dup++
			example = id
		}
	}
	if lost > 0 || dup > 0 || n != len(acked) {
		t.Fatalf("%s: %d of %d acknowledged creates lost, %d duplicated (e.g. %s); %d changes of %s held",
			who, lost, len(acked), dup, example, n, origin)
	}
}

// sameStores checks that two nodes hold the same resources at the same
// versions and the same changes of origin.
func sameStores(t *testing.T, a, b *proc.Node, ca, cb []change, origin string) {
	t.Helper()
	ra, rb := resources(t, a), resources(t, b)
	if len(ra) != len(rb) {
		t.Fatalf("%s holds %d resources, %s %d", a.Name(), len(ra), b.Name(), len(rb))
	}
	for id := range ra {
		if !rb[id] {
			t.Fatalf("%s holds %s, %s does not", a.Name(), id, b.Name())
		}
	}
	key := func(cs []change) []string {
		var out []string
		for _, c := range cs {
			if c.Origin == origin {
				out = append(out, fmt.Sprintf("%d %s %s", c.OriginVersion, c.Kind, c.Payload.ID))
			}
		}
		return out
	}
	if ka, kb := key(ca), key(cb); !slices.Equal(ka, kb) {
		t.Fatalf("the logs of %s's changes differ: %s has %d, %s %d", origin, a.Name(), len(ka), b.Name(), len(kb))
	}
}

// crashRun is one crash test: an origin A and its partner B as `ferry
// run` processes, creates sent to A at full rate, and victim SIGKILLed and
// restarted at random points.
func crashRun(t *testing.T, victim string) {
	total, kills := pick(20_000, 200_000), pick(3, 10)
	a := proc.New(t, proc.Options{Name: "A"})
	b := proc.New(t, proc.Options{Name: "B"})
	proc.Partners(a, b)
	a.Start()
	b.Start()
	target := map[string]*proc.Node{"A": a, "B": b}[victim]
	app := connect(t, a.NATSURL())

	var progress atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	made := crasher(ctx, t, target, kills, total, &progress)
	start := time.Now()
	acked, retries := sendAll(t, app, "e", total, 256, &progress)
	sent := time.Since(start)
	cancel()
	nKills := <-made
	if t.Failed() {
		t.FailNow()
	}
	if !target.Running() {
		target.Start()
	}
	testnet.WaitFor(t, 3*time.Minute, "A's deliveries all acknowledged", func() bool { return pendingAcks(t, a) == 0 })
	origin := a.PeerID().String()
	ca := changesOf(t, app)
	bc := connect(t, b.NATSURL())
	cb := changesOf(t, bc)
	checkDelivered(t, "A", ca, origin, acked)
	checkDelivered(t, "B", cb, origin, acked)
	sameStores(t, a, b, ca, cb, origin)
	t.Logf("%d creates to A (%.0f/s acknowledged) with %s SIGKILLed and restarted %d times: %d attempts unanswered and retried with their keys; "+
		"0 lost, 0 duplicated, A's order kept on B, A and B hold the same %d resources",
		total, float64(total)/sent.Seconds(), victim, nKills, retries, len(acked))
}

// TestReceiverSIGKILL: the partner B is killed with SIGKILL and restarted
// at random points while A takes creates at full rate; at the end B holds
// every acknowledged create once, in A's order, and the stores are equal.
func TestReceiverSIGKILL(t *testing.T) { crashRun(t, "B") }

// TestOriginSIGKILL: the origin A is killed with SIGKILL and restarted at
// random points while apps send it creates at full rate, retrying with
// their idempotency keys what went unanswered; every create a reply said
// ok for reaches B at the version the reply gave, once, in order.
func TestOriginSIGKILL(t *testing.T) { crashRun(t, "A") }

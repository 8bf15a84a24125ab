package faults

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/testnet"
)

// TestRetryAcrossCrash sends bursts of keyed creates, SIGKILLs the node in
// the middle of each burst, restarts it and retries every create of the
// burst with its key, as an app that got no answer (or unavailable) would.
// Each retry gets the first answer (the same version) when the first
// attempt was answered, a fresh one when it never committed, and never
// conflict; each resource is written once. (Issue 11: a retry of a create
// that had in fact been written got conflict.)
func TestRetryAcrossCrash(t *testing.T) {
	rounds, burst := pick(2, 20), pick(300, 1000)
	a := proc.Start(t, proc.Options{Name: "A"})
	app := connect(t, a.NATSURL())
	firstOK, replayed, fresh := 0, 0, 0
	for round := range rounds {
		ids := make([]string, burst)
		first := make([]reply, burst)
		firstOutcome := make([]outcome, burst)
		var wg sync.WaitGroup
		sem := make(chan struct{}, 128)
		killAt := burst/4 + rand.IntN(burst/2)
		var killOnce sync.Once
		for i := range burst {
			ids[i] = fmt.Sprintf("r%d-%d", round, i)
			if i == killAt {
				killOnce.Do(a.Kill)
			}
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				firstOutcome[i], first[i] = request(app, createMsg(ids[i], 64, "key-"+ids[i]), 2*time.Second)
			}()
		}
		wg.Wait()
		a.Start()
		testnet.WaitFor(t, 20*time.Second, "the app reconnects", app.IsConnected)
		for i := range burst {
			o, r := request(app, createMsg(ids[i], 64, "key-"+ids[i]), 20*time.Second)
			if o != okReply {
				msg := ""
				if r.Error != nil {
					msg = r.Error.Code + ": " + r.Error.Message
				}
				t.Fatalf("round %d: retry of %s (first: %v): %v %s", round, ids[i], firstOutcome[i], o, msg)
			}
			if firstOutcome[i] == okReply {
				firstOK++
				if r.Version != first[i].Version {
					t.Fatalf("round %d: retry of %s answered version %d, the first answer was %d", round, ids[i], r.Version, first[i].Version)
				}
				replayed++
			} else {
				fresh++
			}
		}
		// A retry of a retry too.
		if o, r := request(app, createMsg(ids[0], 64, "key-"+ids[0]), 10*time.Second); o != okReply {
			t.Fatalf("second retry: %v %+v", o, r.Error)
		}
	}
	// Every create is there once: one resource per id, one change per resource.
	have := resources(t, a)
	if len(have) != rounds*burst {
		t.Fatalf("%d resources after %d keyed creates", len(have), rounds*burst)
	}
	r, err := app.Request("ferry.changes", []byte(`{"since":0,"limit":10000}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var page struct {
		Changes []struct {
			Payload struct {
				ID string `json:"id"`
			} `json:"payload"`
		} `json:"changes"`
		More bool `json:"more"`
	}
	if err := jsonUnmarshal(r.Data, &page); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, c := range page.Changes {
		seen[c.Payload.ID]++
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("%s was written %d times", id, n)
		}
	}
	t.Logf("%d rounds of %d keyed creates with a SIGKILL in each: %d answered before the kill (retries got the same version), %d retried fresh, 0 conflicts",
		rounds, burst, firstOK, fresh)
	_ = replayed
}

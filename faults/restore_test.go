package faults

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// TestRestoredOriginTakesNoSecondCreate (issue 16, point 1): A and its
// partner B; A acknowledges 1,000 keyed creates, is stopped and copied,
// acknowledges 1,000 more (B holds them), then both stop. A's home is put
// back from the copy and A starts while B is still down. The app sends the
// second 1,000 again with the same Nats-Msg-Id (100 of them with another
// payload). While B is away A answers them unavailable, never ok; once B is
// back, A takes its changes back from B and each retry gets its first
// answer (the same version), the changed ones conflict. At the end A and B
// hold every create once, with its first content, in A's order.
//
// On the code before the fix A answered the resends ok with new versions,
// and both nodes held two creates for each of those ids.
func TestRestoredOriginTakesNoSecondCreate(t *testing.T) {
	const n, changed = 1000, 100
	r := restoreWhilePartnerAway(t, n, false)
	a, b, app, first, second := r.a, r.b, r.app, r.first, r.second

	// B is away: A cannot know what it answered after the copy.
	resend := func(i int) *nats.Msg {
		id := fmt.Sprintf("second-%d", i)
		pad := 160 // sendAll's
		if i < changed {
			pad = 40
		}
		return createMsg(id, pad, id)
	}
	outcomes := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, r := request(app, resend(i), 20*time.Second)
			k := o.String()
			if r.Error != nil {
				k = r.Error.Code
			}
			mu.Lock()
			outcomes[k]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if outcomes["unavailable"] != n {
		t.Fatalf("resends to the restored A while its partner is away: %v (want %d unavailable)", outcomes, n)
	}
	if !strings.Contains(a.StderrAll(), "own writes wait until a partner") {
		t.Fatalf("A did not say why own writes wait:\n%s", a.Stderr())
	}

	// B is back: A takes back what it lost, and the retries get their first answers.
	b.Start()
	conflicts := 0
	for i := range n {
		id := fmt.Sprintf("second-%d", i)
		o, r := retryUnavailable(t, app, resend(i))
		switch {
		case i < changed && o == errReply && r.Error != nil && r.Error.Code == "conflict":
			conflicts++
		case i < changed:
			t.Fatalf("resend of %s with another payload: %v %+v (want conflict)", id, o, r.Error)
		case o != okReply:
			t.Fatalf("resend of %s: %v %+v", id, o, r.Error)
		case r.Version != second[id]:
			t.Fatalf("resend of %s answered version %d; the first answer was %d", id, r.Version, second[id])
		}
	}
	testnet.WaitFor(t, 60*time.Second, "A's deliveries all acknowledged", func() bool { return pendingAcks(t, a) == 0 })

	all := make(map[string]uint64, 2*n)
	for id, v := range first {
		all[id] = v
	}
	for id, v := range second {
		all[id] = v
	}
	origin := a.PeerID().String()
	ca := changesOf(t, app)
	cb := changesOf(t, connect(t, b.NATSURL()))
	checkDelivered(t, "A", ca, origin, all)
	checkDelivered(t, "B", cb, origin, all)
	sameStores(t, a, b, ca, cb, origin)
	for _, node := range []*proc.Node{a, b} {
		rows := resourceRows(t, node)
		for i := range changed {
			id := fmt.Sprintf("second-%d", i)
			var doc struct {
				Pad string `json:"pad"`
			}
			if err := json.Unmarshal(rows[id].Resource, &doc); err != nil || len(doc.Pad) != 160 {
				t.Fatalf("%s holds %s as %.80s (want its first content, pad of 160): %v", node.Name(), id, rows[id].Resource, err)
			}
		}
	}
	t.Logf("restored A, partner away: %v; partner back: %d first answers, %d conflicts; A and B hold each of %d creates once, with its first content",
		outcomes, n-changed, conflicts, len(all))
}

// restored is the state restoreWhilePartnerAway leaves: A restored from a
// copy and running, its partner B stopped, and the answers A gave.
type restored struct {
	a, b          *proc.Node
	app           *nats.Conn
	first, second map[string]uint64 // id -> version acknowledged
}

// restoreWhilePartnerAway: A acknowledges n keyed creates (first-<i>), is
// stopped and copied, acknowledges n more (second-<i>), which B holds; both
// stop, A's home is put back from the copy and A starts alone.
func restoreWhilePartnerAway(t *testing.T, n int, trust bool) restored {
	t.Helper()
	a := proc.New(t, proc.Options{Name: "A"})
	b := proc.New(t, proc.Options{Name: "B"})
	proc.Partners(a, b)
	a.Configure(func(c *node.Config) { c.TrustStore = trust })
	a.Start()
	b.Start()
	app := connect(t, a.NATSURL())
	var progress atomic.Int64
	first, _ := sendAll(t, app, "first", n, 64, &progress)
	testnet.WaitFor(t, 60*time.Second, "B holds the first creates", func() bool { return len(resources(t, b)) == n })

	if code := a.Term(30 * time.Second); code != 0 {
		t.Fatalf("A exited %d", code)
	}
	backup := filepath.Join(t.TempDir(), "backup")
	copyTree(t, a.Home().Dir, backup)
	a.Start()
	testnet.WaitFor(t, 20*time.Second, "the app reconnects", app.IsConnected)
	second, _ := sendAll(t, app, "second", n, 64, &progress)
	testnet.WaitFor(t, 60*time.Second, "B holds all creates", func() bool { return len(resources(t, b)) == 2*n })
	if code := b.Term(30 * time.Second); code != 0 {
		t.Fatalf("B exited %d", code)
	}
	if code := a.Term(30 * time.Second); code != 0 {
		t.Fatalf("A exited %d", code)
	}
	copyTree(t, backup, a.Home().Dir) // the restore
	a.Start()
	testnet.WaitFor(t, 20*time.Second, "the app reconnects", app.IsConnected)
	return restored{a: a, b: b, app: app, first: first, second: second}
}

// TestRestoredTrustingOriginKeepsTheFirstCreate: the same restore, with
// trust_store: true on A, so A takes the resends at once and answers them
// with new versions. Two creates of one resource by one origin then exist;
// when B is back it refuses each later one as a conflict (an ERROR line
// each), A puts its rows back to the first, and both hold the first
// content. On the code before the fix B applied the later creates over the
// first ones.
func TestRestoredTrustingOriginKeepsTheFirstCreate(t *testing.T) {
	const n = 200
	r := restoreWhilePartnerAway(t, n, true)
	for i := range n {
		id := fmt.Sprintf("second-%d", i)
		if o, rep := request(r.app, createMsg(id, 40, id), 20*time.Second); o != okReply {
			t.Fatalf("resend of %s to A trusting its store: %v %+v", id, o, rep.Error)
		}
	}
	r.b.Start()
	testnet.WaitFor(t, 60*time.Second, "B refuses each later create", func() bool {
		return strings.Count(r.b.StderrAll(), "refused a second create") >= n
	})
	testnet.WaitFor(t, 60*time.Second, "A's deliveries all answered", func() bool { return pendingAcks(t, r.a) == 0 })
	all := make(map[string]uint64, 2*n)
	for _, m := range []map[string]uint64{r.first, r.second} {
		for id, v := range m {
			all[id] = v
		}
	}
	checkDelivered(t, "B", changesOf(t, connect(t, r.b.NATSURL())), r.a.PeerID().String(), all)
	for _, nd := range []*proc.Node{r.a, r.b} {
		testnet.WaitFor(t, 30*time.Second, nd.Name()+" holds the first content of every resent id", func() bool {
			rows := resourceRows(t, nd)
			for i := range n {
				id := fmt.Sprintf("second-%d", i)
				if rows[id].OriginVersion != r.second[id] {
					return false
				}
			}
			return len(rows) == 2*n
		})
	}
	if !strings.Contains(r.a.StderrAll(), "the first is kept") {
		t.Fatal("A did not say that it kept the first create")
	}
}

// retryUnavailable sends m until the answer is not unavailable (a node
// taking its changes back from a partner says so for a moment).
func retryUnavailable(t *testing.T, nc *nats.Conn, m *nats.Msg) (outcome, reply) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		o, r := request(nc, m, 20*time.Second)
		busy := o == timedOut || o == noResponders || (o == errReply && r.Error != nil && r.Error.Code == "unavailable")
		if !busy || time.Now().After(deadline) {
			return o, r
		}
		time.Sleep(50 * time.Millisecond) // a retry's pause, as an app's; the caller judges the last answer
	}
}

// copyTree replaces to with a copy of from (cp -a: a backup of a stopped
// node's home, or its restore).
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	if err := os.RemoveAll(to); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v: %s", from, to, err, out)
	}
}

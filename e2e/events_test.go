package e2e

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrynet/ferry/eventstream"
	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
)

// rawEvent is one event as a subscriber or the stream has it.
type rawEvent struct {
	Subject string
	Data    string
}

// coreEvents records every event published on a node's NATS under one of
// the subject families the events stream keeps.
type coreEvents struct {
	mu  sync.Mutex
	evs []rawEvent
}

// streamFamilies are the event subjects (after the prefix) the stream keeps.
var streamFamilies = []string{"resource.", "considers.", "planner.", "review.requested", "review.decided."}

func kept(prefix, subject string) bool {
	for _, f := range streamFamilies {
		if strings.HasPrefix(subject, prefix+"."+f) {
			return true
		}
	}
	return false
}

func recordCore(t *testing.T, nc *nats.Conn, prefix string) *coreEvents {
	t.Helper()
	c := &coreEvents{}
	sub, err := nc.Subscribe(prefix+".>", func(m *nats.Msg) {
		if kept(prefix, m.Subject) {
			c.mu.Lock()
			c.evs = append(c.evs, rawEvent{m.Subject, string(m.Data)})
			c.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *coreEvents) all() []rawEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]rawEvent(nil), c.evs...)
}

// streamed reads every message of a node's events stream, in order, and
// checks that their ids (local versions) grow.
func streamed(t *testing.T, nc *nats.Conn, name string) []rawEvent {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []rawEvent
	var last uint64
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		v, err := strconv.ParseUint(m.Header.Get(eventstream.HeaderVersion), 10, 64)
		if err != nil || v <= last {
			t.Fatalf("message %d: id %q after %d", seq, m.Header.Get(eventstream.HeaderVersion), last)
		}
		last = v
		out = append(out, rawEvent{m.Subject, string(m.Data)})
	}
	return out
}

// caughtUp waits until node i's events stream holds the events of every
// change on its disk.
func caughtUp(t *testing.T, n *node.Node) {
	t.Helper()
	wait.Until(t, 30*time.Second, n.Name()+"'s events stream catches up", func() error {
		h := n.Events().Health()
		if !h.OK || !h.CaughtUp {
			return fmt.Errorf("%+v", h)
		}
		return nil
	})
}

// TestEventsStreamHoldsWhatCoreSubscribersGot: for every kind of event (a
// partner's resource created, updated and deleted, considers, planner, a
// request on the reviewer, its own request there, decisions accepted and
// rejected on the reviewer, a member and the applicant), each node's stream
// holds the same events, byte for byte and in the same order, as a core
// subscriber of its NATS got.
func TestEventsStreamHoldsWhatCoreSubscribersGot(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 4, Partners: map[int][]int{nA: {nB}, nB: {nA}}, Reviewer: testnet.At(nC)})
	net.WaitMembers(30 * time.Second)
	var cores []*coreEvents
	for i := range 4 {
		cores = append(cores, recordCore(t, net.NATS(i), "ferry"))
	}
	a := net.NATS(nA)
	b := net.IDs[nB].String()
	must(t, a, `{"action":"create","data_type":"vm","payload":{"id":"vm1","cpu":2,"note":"<b>&"}}`)
	must(t, a, `{"action":"update","data_type":"vm","payload":{"id":"vm1","cpu":4}}`)
	must(t, a, `{"action":"delete","data_type":"vm","payload":{"id":"vm1"}}`)
	must(t, a, fmt.Sprintf(`{"action":"considers","data_type":"plan","payload":{"peer_ids":[%q],"x":1}}`, b))
	must(t, a, fmt.Sprintf(`{"action":"planner","data_type":"plan","payload":{"peer_id":%q,"step":1}}`, b))

	accepted := submit(t, a, "insert", "tb1", 3, `{"unique_num":40123,"name":"name3"}`)
	decideAt(t, net, waitingAt(t, net.Node(nC), accepted.Origin).ID, "accept", nil)
	rejected := submit(t, a, "insert", "tb1", 4, `{"unique_num":1,"name":"no"}`)
	decideAt(t, net, waitingAt(t, net.Node(nC), rejected.Origin).ID, "reject", map[string]any{"note": "not now"})
	own := submit(t, net.NATS(nC), "insert", "tb2", 1, `{"name":"by the reviewer"}`)
	decideAt(t, net, waitingAt(t, net.Node(nC), own.Origin).ID, "edit", map[string]any{"set": map[string]string{"name": "edited"}})
	settled(t, net, accepted.Origin, "accepted", []int{nA, nB, nC, nD})
	settled(t, net, rejected.Origin, "rejected", []int{nA, nC})
	settled(t, net, own.Origin, "edited", []int{nA, nB, nC, nD})

	wantAt := map[int]int{nA: 3, nB: 7, nC: 6, nD: 2} // events each node must have got
	for i := range 4 {
		n := net.Node(i)
		var core []rawEvent
		wait.Until(t, 10*time.Second, n.Name()+"'s core events", func() error {
			if core = cores[i].all(); len(core) < wantAt[i] {
				return fmt.Errorf("%d of %d", len(core), wantAt[i])
			}
			return nil
		})
		caughtUp(t, n) // after the changes are on its disk
		got := streamed(t, net.NATS(i), node.DefaultEventsStream)
		if len(got) != len(core) {
			t.Fatalf("%s: the stream holds %d events, core subscribers got %d:\nstream %v\ncore %v", n.Name(), len(got), len(core), got, core)
		}
		for j := range got {
			if got[j] != core[j] {
				t.Fatalf("%s: event %d differs:\nstream %s %s\ncore   %s %s", n.Name(), j, got[j].Subject, got[j].Data, core[j].Subject, core[j].Data)
			}
		}
		t.Logf("%s: %d events, the same in the stream", n.Name(), len(got))
	}
}

// TestEventsStreamWithAnExternalServer: with nats.url the stream is opt-in:
// a node left at auto makes none on the external server; one with
// nats.events.enabled: true keeps its events there, in its own stream.
func TestEventsStreamWithAnExternalServer(t *testing.T) {
	ext, err := server.NewServer(&server.Options{ServerName: "ext", Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ext.Start()
	if !ext.ReadyForConnections(10 * time.Second) {
		t.Fatal("external nats-server did not start")
	}
	t.Cleanup(func() { ext.Shutdown(); ext.WaitForShutdown() })
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {1, 2}, 1: {0}, 2: {0}},
		Configure: func(i int, c *node.Config) {
			switch i {
			case 1: // auto: off with an external server
				c.NATS.URL, c.NATS.Prefix = ext.ClientURL(), "siteb"
			case 2:
				c.NATS.URL, c.NATS.Prefix = ext.ClientURL(), "sitec"
				c.NATS.Events.Enabled, c.NATS.Events.Stream = "true", "SITE_C"
			}
		}})
	if net.Node(1).Events() != nil || net.Node(2).Events() == nil {
		t.Fatalf("events stream on B %v, on C %v: want off, on", net.Node(1).Events() != nil, net.Node(2).Events() != nil)
	}
	nc, err := nats.Connect(ext.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	coreC := recordCore(t, nc, "sitec")
	must(t, net.NATS(0), `{"action":"create","data_type":"vm","payload":{"id":"vm1"}}`)
	wait.For(t, 20*time.Second, "C publishes the create", func() bool { return len(coreC.all()) == 1 })
	caughtUp(t, net.Node(2))
	got := streamed(t, nc, "SITE_C")
	if len(got) != 1 || got[0] != coreC.all()[0] || got[0].Subject != "sitec.resource.created.vm" || !strings.Contains(got[0].Data, `"id":"vm1"`) {
		t.Fatalf("SITE_C holds %v", got)
	}
	js, _ := jetstream.New(nc)
	names := js.StreamNames(context.Background())
	var all []string
	for n := range names.Name() {
		all = append(all, n)
	}
	if names.Err() != nil && !errors.Is(names.Err(), jetstream.ErrEndOfData) {
		t.Fatal(names.Err())
	}
	if len(all) != 1 || all[0] != "SITE_C" {
		t.Fatalf("streams on the external server: %v; want SITE_C only (B did not opt in)", all)
	}
	if h := net.Node(2).Health(); h.Events == nil || !h.Events.OK || !h.Ready {
		t.Fatalf("C's health: %+v", h)
	}
}

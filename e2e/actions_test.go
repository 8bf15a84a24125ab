package e2e

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// recorder keeps every event subject and body one node publishes.
type recorder struct {
	mu   sync.Mutex
	msgs []*nats.Msg
}

func record(t *testing.T, nc *nats.Conn) *recorder {
	r := &recorder{}
	for _, s := range []string{"ferry.resource.>", "ferry.considers.>", "ferry.planner.>"} {
		if _, err := nc.Subscribe(s, func(m *nats.Msg) { r.mu.Lock(); r.msgs = append(r.msgs, m); r.mu.Unlock() }); err != nil {
			t.Fatal(err)
		}
	}
	_ = nc.Flush()
	return r
}

func (r *recorder) subjects() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.msgs {
		out = append(out, m.Subject)
	}
	return out
}

func (r *recorder) body(subject string) map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if m.Subject == subject {
			var v map[string]any
			_ = json.Unmarshal(m.Data, &v)
			return v
		}
	}
	return nil
}

func ask(t *testing.T, nc *nats.Conn, body string) reply {
	t.Helper()
	var r reply
	testnet.Request(t, nc, "ferry.propagate", body, &r)
	return r
}

func must(t *testing.T, nc *nats.Conn, body string) reply {
	t.Helper()
	r := ask(t, nc, body)
	if !r.OK {
		t.Fatalf("%s: %+v", body, r.Error)
	}
	return r
}

func plannerStreams(h host.Host, p peer.ID) int {
	n := 0
	for _, c := range h.Network().ConnsToPeer(p) {
		for _, s := range c.GetStreams() {
			if s.Protocol() == protocols.Planner {
				n++
			}
		}
	}
	return n
}

// TestEveryActionReachesTheRightNodesOnly drives A through NATS only: B and C
// are A's partners (not each other's); each action's events must appear on
// the right nodes, with the right bodies, and nowhere else.
func TestEveryActionReachesTheRightNodesOnly(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {1, 2}, 1: {0}, 2: {0}}})
	net.WaitMembers(20 * time.Second)
	a, b, c := net.NATS(0), net.NATS(1), net.NATS(2)
	recs := []*recorder{record(t, a), record(t, b), record(t, c)}
	A, B, C := net.IDs[0].String(), net.IDs[1].String(), net.IDs[2].String()

	must(t, a, `{"action":"create","data_type":"vm","payload":{"id":"vm1","cpu":2}}`)
	must(t, a, `{"action":"update","data_type":"vm","payload":{"id":"vm1","cpu":4}}`)
	must(t, a, `{"action":"delete","data_type":"vm","payload":{"id":"vm1"}}`)
	must(t, a, fmt.Sprintf(`{"action":"considers","data_type":"exec","payload":{"peer_ids":[%q],"step":1}}`, B))
	must(t, a, fmt.Sprintf(`{"action":"planner","data_type":"plan","payload":{"peer_id":%q,"slot":7}}`, C))

	want := map[int][]string{
		0: nil,
		1: {"ferry.considers.exec", "ferry.resource.created.vm", "ferry.resource.deleted.vm", "ferry.resource.updated.vm"},
		2: {"ferry.planner.plan", "ferry.resource.created.vm", "ferry.resource.deleted.vm", "ferry.resource.updated.vm"},
	}
	for i := 1; i <= 2; i++ {
		testnet.WaitFor(t, 20*time.Second, fmt.Sprintf("node %d gets its %d events", i, len(want[i])), func() bool {
			return len(recs[i].subjects()) >= len(want[i])
		})
	}
	// The planner stream to C is open on both sides.
	testnet.WaitFor(t, 10*time.Second, "planner stream open", func() bool {
		return plannerStreams(net.Node(0).Host(), net.IDs[2]) == 1 && plannerStreams(net.Node(2).Host(), net.IDs[0]) == 1
	})
	// close_planner closes it on both sides; a later planner reopens it.
	must(t, a, fmt.Sprintf(`{"action":"close_planner","payload":{"peer_id":%q}}`, C))
	testnet.WaitFor(t, 10*time.Second, "planner stream closed on both sides", func() bool {
		return plannerStreams(net.Node(0).Host(), net.IDs[2]) == 0 && plannerStreams(net.Node(2).Host(), net.IDs[0]) == 0
	})
	if net.Node(0).Sender().StreamOpen(net.IDs[2], protocols.Planner) {
		t.Fatal("A still counts the planner stream open")
	}
	must(t, a, fmt.Sprintf(`{"action":"planner","data_type":"plan","payload":{"peer_id":%q,"slot":8}}`, C))
	want[2] = append(want[2], "ferry.planner.plan")
	testnet.WaitFor(t, 20*time.Second, "the reopened planner stream delivers", func() bool { return len(recs[2].subjects()) >= len(want[2]) })

	// Let anything stray arrive: A has nothing pending once all is acked.
	testnet.WaitFor(t, 20*time.Second, "A's deliveries acknowledged", func() bool { return pendingAt(net, 0) == 0 })
	for i, r := range recs {
		got := r.subjects()
		sort.Strings(got)
		w := append([]string(nil), want[i]...)
		sort.Strings(w)
		if strings.Join(got, ",") != strings.Join(w, ",") {
			t.Errorf("node %d published %v, want %v", i, got, w)
		}
	}
	created := recs[1].body("ferry.resource.created.vm")
	res, _ := created["resource"].(map[string]any)
	if created["origin"] != A || res["id"] != "vm1" || res["creator_id"] != A || res["cpu"] != 2.0 {
		t.Errorf("created body %v", created)
	}
	updated := recs[2].body("ferry.resource.updated.vm")
	if res, _ := updated["resource"].(map[string]any); res["cpu"] != 4.0 {
		t.Errorf("updated body %v", updated)
	}
	cons := recs[1].body("ferry.considers.exec")
	if p, _ := cons["payload"].(map[string]any); cons["origin"] != A || p["step"] != 1.0 {
		t.Errorf("considers body %v", cons)
	}
	plan := recs[2].body("ferry.planner.plan")
	if p, _ := plan["payload"].(map[string]any); plan["origin"] != A || p["slot"] != 7.0 {
		t.Errorf("planner body %v", plan)
	}
	// B's and C's stores hold vm1 as deleted, with A as creator.
	for i := 1; i <= 2; i++ {
		rs, err := net.Node(i).Store().Resources("vm")
		if err != nil || len(rs) != 1 || !rs[0].Deleted || peer.ID(rs[0].Creator) != net.IDs[0] {
			t.Errorf("node %d resources: %v %v", i, rs, err)
		}
	}
}

// TestBadPropagateInput: every bad request gets the right code and writes nothing.
func TestBadPropagateInput(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {1}, 1: {0}}})
	net.WaitMembers(20 * time.Second)
	a := net.NATS(0)
	must(t, a, `{"action":"create","data_type":"vm","payload":{"id":"exists"}}`)
	st := net.Node(0).Store()
	before, _ := st.Counter(store.CtrVersion)
	big := strings.Repeat("x", 1<<20)
	C := net.IDs[2].String() // a member, not a partner
	cases := []struct{ name, body, code string }{
		{"unknown action", `{"action":"explode","data_type":"vm","payload":{"id":"1"}}`, "unknown_action"},
		{"missing action", `{"data_type":"vm","payload":{"id":"1"}}`, "unknown_action"},
		{"missing data_type", `{"action":"create","payload":{"id":"1"}}`, "bad_request"},
		{"data_type with a dot", `{"action":"create","data_type":"a.b","payload":{"id":"1"}}`, "bad_request"},
		{"missing id", `{"action":"create","data_type":"vm","payload":{"cpu":1}}`, "bad_request"},
		{"payload not JSON object", `{"action":"create","data_type":"vm","payload":"text"}`, "bad_request"},
		{"body not JSON", `this is not json`, "bad_request"},
		{"payload over the limit", `{"action":"create","data_type":"vm","payload":{"id":"big","x":"` + big + `"}}`, "too_large"},
		{"creator of another node", `{"action":"create","data_type":"vm","payload":{"id":"2","creator_id":"` + C + `"}}`, "not_owner"},
		{"create of an existing id", `{"action":"create","data_type":"vm","payload":{"id":"exists"}}`, "conflict"},
		{"update of a missing id", `{"action":"update","data_type":"vm","payload":{"id":"nope"}}`, "not_found"},
		{"considers without peer_ids", `{"action":"considers","data_type":"vm","payload":{"x":1}}`, "bad_request"},
		{"considers with a bad peer id", `{"action":"considers","data_type":"vm","payload":{"peer_ids":["nope"]}}`, "bad_request"},
		{"considers to a non-partner", `{"action":"considers","data_type":"vm","payload":{"peer_ids":["` + C + `"]}}`, "forbidden"},
		{"planner to a non-partner", `{"action":"planner","data_type":"vm","payload":{"peer_id":"` + C + `"}}`, "forbidden"},
		{"planner without peer_id", `{"action":"planner","data_type":"vm","payload":{}}`, "bad_request"},
	}
	w := &words{t: t}
	for _, tc := range cases {
		r := ask(t, a, tc.body)
		if r.OK || r.Error == nil || r.Error.Code != tc.code {
			t.Errorf("%s: got %+v, want code %s", tc.name, r.Error, tc.code)
			continue
		}
		w.check(tc.name, r.Error.Message, tc.body)
	}
	after, _ := st.Counter(store.CtrVersion)
	if after != before {
		t.Fatalf("bad input wrote: version %d -> %d", before, after)
	}
	// A plain publish (no reply subject) of bad input is logged, not fatal.
	if err := a.Publish("ferry.propagate", []byte(`{"action":"explode"}`)); err != nil {
		t.Fatal(err)
	}
	must(t, a, `{"action":"create","data_type":"vm","payload":{"id":"still-works"}}`)
}

// TestClosedPlannerSurvivesRestart: close_planner holds planner deliveries
// to that peer, across a restart of the sender, until a later planner
// reopens the stream.
func TestClosedPlannerSurvivesRestart(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Partners: map[int][]int{0: {1}, 1: {0}}})
	net.WaitMembers(20 * time.Second)
	a, b := net.NATS(0), net.NATS(1)
	rec := record(t, b)
	B := net.IDs[1].String()
	must(t, a, fmt.Sprintf(`{"action":"planner","data_type":"plan","payload":{"peer_id":%q,"n":1}}`, B))
	testnet.WaitFor(t, 20*time.Second, "the first planner update", func() bool { return len(rec.subjects()) == 1 })
	must(t, a, fmt.Sprintf(`{"action":"close_planner","payload":{"peer_id":%q}}`, B))
	net.Restart(0)
	testnet.WaitFor(t, 10*time.Second, "the app reconnects to A", a.IsConnected)
	// A planner update to a closed stream reopens it (SPEC: a later planner reopens).
	// Before that, deliveries already pending stay held: check the hold survives
	// the restart by asking the sender whether it would send.
	if !net.Node(0).Sender().Holds(net.IDs[1], stream.LanePlanner) {
		t.Fatal("the closed planner stream was forgotten across the restart")
	}
	must(t, a, fmt.Sprintf(`{"action":"planner","data_type":"plan","payload":{"peer_id":%q,"n":2}}`, B))
	testnet.WaitFor(t, 20*time.Second, "the planner update after reopening", func() bool { return len(rec.subjects()) == 2 })
}

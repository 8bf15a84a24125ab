package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/internal/testnet"
)

// Apps ask their node how far a change got (ferry.delivery.status and
// .wait) and hear the acked events, over NATS, on real nodes.

type deliveryReceiver struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	State     string `json:"state"`
	Attempts  int    `json:"attempts"`
	LastError string `json:"last_error"`
}

type deliveryReply struct {
	OK        bool               `json:"ok"`
	Version   uint64             `json:"version"`
	Complete  *bool              `json:"complete"`
	Receivers []deliveryReceiver `json:"receivers"`
	Error     *apiErr            `json:"error"`
}

type ackedEvent struct {
	Receiver string `json:"receiver"`
	Name     string `json:"name"`
	Lane     string `json:"lane"`
	Through  uint64 `json:"through"`
}

func askDelivery(t *testing.T, nc *nats.Conn, subject, body string, timeout time.Duration) deliveryReply {
	t.Helper()
	m, err := nc.Request(subject, []byte(body), timeout)
	if err != nil {
		t.Fatalf("%s %s: %v", subject, body, err)
	}
	var r deliveryReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatalf("%s: %v: %s", subject, err, m.Data)
	}
	return r
}

func statesOf(rs []deliveryReceiver) string {
	var parts []string
	for _, r := range rs {
		parts = append(parts, r.Name+"="+r.State)
	}
	return strings.Join(parts, " ")
}

// gauge reads a gauge of a node's registry.
func gauge(t *testing.T, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

func TestDeliveryStatusAndWait(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {2, 1}, 1: {0}, 2: {0}}})
	net.WaitMembers(30 * time.Second) // names are known (else a name is the end of the peer id)
	a := net.NATS(0)
	b, c := net.IDs[1].String(), net.IDs[2].String()
	events, err := a.SubscribeSync("ferry.delivery.acked." + b)
	if err != nil {
		t.Fatal(err)
	}
	_ = a.Flush()

	// The reply names the receivers, in the order of their names.
	m, err := a.Request("ferry.propagate", []byte(`{"action":"create","data_type":"vm","payload":{"id":"vm1"}}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var created struct {
		OK        bool               `json:"ok"`
		Version   uint64             `json:"version"`
		Receivers []deliveryReceiver `json:"receivers"`
	}
	if err := json.Unmarshal(m.Data, &created); err != nil || !created.OK || len(created.Receivers) != 2 ||
		created.Receivers[0] != (deliveryReceiver{ID: b, Name: "B"}) || created.Receivers[1] != (deliveryReceiver{ID: c, Name: "C"}) {
		t.Fatalf("propagate reply %s", m.Data)
	}
	v := created.Version

	r := askDelivery(t, a, "ferry.delivery.wait", fmt.Sprintf(`{"version":%d,"timeout_ms":20000}`, v), 25*time.Second)
	if !r.OK || r.Complete == nil || !*r.Complete || statesOf(r.Receivers) != "B=acked C=acked" || r.Version != v {
		t.Fatalf("wait %+v", r)
	}
	r = askDelivery(t, a, "ferry.delivery.status", fmt.Sprintf(`{"version":%d}`, v), 5*time.Second)
	if !r.OK || r.Complete != nil || statesOf(r.Receivers) != "B=acked C=acked" || r.Receivers[0].ID != b {
		t.Fatalf("status %+v", r)
	}
	// B's acked event carries its floor: through the change.
	msg, err := events.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ev ackedEvent
	if err := json.Unmarshal(msg.Data, &ev); err != nil || ev.Receiver != b || ev.Name != "B" || ev.Lane != "resource" || ev.Through < v {
		t.Fatalf("acked event %s (want through >= %d)", msg.Data, v)
	}

	// Bad requests name what is wrong; a version this node never answered
	// is not_found.
	for body, want := range map[string][2]string{
		``:                                   {"bad_request", "the body is empty; it must be a JSON object"},
		`{"version":"x"}`:                    {"bad_request", `version: "x" is not a version`},
		`{"version":1,"timeout_ms":-1}`:      {"bad_request", "timeout_ms: -1 is negative"},
		`{"version":1,"receivers":["nope"]}`: {"bad_request", `receivers[0]: "nope" is not a peer id`},
		`{"version":1,"extra":true}`:         {"bad_request", "unknown field `extra`"},
		`{"version":123}`:                    {"not_found", "version 123 is not a change this node's ferry.propagate answered"},
		fmt.Sprintf(`{"version":%d,"receivers":[%q]}`, v, net.IDs[0]): {"bad_request", "receivers: " + net.IDs[0].String() + " is not a receiver"},
	} {
		r := askDelivery(t, a, "ferry.delivery.wait", body, 5*time.Second)
		if r.OK || r.Error == nil || r.Error.Code != want[0] || !strings.Contains(r.Error.Message, want[1]) {
			t.Errorf("wait %s: %+v %+v, want %s with %q", body, r, r.Error, want[0], want[1])
		}
	}
	if r := askDelivery(t, a, "ferry.delivery.status", `{"version":5}`, 5*time.Second); r.OK || r.Error.Code != "not_found" {
		t.Errorf("status of an unknown version: %+v", r)
	}
	if r := askDelivery(t, a, "ferry.delivery.status", fmt.Sprintf(`{"version":%d,"timeout_ms":1}`, v), 5*time.Second); r.OK ||
		r.Error.Code != "bad_request" || !strings.Contains(r.Error.Message, "unknown field `timeout_ms`") {
		t.Errorf("status with a wait's field: %+v", r)
	}

	// C away: a wait for C answers at its timeout, not complete; one for
	// B alone completes; stopping A answers the open wait unavailable.
	net.Stop(2)
	m, err = a.Request("ferry.propagate", []byte(`{"action":"update","data_type":"vm","payload":{"id":"vm1","n":2}}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(m.Data, &created)
	v2 := created.Version
	r = askDelivery(t, a, "ferry.delivery.wait", fmt.Sprintf(`{"version":%d,"timeout_ms":300}`, v2), 10*time.Second)
	if !r.OK || *r.Complete || statesOf(r.Receivers) != "B=acked C=pending" && statesOf(r.Receivers) != "B=pending C=pending" {
		t.Fatalf("wait with C away %+v", r)
	}
	r = askDelivery(t, a, "ferry.delivery.wait", fmt.Sprintf(`{"version":%d,"receivers":[%q],"timeout_ms":20000}`, v2, b), 25*time.Second)
	if !r.OK || !*r.Complete || statesOf(r.Receivers) != "B=acked" {
		t.Fatalf("wait for B alone %+v", r)
	}
	reg := net.Node(0).Registry()
	open := a.NewRespInbox()
	replies, err := a.SubscribeSync(open)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.PublishRequest("ferry.delivery.wait", open, fmt.Appendf(nil, `{"version":%d,"timeout_ms":60000}`, v2)); err != nil {
		t.Fatal(err)
	}
	testnet.WaitFor(t, 10*time.Second, "A holds the wait", func() bool { return gauge(t, reg, "ferry_delivery_waiters") == 1 })
	var stopped sync.WaitGroup
	stopped.Add(1)
	go func() { defer stopped.Done(); net.Stop(0) }()
	msg, err = replies.NextMsg(10 * time.Second)
	stopped.Wait()
	if err != nil {
		t.Fatalf("no answer to the open wait when A stopped: %v", err)
	}
	var closed deliveryReply
	if err := json.Unmarshal(msg.Data, &closed); err != nil || closed.OK || closed.Error.Code != "unavailable" {
		t.Fatalf("open wait at close: %s", msg.Data)
	}
}

// Many changes acknowledged quickly: B's acked events come at most one per
// 100 ms (ferry.delivery.acked), each with a newer floor, the last with
// the last change.
func TestDeliveryAckedEventsCoalesce(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Partners: map[int][]int{0: {1}, 1: {0}}})
	a := net.NATS(0)
	b := net.IDs[1].String()
	var mu sync.Mutex
	var throughs []uint64
	sub, err := a.Subscribe("ferry.delivery.acked.>", func(m *nats.Msg) {
		var ev ackedEvent
		_ = json.Unmarshal(m.Data, &ev)
		mu.Lock()
		throughs = append(throughs, ev.Through)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = a.Flush()
	start := time.Now()
	replies := pipeline(t, a, 0, 2000, 64, "create")
	last := uint64(0)
	for _, r := range replies {
		if !r.OK {
			t.Fatalf("create: %+v", r.Error)
		}
		last = max(last, r.Version)
	}
	testnet.WaitFor(t, 30*time.Second, "the event with the last change", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(throughs) > 0 && throughs[len(throughs)-1] == last
	})
	elapsed := time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	bound := int(elapsed/(100*time.Millisecond)) + 1
	t.Logf("2000 creates acknowledged by %s in %v: %d acked events (at most %d)", b[len(b)-6:], elapsed.Round(time.Millisecond), len(throughs), bound)
	if len(throughs) > bound {
		t.Fatalf("%d acked events in %v", len(throughs), elapsed)
	}
	for i := 1; i < len(throughs); i++ {
		if throughs[i] <= throughs[i-1] {
			t.Fatalf("event %d: through %d after %d", i, throughs[i], throughs[i-1])
		}
	}
}

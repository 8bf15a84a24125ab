package e2e

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/testnet"
)

type reply struct {
	OK    bool `json:"ok"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	ID      string `json:"id"`
	Version uint64 `json:"version"`
}

func TestPropagateCreateReachesPartners(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {1, 2}, 1: {0}, 2: {0}}})
	a, b, c := net.NATS(0), net.NATS(1), net.NATS(2)
	subB, _ := b.SubscribeSync("ferry.resource.>")
	subC, _ := c.SubscribeSync("ferry.resource.>")
	_ = b.Flush()
	_ = c.Flush()
	var r reply
	testnet.Request(t, a, "ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"vm1","cpu":2}}`, &r)
	if !r.OK {
		t.Fatalf("propagate: %+v", r.Error)
	}
	for _, sub := range []*nats.Subscription{subB, subC} {
		m, err := sub.NextMsg(20 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != "ferry.resource.created.vm" {
			t.Fatalf("subject %s", m.Subject)
		}
		var ev struct {
			Origin   string
			Version  uint64
			Resource map[string]any
		}
		_ = json.Unmarshal(m.Data, &ev)
		if ev.Origin != net.IDs[0].String() || ev.Resource["id"] != "vm1" || ev.Resource["creator_id"] != net.IDs[0].String() {
			t.Fatalf("event %s", m.Data)
		}
	}
}

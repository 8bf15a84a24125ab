package e2e

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

func TestReviewInsertAcceptedQuick(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 4, Reviewer: testnet.At(2), Configure: func(i int, c *node.Config) {
		c.Review.NATSDecide = true
	}})
	net.WaitMembers(20 * time.Second)
	a, cn := net.NATS(0), net.NATS(2)
	reqSub, _ := cn.SubscribeSync("ferry.review.requested")
	_ = cn.Flush()
	var r struct {
		OK      bool
		Error   any
		Request map[string]any
	}
	testnet.Request(t, a, "ferry.review.submit", `{"type":"insert","table_name":"tb1","table_id":3,"data":{"unique_num":40123,"name":"name3"},"description":"adding"}`, &r)
	if !r.OK {
		t.Fatalf("submit: %v", r.Error)
	}
	m, err := reqSub.NextMsg(20 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var row struct{ ID uint64 }
	_ = json.Unmarshal(m.Data, &row)
	testnet.Request(t, cn, "ferry.review.decide", `{"request_id":`+itoa(row.ID)+`,"decision":"accept"}`, &r)
	if !r.OK {
		t.Fatalf("decide: %v", r.Error)
	}
	for i := range 4 {
		testnet.WaitFor(t, 20*time.Second, "row 3 in tb1 on node "+net.Config(i).Name, func() bool {
			b, err := net.Node(i).Store().Row("tb1", 3)
			return err == nil && string(b) == `{"id":3,"name":"name3","unique_num":40123}`
		})
	}
}

func itoa(v uint64) string { b, _ := json.Marshal(v); return string(b) }

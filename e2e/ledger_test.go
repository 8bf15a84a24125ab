package e2e

import (
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/store/storepb"
)

// TestAckedDeliveriesArePruned: the ledger keeps pending rows and drops
// acknowledged ones after the retention window.
func TestAckedDeliveriesArePruned(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {1, 2}, 1: {0}, 2: {0}}})
	net.WaitMembers(20 * time.Second)
	a := net.NATS(0)
	net.Stop(2) // C's deliveries stay pending
	for _, r := range pipeline(t, a, 0, 50, 16, "create") {
		if !r.OK {
			t.Fatal(r.Error)
		}
	}
	count := func() (sended, pending int) {
		_ = net.Node(0).Store().Deliveries(0, func(d *storepb.Delivery) bool {
			if d.State == storepb.Delivery_STATE_PENDING {
				pending++
			} else {
				sended++
			}
			return true
		})
		return
	}
	testnet.WaitFor(t, 20*time.Second, "B's 50 deliveries acknowledged", func() bool { s, _ := count(); return s == 50 })
	// A cutoff before the acks prunes nothing.
	if n, err := net.Node(0).Sender().Prune(time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("prune with an old cutoff removed %d rows (%v)", n, err)
	}
	n, err := net.Node(0).Sender().Prune(time.Now().Add(time.Second))
	if err != nil || n != 50 {
		t.Fatalf("pruned %d rows (%v), want 50", n, err)
	}
	if s, p := count(); s != 0 || p != 50 {
		t.Fatalf("after pruning: %d sended, %d pending; want 0 and 50", s, p)
	}
	if n, _ := net.Node(0).Store().PendingCount(); n != 50 {
		t.Fatalf("the pending index counts %d", n)
	}
	if st := net.Node(0).Status(); st.PendingAcks != 50 {
		t.Fatalf("status shows %d pending acks", st.PendingAcks)
	}
	all, _ := net.Node(0).Acks(node.AckQuery{Limit: node.MaxAckLimit})
	newest, err := net.Node(0).Acks(node.AckQuery{Limit: 3})
	if err != nil || len(newest.Rows) != 3 || newest.Rows[0].Version <= newest.Rows[1].Version || newest.Rows[0].ID != all.Rows[0].ID || newest.Next == "" {
		t.Fatalf("the newest three acks: %+v %v", newest, err)
	}
}

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// TestDecisionsSpreadByGossip: with the delivery stream held back from
// carrying decisions (a fallback of an hour), an accepted request still
// reaches every member, through the gossip topic, and the reviewer's
// acknowledgement rows all turn sended, from the members' applied reports.
// The members count what they applied from the news itself (not from a
// pull after a head announcement).
func TestDecisionsSpreadByGossip(t *testing.T) {
	so := testnet.FastSender
	so.DecisionFallback = time.Hour
	net := testnet.Start(t, testnet.Options{N: 4, Reviewer: testnet.At(nC), Node: node.Options{Sender: so}})
	net.WaitMembers(30 * time.Second)
	all := []int{nA, nB, nC, nD}
	for k := range 3 {
		table := fmt.Sprintf("gossip%d", k)
		req := submit(t, net.NATS(nA), "insert", table, 5, `{"unique_num":7,"name":"spread"}`)
		decideAt(t, net, waitingAt(t, net.Node(nC), req.Origin).ID, "accept", nil)
		settled(t, net, req.Origin, "accepted", all)
		if got := fmt.Sprint(ackRows(t, net, nC, req.Origin)); got != "[A:sended B:sended D:sended]" {
			t.Fatalf("the reviewer's acks %s", got)
		}
		for _, i := range all {
			if got := rowsOf(t, net.Node(i), table); got != `[{"id":5,"name":"spread","unique_num":7}]` {
				t.Fatalf("node %d %s = %s", i, table, got)
			}
		}
	}
	for _, i := range []int{nA, nB, nD} {
		if got := metric(t, net.Node(i), "ferry_spread_decisions_total", map[string]string{"outcome": "applied"}); got < 3 {
			t.Errorf("node %d applied %v decisions from gossip news, want 3", i, got)
		}
	}
}

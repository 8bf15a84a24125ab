package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// With the group's first reviewer (the one members address first) down for
// good, a member that was away and a new member still get every decision,
// from the other reviewers of the group: their decision streams, catch-up
// and (for the new member) a start from nothing; every node holds the same
// decisions under the same sequences.
func TestMembersCatchUpWithTheFirstReviewerDown(t *testing.T) {
	// 0, 1, 2: the review group (0 is every member's first reviewer); 3, 4:
	// members; 5: a member that joins later.
	net := testnet.Start(t, testnet.Options{N: 6, Reviewers: []int{0, 1, 2}, Later: []int{5},
		Node: node.Options{ReviewGroupTiming: groupTiming}})
	net.WaitMembers(30 * time.Second)
	submit := func(i int) string {
		t.Helper()
		var out struct {
			OK      bool
			Request struct{ Origin string }
		}
		testnet.Request(t, net.NATS(3), "ferry.review.submit",
			fmt.Sprintf(`{"type":"insert","table_name":"places","table_id":%d,"data":{"name":"p%d"}}`, i, i), &out)
		if !out.OK {
			t.Fatalf("submit %d: %+v", i, out)
		}
		return out.Request.Origin
	}
	origins := []string{submit(1)}
	acceptAt(t, net, leaderOf(t, net, []int{0, 1, 2}), origins[0])
	sameEverywhere(t, net, []int{0, 1, 2, 3, 4}, origins, "places")

	// The first reviewer goes for good; member 4 goes away.
	net.Stop(0)
	net.Stop(4)
	for i := 2; i <= 5; i++ {
		o := submit(i)
		origins = append(origins, o)
		acceptAt(t, net, leaderOf(t, net, []int{1, 2}), o)
	}
	sameEverywhere(t, net, []int{1, 2, 3}, origins, "places")

	// Member 4 comes back behind; member 5 joins (through reviewer 1: the
	// first is down). Both catch up from the reviewers that are up.
	net.SetBootstrap(5, 1)
	net.Restart(4)
	net.Restart(5)
	sameEverywhere(t, net, []int{1, 2, 3, 4, 5}, origins, "places")
	for _, i := range []int{4, 5} {
		if a := net.Node(i).Review().Applied(); a != uint64(len(origins)) {
			t.Fatalf("member %d applied through sequence %d, want %d", i, a, len(origins))
		}
	}
}

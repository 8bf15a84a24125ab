package node_test

import (
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
)

// TestLastSeenIsWhenThePeerWentAway (issue 21, point 4): a peer's last
// seen time is when its connection closed, not its last hello (a peer down
// 45 s showed "2m ago", the hello of its connect).
func TestLastSeenIsWhenThePeerWentAway(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Names: []string{"A", "B"}, Partners: map[int][]int{0: {1}, 1: {0}}})
	net.WaitMembers(20 * time.Second)
	hello := time.Now().Unix()
	// Last seen is kept to the second: let one pass after the hello, so
	// that a last seen from the hello and one from the close differ.
	testnet.WaitFor(t, 5*time.Second, "the next second", func() bool { return time.Now().Unix() > hello+1 })
	gone := time.Now().Truncate(time.Second)
	net.Stop(1)
	var last time.Time
	testnet.WaitFor(t, 10*time.Second, "A sees B disconnected, last seen when it went away", func() bool {
		for _, p := range net.Node(0).PeerInfos() {
			if p.Name == "B" {
				last = p.LastSeen
				return !p.Connected && !p.LastSeen.Before(gone)
			}
		}
		return false
	})
	if time.Since(last) > time.Minute {
		t.Fatalf("B last seen %v", last)
	}
}

// TestNewNodeWritesWhilePartnerIsAway: a node whose partner never
// acknowledged anything of it (the partner is not started yet) takes its
// own writes at once; only a node a partner may hold changes of waits for
// the partner's word (faults/restore_test.go).
func TestNewNodeWritesWhilePartnerIsAway(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Names: []string{"A", "B"}, Partners: map[int][]int{0: {1}, 1: {0}}, Later: []int{1}})
	if e := natsReq(t, net.NATS(0), msg("ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"vm1"}}`)); !e.OK {
		t.Fatalf("create on a new node whose partner is away: %+v", e.Error)
	}
}

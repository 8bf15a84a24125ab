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
	testnet.WaitFor(t, 10*time.Second, "A sees B disconnected", func() bool {
		for _, p := range net.Node(0).PeerInfos() {
			if p.Name == "B" {
				return !p.Connected
			}
		}
		return false
	})
	for _, p := range net.Node(0).PeerInfos() {
		if p.Name == "B" && p.LastSeen.Before(gone) {
			t.Fatalf("B last seen %v, before it went away at %v (its hello was at %v)", p.LastSeen, gone, time.Unix(hello, 0))
		}
	}
}

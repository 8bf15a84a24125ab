package e2e

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/reviewgroup"
)

// TestReviewGroupFarBehindCatchesUpFromASnapshot: a reviewer stopped while
// the others decide, and compact their logs past what it applied (a
// snapshot every 4 entries, 2 kept), comes back and is sent the leader's
// snapshot: it restores the ledger from it (its snapshot store holds the
// one it received; it takes none of its own), then holds every decision
// under the same sequence as the others and the members, and decides.
func TestReviewGroupFarBehindCatchesUpFromASnapshot(t *testing.T) {
	var net *testnet.Net
	tune := func(c *reviewgroup.Config) {
		// Once restarted, the one that fell behind keeps raft's defaults,
		// so any snapshot in its store is one the leader sent; before, it
		// applies too few entries to take one (checked below).
		if net != nil && c.Self == net.IDs[2] {
			return
		}
		c.SnapshotThreshold, c.TrailingLogs, c.SnapshotInterval = 4, 2, 100*time.Millisecond
	}
	net = testnet.Start(t, testnet.Options{N: 5, Reviewers: []int{0, 1, 2},
		Node: node.Options{ReviewGroupTiming: groupTiming, ReviewGroupTune: tune}})
	net.WaitMembers(30 * time.Second)
	leaderOf(t, net, []int{0, 1, 2})
	net.Stop(2)
	leader := leaderOf(t, net, []int{0, 1})

	var origins []string
	for i := range 12 {
		row := submit(t, net.NATS(3+i%2), "insert", "tb", i+1, fmt.Sprintf(`{"n":%d}`, i+1))
		origins = append(origins, row.Origin)
		acceptAt(t, net, []int{0, 1}[i%2], row.Origin)
	}
	// The leader's log no longer starts where the stopped reviewer stands.
	snaps := func(i int) int {
		m, _ := filepath.Glob(filepath.Join(net.Homes[i].DataPath(), node.RaftDir, "snapshots", "*", "meta.json"))
		return len(m)
	}
	testnet.WaitFor(t, 30*time.Second, "the leader's snapshot", func() bool { return snaps(leader) > 0 })
	if n := snaps(2); n != 0 {
		t.Fatalf("the stopped reviewer holds %d snapshots already", n)
	}
	net.Restart(2)
	sameEverywhere(t, net, []int{0, 1, 2, 3, 4}, origins, "tb")
	if n := snaps(2); n == 0 {
		t.Fatal("the reviewer that was behind caught up without a snapshot: the test did not put it behind the leader's log")
	}
	// It decides with the others.
	row := submit(t, net.NATS(3), "insert", "tb", 100, `{"n":100}`)
	acceptAt(t, net, 2, row.Origin)
	seqs := sameEverywhere(t, net, []int{0, 1, 2, 3, 4}, append(origins, row.Origin), "tb")
	if seqs[row.Origin] != uint64(len(origins)+1) {
		t.Fatalf("the decision at the reviewer that was behind took sequence %d, want %d", seqs[row.Origin], len(origins)+1)
	}
}

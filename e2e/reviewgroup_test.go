package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/reviewgroup"
)

// groupTiming is a review group's raft timing for tests: a lost leader is
// replaced in about a second.
var groupTiming = reviewgroup.Timing{HeartbeatTimeout: 300 * time.Millisecond, ElectionTimeout: 300 * time.Millisecond,
	LeaderLeaseTimeout: 150 * time.Millisecond, CommitTimeout: 20 * time.Millisecond}

// groupNet starts three reviewers (0, 1, 2: the review group) and two
// members (3, 4), and waits for the group's leader.
func groupNet(t *testing.T) *testnet.Net {
	net := testnet.Start(t, testnet.Options{N: 5, Reviewers: []int{0, 1, 2}, Node: node.Options{ReviewGroupTiming: groupTiming}})
	net.WaitMembers(30 * time.Second)
	leaderOf(t, net, []int{0, 1, 2})
	return net
}

// leaderOf waits until the running reviewers in rs agree on a leader among
// them, and returns its index.
func leaderOf(t *testing.T, net *testnet.Net, rs []int) int {
	t.Helper()
	at := -1
	testnet.WaitFor(t, 30*time.Second, "a leader of the review group", func() bool {
		var l peer.ID
		for _, i := range rs {
			p, ok := net.Node(i).ReviewGroup().Leader()
			if !ok || (l != "" && p != l) {
				return false
			}
			l = p
		}
		at = slices.Index(net.IDs, l)
		return slices.Contains(rs, at)
	})
	return at
}

// acceptAt has node i's operator accept the request of origin (by i's own
// request id) through the admin API.
func acceptAt(t *testing.T, net *testnet.Net, i int, origin string) {
	t.Helper()
	var id uint64
	testnet.WaitFor(t, 30*time.Second, fmt.Sprintf("%s waiting at node %d", origin, i), func() bool {
		r, err := net.Node(i).Review().RequestByOrigin(origin)
		id = r.ID
		return err == nil && r.Status == "waiting"
	})
	status, out := admin(t, net, i, "POST", fmt.Sprintf("/api/v1/requests/%d/accept", id), nil)
	if status != 200 {
		t.Fatalf("accept %s at node %d: %d %v", origin, i, status, out)
	}
}

// sameEverywhere waits until every node in at holds every origin accepted
// under the same sequence, and the same rows of table; it returns the
// sequences by origin.
func sameEverywhere(t *testing.T, net *testnet.Net, at []int, origins []string, table string) map[string]uint64 {
	t.Helper()
	seqs := map[string]uint64{}
	testnet.WaitFor(t, 60*time.Second, "every decision on every node, in one sequence", func() bool {
		for _, o := range origins {
			seqs[o] = 0
			by := ""
			for _, i := range at {
				r, err := net.Node(i).Review().RequestByOrigin(o)
				if err != nil || r.Status != "accepted" || r.Sequence == 0 || (seqs[o] != 0 && r.Sequence != seqs[o]) || (by != "" && r.Reviewer != by) {
					return false
				}
				seqs[o], by = r.Sequence, r.Reviewer
			}
		}
		want := rowsOf(t, net.Node(at[0]), table)
		for _, i := range at[1:] {
			if rowsOf(t, net.Node(i), table) != want {
				return false
			}
		}
		return true
	})
	var all []uint64
	for _, s := range seqs {
		all = append(all, s)
	}
	slices.Sort(all)
	if len(slices.Compact(all)) != len(origins) {
		t.Fatalf("two decisions share a sequence: %v", seqs)
	}
	return seqs
}

// Decisions taken at each reviewer of a group (the leader, and followers
// whose acts are forwarded to it) reach every member in one sequence; after
// the leader's node closes, a new leader decides; the closed reviewer,
// restarted, catches up from the group's log.
func TestReviewGroupDecidesAtAnyReviewer(t *testing.T) {
	net := groupNet(t)
	leader := leaderOf(t, net, []int{0, 1, 2})
	// Each reviewer's status shows the group: the leader and every
	// reviewer's own state; a member's shows none.
	for _, i := range []int{0, 1, 2} {
		gs := net.Node(i).Status().ReviewGroup
		if gs == nil || gs.Leader != net.IDs[leader].String() || len(gs.Servers) != 3 {
			t.Fatalf("node %d's status shows the group %+v, want leader %s and 3 reviewers", i, gs, net.IDs[leader])
		}
		for _, sv := range gs.Servers {
			if sv.Status == nil || sv.Error != "" || sv.Leader != (sv.ID == net.IDs[leader]) || sv.Self != (sv.ID == net.IDs[i]) {
				t.Fatalf("node %d's status of reviewer %s: %+v", i, sv.Name, sv)
			}
		}
	}
	if gs := net.Node(3).Status().ReviewGroup; gs != nil {
		t.Fatalf("a member's status shows a review group: %+v", gs)
	}
	var followers []int
	for _, i := range []int{0, 1, 2} {
		if i != leader {
			followers = append(followers, i)
		}
	}
	// Member 3 hears of each decision once, whichever reviewers' copies
	// reach it.
	decided := map[string]int{}
	var mu sync.Mutex
	sub, err := net.NATS(3).Subscribe("ferry.review.decided.>", func(m *nats.Msg) {
		var row struct{ Origin string }
		_ = json.Unmarshal(m.Data, &row)
		mu.Lock()
		decided[row.Origin]++
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// Requests from both members; each decided at another reviewer.
	var origins []string
	for k, at := range []int{leader, followers[0], followers[1]} {
		r := submit(t, net.NATS(3+k%2), "insert", "places", k+1, fmt.Sprintf(`{"name":"p%d"}`, k+1))
		acceptAt(t, net, at, r.Origin)
		origins = append(origins, r.Origin)
	}
	// A request submitted at a reviewer node reaches the others through
	// the group's log (a reviewer does not send it to them).
	own := submit(t, net.NATS(followers[0]), "insert", "places", 10, `{"name":"own"}`)
	acceptAt(t, net, leader, own.Origin)
	origins = append(origins, own.Origin)
	all := []int{0, 1, 2, 3, 4}
	seqs := sameEverywhere(t, net, all, origins, "places")
	t.Logf("sequences: %v", seqs)
	// Every reviewer's copy delivered (acked by every member), then the
	// count.
	testnet.WaitFor(t, 30*time.Second, "every reviewer's copies acknowledged", func() bool {
		for _, i := range []int{0, 1, 2} {
			for _, o := range origins {
				r, err := net.Node(i).Review().RequestByOrigin(o)
				if err != nil {
					return false
				}
				acks, err := net.Node(i).Acks(node.AckQuery{RequestID: r.ID, State: node.AckPending})
				if err != nil || len(acks.Rows) > 0 {
					return false
				}
			}
		}
		return true
	})
	if err := net.NATS(3).Flush(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for _, o := range origins {
		if decided[o] != 1 {
			t.Errorf("member 3 published %s decided %d times, want once", o, decided[o])
		}
	}
	mu.Unlock()

	// The leader's node closes: the two others elect a new leader, which
	// (and the follower) decides.
	net.Stop(leader)
	closed := time.Now()
	next := leaderOf(t, net, followers)
	r := submit(t, net.NATS(3), "insert", "places", 4, `{"name":"p4"}`)
	acceptAt(t, net, next, r.Origin)
	origins = append(origins, r.Origin)
	running := []int{followers[0], followers[1], 3, 4}
	seqs = sameEverywhere(t, net, running, origins, "places")
	t.Logf("after the leader's node closed: a new leader decided in %v (sequence %d)", time.Since(closed).Round(time.Millisecond), seqs[r.Origin])
	other := followers[0]
	if other == next {
		other = followers[1]
	}
	r = submit(t, net.NATS(4), "insert", "places", 5, `{"name":"p5"}`)
	acceptAt(t, net, other, r.Origin)
	origins = append(origins, r.Origin)
	sameEverywhere(t, net, running, origins, "places")

	// The old leader comes back and applies what the group decided while
	// it was away, under the same sequences.
	net.Restart(leader)
	final := sameEverywhere(t, net, all, origins, "places")
	for _, o := range origins[:4] {
		if final[o] != seqs[o] {
			t.Fatalf("%s renumbered: %d then %d", o, seqs[o], final[o])
		}
	}
}

// actAt has node i's operator act on the request of origin; it returns the
// HTTP status and the answer.
func actAt(t *testing.T, net *testnet.Net, i int, origin, act string) (int, map[string]any) {
	t.Helper()
	var id uint64
	testnet.WaitFor(t, 30*time.Second, fmt.Sprintf("%s at node %d", origin, i), func() bool {
		r, err := net.Node(i).Review().RequestByOrigin(origin)
		id = r.ID
		return err == nil
	})
	return admin(t, net, i, "POST", fmt.Sprintf("/api/v1/requests/%d/%s", id, act), nil)
}

// With review.approvals 2 a request waits, on every reviewer, with the
// approval of the first reviewer node, and the second decides it; a
// rejection at any reviewer reaches the applicant once; acts the group's
// state machine refuses are refused where the operator acted, with their
// code; a minority of the group cannot decide and says so.
func TestReviewGroupApprovalsRefusalsAndMinority(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 5, Reviewers: []int{0, 1, 2}, Node: node.Options{ReviewGroupTiming: groupTiming},
		Configure: func(_ int, c *node.Config) { c.Review.Approvals = 2 }})
	net.WaitMembers(30 * time.Second)
	leader := leaderOf(t, net, []int{0, 1, 2})
	f1, f2 := (leader+1)%3, (leader+2)%3

	r := submit(t, net.NATS(3), "insert", "places", 1, `{"name":"p1"}`)
	if status, out := actAt(t, net, f1, r.Origin, "accept"); status != 200 {
		t.Fatalf("first approval at a follower: %d %v", status, out)
	}
	testnet.WaitFor(t, 30*time.Second, "the first approval on every reviewer", func() bool {
		for _, i := range []int{0, 1, 2} {
			row, err := net.Node(i).Review().RequestByOrigin(r.Origin)
			if err != nil || row.Status != "waiting" || len(row.Approvals) != 1 || row.Approvals[0].ReviewerID != net.IDs[f1].String() {
				return false
			}
		}
		return true
	})
	if status, out := actAt(t, net, f1, r.Origin, "accept"); status == 200 || errCode(out) != "conflict" {
		t.Fatalf("a second approval by the same node: %d %v, want conflict", status, out)
	}
	if status, out := actAt(t, net, leader, r.Origin, "accept"); status != 200 {
		t.Fatalf("second approval at the leader: %d %v", status, out)
	}
	sameEverywhere(t, net, []int{0, 1, 2, 3, 4}, []string{r.Origin}, "places")

	// A rejection at a follower: every reviewer and the applicant hold it
	// rejected (no sequence); the other member gets nothing.
	rej := submit(t, net.NATS(4), "insert", "places", 2, `{"name":"p2"}`)
	if status, out := actAt(t, net, f2, rej.Origin, "reject"); status != 200 {
		t.Fatalf("reject at a follower: %d %v", status, out)
	}
	testnet.WaitFor(t, 30*time.Second, "the rejection at the reviewers and the applicant", func() bool {
		for _, i := range []int{0, 1, 2, 4} {
			row, err := net.Node(i).Review().RequestByOrigin(rej.Origin)
			if err != nil || row.Status != "rejected" || row.Sequence != 0 {
				return false
			}
		}
		return true
	})
	if _, err := net.Node(3).Review().RequestByOrigin(rej.Origin); err == nil {
		t.Fatal("a rejection reached a member that is not its applicant")
	}
	if status, out := actAt(t, net, leader, rej.Origin, "accept"); status == 200 || errCode(out) != "conflict" {
		t.Fatalf("accept of a rejected request: %d %v, want conflict", status, out)
	}

	// Two of the three reviewers stop: the last one cannot decide.
	last := submit(t, net.NATS(3), "insert", "places", 3, `{"name":"p3"}`)
	rejectAt := func(i int) (int, map[string]any) { return actAt(t, net, i, last.Origin, "reject") }
	testnet.WaitFor(t, 30*time.Second, "the request at every reviewer", func() bool {
		for _, i := range []int{0, 1, 2} {
			if _, err := net.Node(i).Review().RequestByOrigin(last.Origin); err != nil {
				return false
			}
		}
		return true
	})
	net.Stop(f1)
	net.Stop(leader)
	status, out := rejectAt(f2)
	e, _ := out["error"].(map[string]any)
	msg, _ := e["message"].(string)
	if status == 200 || errCode(out) != "unavailable" || !strings.Contains(msg, "review group") {
		t.Fatalf("a minority decided, or said so unclearly: %d %v", status, out)
	}
	t.Logf("minority: %s", msg)
	if row, err := net.Node(f2).Review().RequestByOrigin(last.Origin); err != nil || row.Status != "waiting" {
		t.Fatalf("after a refused act the request is %+v (%v), want waiting", row, err)
	}
}

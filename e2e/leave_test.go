package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// Members that leave (issue 22): a member whose record expired, or that
// the operator removed, is no longer addressed; the reviewer's pending
// rows for it close with the reason; back again, it catches up.

// accepted has A submit insert offices/n and the reviewer's operator
// accept it; it returns the request id at the reviewer.
func accepted(t *testing.T, net *testnet.Net, n int) uint64 {
	t.Helper()
	req := submit(t, net.NATS(nA), "insert", "offices", n, fmt.Sprintf(`{"n":%d}`, n))
	row := waitingAt(t, net.Node(nC), req.Origin)
	decideAt(t, net, row.ID, "accept", nil)
	return row.ID
}

// rowsAt returns the reviewer's acknowledgement rows of request id by
// receiver name.
func rowsAt(t *testing.T, net *testnet.Net, id uint64) map[string]node.AckRow {
	t.Helper()
	page, err := net.Node(nC).Acks(node.AckQuery{RequestID: id, Limit: node.MaxAckPage})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]node.AckRow{}
	for _, r := range page.Rows {
		out[r.Receiver] = r
	}
	return out
}

// waitRows waits until the reviewer's rows of request id are exactly want
// ("receiver:ack" by receiver name).
func waitRows(t *testing.T, net *testnet.Net, id uint64, want ...string) map[string]node.AckRow {
	t.Helper()
	slices.Sort(want)
	var got []string
	var rows map[string]node.AckRow
	defer func() {
		if t.Failed() {
			t.Logf("rows of request %d at the reviewer: %v, want %v", id, got, want)
		}
	}()
	testnet.WaitFor(t, 60*time.Second, fmt.Sprintf("rows of request %d: %v", id, want), func() bool {
		rows = rowsAt(t, net, id)
		got = got[:0]
		for name, r := range rows {
			got = append(got, name+":"+r.Ack)
		}
		slices.Sort(got)
		return slices.Equal(got, want)
	})
	return rows
}

// addressed reports whether the reviewer's sender would send p decisions:
// it is a receiver of the decision lane (the Audience), or a delivery
// state of a decision lane lists it.
func addressed(net *testnet.Net, p peer.ID) bool {
	rev := net.Node(nC)
	if slices.Contains(rev.Members(), p) {
		return true
	}
	for _, d := range rev.Deliveries() {
		if d.ReceiverID == p.String() && (d.Lane == "decision" || d.Lane == "rejection") {
			return true
		}
	}
	return false
}

// holdsOffices waits until D holds the reviewer's offices table.
func holdsOffices(t *testing.T, net *testnet.Net) {
	t.Helper()
	want := rowsOf(t, net.Node(nC), "offices")
	testnet.WaitFor(t, 60*time.Second, "D holds the reviewer's offices "+want, func() bool {
		return rowsOf(t, net.Node(nD), "offices") == want
	})
}

// TestMemberWhoseRecordExpired: D stops; the decision made while its
// record was still valid stays pending for it until the record expires at
// the reviewer, then its row closes with the reason and D is no longer
// addressed; a decision made after has no row for D. D starts again: a
// member again, it gets both decisions and its rows turn sended.
func TestMemberWhoseRecordExpired(t *testing.T) {
	// Records renewed every 2.7 s: a stopped member leaves within 8 s.
	net := testnet.Start(t, testnet.Options{N: 4, Reviewer: testnet.At(nC),
		Configure: func(_ int, c *node.Config) { c.MemberLifetime = "8s" }})
	net.WaitMembers(30 * time.Second)
	d := net.IDs[nD]
	rev := net.Node(nC)

	id1 := accepted(t, net, 1)
	waitRows(t, net, id1, "A:sended", "B:sended", "D:sended")

	net.Stop(nD)
	id2 := accepted(t, net, 2)
	if _, has := rowsAt(t, net, id2)["D"]; !has {
		t.Fatal("the reviewer has no row of D for a decision made while D's record was valid (it expired too soon for this test)")
	}
	waitRows(t, net, id2, "A:sended", "B:sended", "D:pending")
	if !addressed(net, d) {
		t.Fatal("D, a member whose record has not expired, is not addressed")
	}
	testnet.WaitFor(t, 30*time.Second, "D's record expires at the reviewer", func() bool { return !rev.IsMember(d) })
	rows := waitRows(t, net, id2, "A:sended", "B:sended", "D:closed")
	if r := rows["D"]; !strings.HasPrefix(r.Reason, "member left: its record expired at ") {
		t.Fatalf("D's closed row says %q", r.Reason)
	}
	// The members that run renew their records: still members.
	for _, i := range []int{nA, nB} {
		if !rev.IsMember(net.IDs[i]) {
			t.Fatalf("%s, running, is no member of the reviewer", net.Config(i).Name)
		}
	}
	waitRows(t, net, id1, "A:sended", "B:sended", "D:sended") // what D had stays sended
	if addressed(net, d) {
		t.Fatal("D is addressed after its record expired")
	}
	if p, err := rev.Acks(node.AckQuery{State: node.AckPending}); err != nil || len(p.Rows) != 0 {
		t.Fatalf("pending rows at the reviewer after D left: %+v %v", p.Rows, err)
	}
	if st := rev.Status(); st.PendingAcks != 0 {
		t.Fatalf("status counts %d pending acks after D left", st.PendingAcks)
	}
	status, out := admin(t, net, nC, "GET", "/api/v1/members", nil)
	if status != 200 || !strings.Contains(fmt.Sprint(out["members"]), "state:left") {
		t.Fatalf("GET /api/v1/members: %d %v", status, out)
	}
	id3 := accepted(t, net, 3)
	waitRows(t, net, id3, "A:sended", "B:sended")

	// Back: a new record makes D a member again; it takes what it missed.
	net.Restart(nD)
	testnet.WaitFor(t, 30*time.Second, "D is a member of the reviewer again", func() bool { return rev.IsMember(d) })
	holdsOffices(t, net)
	waitRows(t, net, id2, "A:sended", "B:sended", "D:sended")
	waitRows(t, net, id3, "A:sended", "B:sended", "D:sended")
}

// TestMemberRemovedByTheOperator: D is cut off from every node, so D's row
// of a decision stays pending; the operator removes D (admin API): the row
// closes with the reason, D is not addressed and its connections are
// refused, also after the reviewer restarts; `members add` lets it back,
// and it catches up.
func TestMemberRemovedByTheOperator(t *testing.T) {
	net := reviewNet(t)
	d := net.IDs[nD]
	rev := net.Node(nC)
	id1 := accepted(t, net, 1)
	waitRows(t, net, id1, "A:sended", "B:sended", "D:sended")

	// D is cut off from every node: it neither gets the decision nor can
	// tell the reviewer (a member cut from the reviewer alone gets it by
	// gossip and reports through its neighbours): its row stays pending.
	for _, i := range []int{nA, nB, nC} {
		net.Node(i).CutLink(d)
	}
	id2 := accepted(t, net, 2)
	waitRows(t, net, id2, "A:sended", "B:sended", "D:pending")

	// The operator's errors first: itself, a peer id that is none.
	if status, out := admin(t, net, nC, "DELETE", "/api/v1/members/"+net.IDs[nC].String(), nil); status != 409 || errCode(out) != "conflict" {
		t.Fatalf("removing the node itself: %d %v", status, out)
	}
	if status, out := admin(t, net, nC, "DELETE", "/api/v1/members/nobody", nil); status != 400 {
		t.Fatalf("removing 'nobody': %d %v", status, out)
	}
	status, out := admin(t, net, nC, "DELETE", "/api/v1/members/"+d.String(), nil)
	if m, _ := out["member"].(map[string]any); status != 200 || m["state"] != "removed" ||
		!strings.HasPrefix(fmt.Sprint(m["reason"]), "member removed by the operator at ") {
		t.Fatalf("remove D: %d %v", status, out)
	}
	rows := waitRows(t, net, id2, "A:sended", "B:sended", "D:closed")
	if !strings.HasPrefix(rows["D"].Reason, "member removed by the operator at ") {
		t.Fatalf("D's closed row says %q", rows["D"].Reason)
	}
	removed := func(when string) {
		t.Helper()
		if rev.IsMember(d) || addressed(net, d) {
			t.Fatalf("%s: D is still a member of the reviewer, or addressed", when)
		}
		// The reviewer neither dials D nor keeps a connection D opens.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rev.HealLink(d)
		if err := rev.Host().Connect(ctx, peer.AddrInfo{ID: d, Addrs: net.Node(nD).Host().Addrs()}); err == nil {
			t.Fatalf("%s: the reviewer dialed D", when)
		}
		_ = net.Node(nD).Host().Connect(ctx, peer.AddrInfo{ID: net.IDs[nC], Addrs: rev.Host().Addrs()})
		testnet.WaitFor(t, 10*time.Second, when+": no connection between D and the reviewer", func() bool {
			return len(net.Node(nD).Host().Network().ConnsToPeer(net.IDs[nC])) == 0 && len(rev.Host().Network().ConnsToPeer(d)) == 0
		})
	}
	removed("removed")
	id3 := accepted(t, net, 3)
	waitRows(t, net, id3, "A:sended", "B:sended")

	// A restart of the reviewer keeps the removal.
	net.Restart(nC)
	rev = net.Node(nC)
	removed("after the reviewer's restart")
	waitRows(t, net, id2, "A:sended", "B:sended", "D:closed")

	// Added back: a member again once its record is taken; it catches up
	// and reports what it applied.
	net.Node(nA).HealLink(d)
	net.Node(nB).HealLink(d)
	status, out = admin(t, net, nC, "POST", "/api/v1/members", map[string]string{"peer_id": d.String()})
	if status != 200 {
		t.Fatalf("add D: %d %v", status, out)
	}
	testnet.WaitFor(t, 60*time.Second, "D is a member of the reviewer again", func() bool { return rev.IsMember(d) })
	holdsOffices(t, net)
	waitRows(t, net, id2, "A:sended", "B:sended", "D:sended")
	waitRows(t, net, id3, "A:sended", "B:sended", "D:sended")
}

// TestAMemberCutFromTheReviewerReportsThroughNeighbours: D cannot reach the
// reviewer (its link to C is cut both ways), yet it gets the decision by
// gossip from A and B and its signed report reaches the reviewer through
// them: the reviewer's row for D turns sended without a connection
// between the two, and without the delivery stream (that would need one).
func TestAMemberCutFromTheReviewerReportsThroughNeighbours(t *testing.T) {
	net := reviewNet(t)
	d := net.IDs[nD]
	rev := net.Node(nC)
	rev.CutLink(d)
	net.Node(nD).CutLink(net.IDs[nC])
	id := accepted(t, net, 1)
	holdsOffices(t, net)
	waitRows(t, net, id, "A:sended", "B:sended", "D:sended")
	if len(rev.Host().Network().ConnsToPeer(d)) != 0 {
		t.Fatal("the reviewer holds a connection to D")
	}
}

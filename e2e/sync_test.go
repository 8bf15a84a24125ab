package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/review"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// decide accepts a request on the reviewer through its service (the admin
// API and CLI call the same).
func decide(t *testing.T, n *node.Node, id uint64, decision string) review.Row {
	t.Helper()
	ch := make(chan error, 1)
	var row review.Row
	n.Decide(review.DecideRequest{RequestID: id, Decision: decision}, func(r review.Row, err error) { row = r; ch <- err })
	if err := <-ch; err != nil {
		t.Fatalf("%s request %d: %v", decision, id, err)
	}
	return row
}

func submit(t *testing.T, nc *nats.Conn, typ string, table string, id int, data string) review.Row {
	t.Helper()
	var r struct {
		OK      bool
		Error   *apiErr
		Request review.Row
	}
	testnet.Request(t, nc, "ferry.review.submit", fmt.Sprintf(`{"type":%q,"table_name":%q,"table_id":%d,"data":%s,"description":"test"}`, typ, table, id, data), &r)
	if !r.OK {
		t.Fatalf("submit %s %s %d: %+v", typ, table, id, r.Error)
	}
	return r.Request
}

// waitingAt returns the waiting request of origin at the reviewer.
func waitingAt(t *testing.T, rev *node.Node, origin string) review.Row {
	t.Helper()
	var row review.Row
	testnet.WaitFor(t, 60*time.Second, "the reviewer holds "+origin, func() bool {
		r, err := rev.Review().RequestByOrigin(origin)
		row = r
		return err == nil
	})
	return row
}

// TestConvergesWhenTheSenderLostTrack: the sender's ack floors for X are
// moved past everything it owes X (as if X had acknowledged it all); X
// reports where it really is when a stream opens, and still ends with every
// resource and every decision.
func TestConvergesWhenTheSenderLostTrack(t *testing.T) {
	// A is the reviewer and X's partner.
	net := testnet.Start(t, testnet.Options{N: 2, Names: []string{"A", "X"}, Partners: map[int][]int{0: {1}, 1: {0}},
		Reviewer: testnet.At(0)})
	net.WaitMembers(20 * time.Second)
	a := net.NATS(0)
	net.Stop(1)
	for i := range 300 {
		must(t, a, fmt.Sprintf(`{"action":"create","data_type":"vm","payload":{"id":"vm%d"}}`, i))
	}
	must(t, a, `{"action":"update","data_type":"vm","payload":{"id":"vm7","cpu":8}}`)
	must(t, a, `{"action":"delete","data_type":"vm","payload":{"id":"vm8"}}`)
	for i := 1; i <= 20; i++ {
		r := submit(t, a, "insert", "tb1", i, fmt.Sprintf(`{"n":%d}`, i))
		decide(t, net.Node(0), r.ID, "accept")
	}
	if n := forgeFloors(t, net, 0, 1); n < 322 {
		t.Fatalf("A owed X only %d changes", n)
	}
	net.Restart(1)
	waitConverged(t, net, []int{0, 1}, 60*time.Second, "tb1")
	// X's word (its hello, its position reports, its applied reports)
	// reaches A after X holds everything: A then owes it nothing.
	testnet.WaitFor(t, 30*time.Second, "A owes X nothing", func() bool { return pendingAt(net, 0) == 0 })
	if rows, _ := net.Node(1).Store().Rows("tb1"); len(rows) != 20 {
		t.Fatalf("X holds %d rows of tb1", len(rows))
	}
}

// forgeFloors makes node from believe node to acknowledged everything: it
// stops from, moves its ack floors for to to the head of its log and starts
// it again. It returns how many changes from owed to before.
func forgeFloors(t *testing.T, net *testnet.Net, from, to int) int {
	t.Helper()
	owed := pendingAt(net, from)
	net.Stop(from)
	st, err := store.Open(net.Homes[from].DataPath(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	head := st.DurableVersion()
	if err := st.Update(context.Background(), func(tx *store.Txn) error {
		for _, l := range stream.Lanes {
			tx.SetFloor(net.IDs[to], uint8(l), &storepb.Floor{Version: head})
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	net.Restart(from)
	return owed
}

// TestSyncServesAnotherOriginsChain: while an origin is down, a partner
// that missed its changes gets them from another of its partners through
// sync; the answers are cut by size, so changes near the message limit
// arrive. The origin's own streams carry the same changes when it returns.
func TestSyncServesAnotherOriginsChain(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Names: []string{"A", "X", "Y"},
		Partners: map[int][]int{0: {1, 2}, 1: {0, 2}, 2: {0, 1}}})
	net.WaitMembers(20 * time.Second)
	a := net.NATS(0)
	net.Stop(1)
	big := strings.Repeat("x", 900<<10)
	for i := range 8 {
		must(t, a, fmt.Sprintf(`{"action":"create","data_type":"blob","payload":{"id":"b%d","data":%q}}`, i, big))
	}
	testnet.WaitFor(t, 60*time.Second, "Y holds the eight large resources", func() bool {
		rs, _ := net.Node(2).Store().Resources("blob")
		return len(rs) == 8
	})
	net.Stop(0)
	net.Restart(1)
	testnet.WaitFor(t, 60*time.Second, "X holds the eight large resources", func() bool {
		rs, _ := net.Node(1).Store().Resources("blob")
		return len(rs) == 8
	})
	if held, _ := net.Node(1).Store().Counter("resource_held/" + string(net.IDs[0])); held == 0 {
		t.Fatal("X does not hold A's chain")
	}
	// A comes back: its stream to X finds everything held.
	net.Restart(0)
	testnet.WaitFor(t, 30*time.Second, "A's rows to X acknowledged", func() bool { return pendingAt(net, 0) == 0 })
}

// TestPartitionHeals: five nodes split 2|3, both sides change resources
// and tables; after healing every node holds the same state.
func TestPartitionHeals(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 5, Mesh: true, Reviewer: testnet.At(2)})
	net.WaitMembers(30 * time.Second)
	ncs := make([]*nats.Conn, 5)
	for i := range ncs {
		ncs[i] = net.NATS(i)
	}
	left, right := []int{0, 1}, []int{2, 3, 4}
	for _, l := range left {
		for _, r := range right {
			net.Node(l).CutLink(net.IDs[r])
			net.Node(r).CutLink(net.IDs[l])
		}
	}
	// Both sides work while apart.
	for _, i := range []int{0, 1, 3, 4} {
		for k := range 40 {
			must(t, ncs[i], fmt.Sprintf(`{"action":"create","data_type":"doc","payload":{"id":"d%d-%d","v":1}}`, i, k))
		}
		must(t, ncs[i], fmt.Sprintf(`{"action":"update","data_type":"doc","payload":{"id":"d%d-0","v":2}}`, i))
	}
	leftReq := submit(t, ncs[0], "insert", "tb1", 1, `{"side":"left"}`)
	rightReq := submit(t, ncs[3], "insert", "tb1", 2, `{"side":"right"}`)
	decide(t, net.Node(2), waitingAt(t, net.Node(2), rightReq.Origin).ID, "accept")
	self := submit(t, ncs[2], "insert", "tb1", 3, `{"side":"reviewer"}`)
	decide(t, net.Node(2), self.ID, "accept")
	// Heal; the request from the left side reaches the reviewer and is decided.
	for _, l := range left {
		for _, r := range right {
			net.Node(l).HealLink(net.IDs[r])
			net.Node(r).HealLink(net.IDs[l])
		}
	}
	decide(t, net.Node(2), waitingAt(t, net.Node(2), leftReq.Origin).ID, "accept")
	all := []int{0, 1, 2, 3, 4}
	got := waitConverged(t, net, all, 90*time.Second, "tb1")
	if n := strings.Count(got, "resource doc/"); n != 160 {
		t.Fatalf("converged on %d resources, want 160", n)
	}
	if n := strings.Count(got, "row tb1/"); n != 3 {
		t.Fatalf("converged on %d rows, want 3:\n%s", n, got)
	}
}

// TestNewMemberCatchesUp: a member that was away gets every earlier
// decision (the shared tables) and its partner's resources.
func TestNewMemberCatchesUp(t *testing.T) {
	const rows = 500
	net := testnet.Start(t, testnet.Options{N: 3, Names: []string{"R", "M", "N"}, Reviewer: testnet.At(0),
		Partners: map[int][]int{0: {2}, 2: {0}}})
	net.WaitMembers(20 * time.Second)
	net.Stop(2)
	r := net.NATS(0)
	errs := make(chan error, rows)
	for i := 1; i <= rows; i++ {
		row := submit(t, r, "insert", "big", i, fmt.Sprintf(`{"n":%d}`, i))
		net.Node(0).Decide(review.DecideRequest{RequestID: row.ID, Decision: "accept"}, func(_ review.Row, err error) { errs <- err })
	}
	for range rows {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		must(t, r, fmt.Sprintf(`{"action":"create","data_type":"vm","payload":{"id":"r%d"}}`, i))
	}
	// N had met R before: it is a receiver whose floors are behind, and the
	// same streams that carry live changes bring it everything it missed.
	net.Restart(2)
	testnet.WaitFor(t, 60*time.Second, "N holds every row and resource", func() bool {
		got, _ := net.Node(2).Store().Rows("big")
		res, _ := net.Node(2).Store().Resources("vm")
		return len(got) == rows && len(res) == 50
	})
	if net.Node(2).Review().Applied() != rows {
		t.Fatalf("N applied %d decisions", net.Node(2).Review().Applied())
	}
}

// TestSyncRefusesBadRequests: an unknown origin, a position in the future
// and a peer that may not ask are refused with a reason.
func TestSyncRefusesBadRequests(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {1}, 1: {0}}, Reviewer: testnet.At(0)})
	net.WaitMembers(20 * time.Second)
	must(t, net.NATS(0), `{"action":"create","data_type":"vm","payload":{"id":"x"}}`)
	ask := func(from int, req *pb.SyncRequest) *pb.SyncBatch {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := net.Node(from).Host().NewStream(ctx, net.IDs[0], protocols.Sync)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		fw := protocols.NewFrameWriter(s, 1<<20)
		_ = fw.Write(req)
		_ = fw.Flush()
		b := &pb.SyncBatch{}
		if err := protocols.NewFrameReader(s, 1<<24).Read(b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	stranger := net.IDs[2]
	if b := ask(1, &pb.SyncRequest{What: pb.SyncRequest_WHAT_RESOURCES, Origin: []byte(stranger)}); !strings.Contains(b.Error, "shared with partners only") {
		t.Errorf("origin that is not a partner: %q", b.Error)
	}
	if b := ask(1, &pb.SyncRequest{What: pb.SyncRequest_WHAT_RESOURCES, Origin: []byte(net.IDs[0]), After: 1 << 62}); !strings.Contains(b.Error, "in the future") {
		t.Errorf("future position: %q", b.Error)
	}
	if b := ask(2, &pb.SyncRequest{What: pb.SyncRequest_WHAT_RESOURCES, Origin: []byte(net.IDs[0])}); !strings.Contains(b.Error, "partners only") {
		t.Errorf("a non-partner asking for resources: %q", b.Error)
	}
	if b := ask(1, &pb.SyncRequest{What: pb.SyncRequest_WHAT_DECISIONS, After: 99}); !strings.Contains(b.Error, "in the future") {
		t.Errorf("future decision: %q", b.Error)
	}
	if b := ask(1, &pb.SyncRequest{What: pb.SyncRequest_WHAT_RESOURCES, Origin: []byte(net.IDs[0])}); b.Error != "" || len(b.Envelopes) != 1 || !b.Done {
		t.Errorf("a good request: %v", b)
	}
}

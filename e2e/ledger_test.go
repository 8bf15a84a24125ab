package e2e

import (
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// TestAckRowsFollowTheFloors: acknowledgement rows are derived from the log
// and each receiver's ack floor: pending while a partner is down, sended for
// the one that acknowledged, paged newest first, filtered by receiver and
// state.
func TestAckRowsFollowTheFloors(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {1, 2}, 1: {0}, 2: {0}}})
	net.WaitMembers(20 * time.Second)
	a := net.NATS(0)
	net.Stop(2) // C's rows stay pending
	for _, r := range pipeline(t, a, 0, 50, 16, "create") {
		if !r.OK {
			t.Fatal(r.Error)
		}
	}
	A := net.Node(0)
	count := func(q node.AckQuery) int {
		q.Limit = node.MaxAckPage
		p, err := A.Acks(q)
		if err != nil {
			t.Fatal(err)
		}
		return len(p.Rows)
	}
	testnet.WaitFor(t, 20*time.Second, "B acknowledged its 50", func() bool { return count(node.AckQuery{State: node.AckSended}) == 50 })
	if n := count(node.AckQuery{State: node.AckPending, Receiver: "C"}); n != 50 {
		t.Fatalf("C has %d pending rows, want 50", n)
	}
	if n := count(node.AckQuery{Receiver: net.IDs[1].String(), State: node.AckPending}); n != 0 {
		t.Fatalf("B has %d pending rows", n)
	}
	if st := A.Status(); st.PendingAcks != 50 {
		t.Fatalf("status shows %d pending acks", st.PendingAcks)
	}
	var ds []node.DeliveryState
	for _, d := range A.Deliveries() {
		if d.Lane == "resource" {
			ds = append(ds, d)
		}
	}
	if len(ds) != 2 || ds[0].Receiver != "B" || ds[0].Pending != 0 || ds[1].Receiver != "C" || ds[1].Pending != 50 || ds[1].OldestPending.IsZero() {
		t.Fatalf("deliveries: %+v", ds)
	}
	// Pages: newest first, 100 rows in all, in pages of 30, no row twice.
	seen := map[string]bool{}
	var prevVersion uint64
	cursor := ""
	pages := 0
	for {
		p, err := A.Acks(node.AckQuery{Limit: 30, Before: cursor})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, r := range p.Rows {
			if seen[r.ID] {
				t.Fatalf("row %s twice", r.ID)
			}
			seen[r.ID] = true
			if prevVersion != 0 && r.Version > prevVersion {
				t.Fatalf("row %s after version %d: not newest first", r.ID, prevVersion)
			}
			prevVersion = r.Version
			if r.Kind != "resource" || r.Protocol == "" || r.CreatedAt.IsZero() {
				t.Fatalf("row %+v", r)
			}
		}
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	if len(seen) != 100 || pages != 4 {
		t.Fatalf("%d rows in %d pages, want 100 in 4", len(seen), pages)
	}
	if _, err := A.Acks(node.AckQuery{State: "lost"}); err == nil {
		t.Fatal("an unknown state was accepted")
	}
	// C comes back: its floor catches up and its rows turn sended.
	net.Restart(2)
	testnet.WaitFor(t, 30*time.Second, "C acknowledged its 50", func() bool { return count(node.AckQuery{State: node.AckPending}) == 0 })
	if n := count(node.AckQuery{State: node.AckSended}); n != 100 {
		t.Fatalf("%d rows sended, want 100", n)
	}
}

// TestRetentionDropsAcknowledgedRecords: delivery records every receiver
// acknowledged are dropped past the window, except a resource's current
// state, so a partner added later still gets every resource.
func TestRetentionDropsAcknowledgedRecords(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {1}, 1: {0}}})
	net.WaitMembers(20 * time.Second)
	a := net.NATS(0)
	for _, r := range pipeline(t, a, 0, 100, 16, "create") {
		if !r.OK {
			t.Fatal(r.Error)
		}
	}
	for _, r := range pipeline(t, a, 0, 50, 16, "update") {
		if !r.OK {
			t.Fatal(r.Error)
		}
	}
	A := net.Node(0)
	all := func() int {
		n, cursor := 0, ""
		for {
			p, err := A.Acks(node.AckQuery{Limit: node.MaxAckPage, Before: cursor})
			if err != nil {
				t.Fatal(err)
			}
			n += len(p.Rows)
			if p.Next == "" {
				return n
			}
			cursor = p.Next
		}
	}
	testnet.WaitFor(t, 20*time.Second, "B acknowledged all 150", func() bool { return pendingAt(net, 0) == 0 })
	if n := all(); n != 150 {
		t.Fatalf("%d rows before retention, want 150", n)
	}
	// A window that ends now: the 50 superseded creates go; the 100 current
	// states stay. A second pass finds nothing more.
	dropped, err := A.Sender().Truncate(t.Context(), time.Now())
	if err != nil || dropped != 50 {
		t.Fatalf("dropped %d (%v), want 50", dropped, err)
	}
	if n := all(); n != 100 {
		t.Fatalf("%d rows after retention, want 100", n)
	}
	if dropped, err := A.Sender().Truncate(t.Context(), time.Now()); err != nil || dropped != 0 {
		t.Fatalf("second pass dropped %d (%v)", dropped, err)
	}
	// C becomes A's partner: it gets every resource in its current state.
	if err := A.SetPartner(t.Context(), net.IDs[2], true); err != nil {
		t.Fatal(err)
	}
	if err := net.Node(2).SetPartner(t.Context(), net.IDs[0], true); err != nil {
		t.Fatal(err)
	}
	testnet.WaitFor(t, 30*time.Second, "C holds the 100 resources", func() bool {
		rs, _ := net.Node(2).Store().Resources("vm")
		return len(rs) == 100
	})
	// An updated resource arrives in its current state (the update), not
	// as the dropped create.
	atA, _ := A.Store().Resource("vm", net.IDs[0], "vm-7")
	atC, _ := net.Node(2).Store().Resource("vm", net.IDs[0], "vm-7")
	if atA == nil || atC == nil || atA.OriginVersion != atC.OriginVersion {
		t.Fatalf("vm-7: at A %v, at C %v", atA, atC)
	}
}

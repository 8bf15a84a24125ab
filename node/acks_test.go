package node_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/internal/wording"
	"github.com/ferrynet/ferry/node"
)

// TestAckRowsPagesAndFilters: rows come newest change first (receivers of a
// change in order), pages follow each other without gaps or repeats,
// filters select by receiver, state and kind, and a stuck row carries the
// last send error.
func TestAckRowsPagesAndFilters(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {1, 2}, 1: {0}, 2: {0}}})
	net.WaitMembers(20 * time.Second)
	testnet.WaitFor(t, 20*time.Second, "A knows every name", func() bool {
		for _, p := range net.Node(0).PeerInfos() {
			if p.Name != "B" && p.Name != "C" {
				return false
			}
		}
		return len(net.Node(0).PeerInfos()) == 2
	})
	net.Stop(2)
	a := net.Node(0)
	for i := range 5 {
		var out struct{ OK bool }
		testnet.Request(t, net.NATS(0), "ferry.propagate", fmt.Sprintf(`{"action":"create","data_type":"vm","payload":{"id":"vm%d"}}`, i), &out)
		if !out.OK {
			t.Fatal("propagate refused")
		}
	}
	testnet.WaitFor(t, 20*time.Second, "B acknowledged all five", func() bool {
		p, err := a.Acks(node.AckQuery{Receiver: "B", State: "sended"})
		return err == nil && len(p.Rows) == 5
	})
	all, err := a.Acks(node.AckQuery{Limit: node.MaxAckLimit})
	if err != nil || len(all.Rows) != 10 || all.Next != "" {
		t.Fatalf("all rows: %d %q %v", len(all.Rows), all.Next, err)
	}
	for i, r := range all.Rows {
		if i > 0 {
			prev := all.Rows[i-1]
			if r.Version > prev.Version || (r.Version == prev.Version && r.ID <= prev.ID) {
				t.Fatalf("row %d (%s) after %s: not newest change first, receivers in order", i, r.ID, prev.ID)
			}
		}
		if r.Kind != "resource" || !strings.HasPrefix(r.ID, fmt.Sprint(r.Version)+".") || r.CreatedAt.IsZero() {
			t.Fatalf("row %+v", r)
		}
	}
	if r0, r1 := all.Rows[0], all.Rows[1]; r0.Version != r1.Version || r0.Receiver == r1.Receiver ||
		r0.ID != fmt.Sprintf("%d.1", r0.Version) || r1.ID != fmt.Sprintf("%d.2", r0.Version) {
		t.Fatalf("the newest change's rows: %+v %+v", r0, r1)
	}
	// Pages of three: the same rows, in the same order.
	var paged []string
	before := ""
	for range 10 {
		p, err := a.Acks(node.AckQuery{Limit: 3, Before: before})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range p.Rows {
			paged = append(paged, r.ID)
		}
		if p.Next == "" {
			break
		}
		before = p.Next
	}
	var want []string
	for _, r := range all.Rows {
		want = append(want, r.ID)
	}
	if fmt.Sprint(paged) != fmt.Sprint(want) {
		t.Fatalf("pages of three: %v, want %v", paged, want)
	}
	// Filters.
	for _, tc := range []struct {
		q    node.AckQuery
		want int
	}{
		{node.AckQuery{State: "pending"}, 5},
		{node.AckQuery{Receiver: "c"}, 5},
		{node.AckQuery{Receiver: net.IDs[1].String()}, 5},
		{node.AckQuery{Kind: "resource", State: "sended"}, 5},
		{node.AckQuery{Kind: "decision"}, 0},
		{node.AckQuery{Version: all.Rows[0].Version}, 2},
	} {
		p, err := a.Acks(tc.q)
		if err != nil || len(p.Rows) != tc.want {
			t.Errorf("%+v: %d rows (%v), want %d", tc.q, len(p.Rows), err, tc.want)
		}
	}
	for _, q := range []node.AckQuery{{State: "lost"}, {Kind: "mail"}, {Limit: -1}, {Before: "x"}} {
		_, err := a.Acks(q)
		if !errors.Is(err, ferry.ErrBadRequest) {
			t.Errorf("%+v: %v, want bad_request", q, err)
		} else if g := wording.GoInternals(err.Error(), q.State, q.Kind, q.Before); g != "" {
			t.Errorf("%+v: %q speaks Go (%q)", q, err, g)
		}
	}
	// C's rows are stuck: attempts, a next attempt and the last error show.
	testnet.WaitFor(t, 30*time.Second, "C's rows carry the send error", func() bool {
		p, _ := a.Acks(node.AckQuery{Receiver: "C", Limit: 1})
		return len(p.Rows) == 1 && p.Rows[0].Attempts > 0 && p.Rows[0].Error != "" && !p.Rows[0].NextAttemptAt.IsZero()
	})
	var c node.DeliveryState
	testnet.WaitFor(t, 10*time.Second, "C's delivery state", func() bool {
		for _, d := range a.Deliveries() {
			if d.Receiver == "C" && d.Lane == "resource" {
				c = d
			}
		}
		return c.Pending == 5 && c.LastError != ""
	})
	if c.OldestPending.IsZero() || c.Floor >= all.Rows[len(all.Rows)-1].Version {
		t.Fatalf("C's delivery state: %+v", c)
	}
	for _, d := range a.Deliveries() {
		if d.Receiver == "B" && (d.Pending != 0 || d.LastError != "") {
			t.Fatalf("B's delivery state: %+v", d)
		}
	}
}

// TestTraceOneChange: a trace asked on a receiver shows the origin's
// commit, each receiver's apply and ack, and what went out to apps; a down
// receiver shows as pending and not reachable. The PlantUML renders.
func TestTraceOneChange(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {1, 2}, 1: {0}, 2: {0}}})
	net.WaitMembers(20 * time.Second)
	var out struct {
		OK      bool
		Version uint64
	}
	testnet.Request(t, net.NATS(0), "ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"vm1"}}`, &out)
	testnet.WaitFor(t, 20*time.Second, "both receivers acknowledged", func() bool {
		p, _ := net.Node(0).Acks(node.AckQuery{Version: out.Version, State: "sended"})
		return len(p.Rows) == 2
	})
	rep, err := net.Node(1).Trace(context.Background(), net.IDs[0], out.Version)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Nodes) != 3 || rep.Nodes[0].Role != "origin" || rep.CommittedAt.IsZero() || rep.Kind != "resource" || rep.DataType != "vm" {
		t.Fatalf("trace: %+v", rep)
	}
	for _, nd := range rep.Nodes[1:] {
		if !nd.Held || nd.Ack != "sended" || nd.Published != "ferry.resource.created.vm" || nd.AppliedAt.IsZero() || nd.AppliedAt.Before(rep.CommittedAt) {
			t.Fatalf("receiver %+v", nd)
		}
	}
	uml := rep.PlantUML()
	for _, want := range []string{"@startuml", "committed as version", "applied as version", "ferry.resource.created.vm", "ack (sended)", "@enduml"} {
		if !strings.Contains(uml, want) {
			t.Fatalf("the PlantUML lacks %q:\n%s", want, uml)
		}
	}
	renders(t, uml)

	// C goes down; the next change is pending for it and C cannot be asked.
	net.Stop(2)
	testnet.Request(t, net.NATS(0), "ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"vm2"}}`, &out)
	rep, err = net.Node(0).Trace(context.Background(), net.IDs[0], out.Version)
	if err != nil {
		t.Fatal(err)
	}
	var c node.TraceNode
	for _, nd := range rep.Nodes {
		if nd.Name == "C" {
			c = nd
		}
	}
	if c.Ack != "pending" || c.AskError == "" || c.Held {
		t.Fatalf("the down receiver: %+v", c)
	}
	uml = rep.PlantUML()
	if !strings.Contains(uml, "could not be asked") || !strings.Contains(uml, "->x") {
		t.Fatalf("the PlantUML of a pending change:\n%s", uml)
	}
	renders(t, uml)
	if _, err := net.Node(0).Trace(context.Background(), net.IDs[0], 999); !errors.Is(err, ferry.ErrNotFound) {
		t.Fatalf("trace of a change nobody has: %v", err)
	}
}

// renders checks the text with PlantUML when it is installed.
func renders(t *testing.T, uml string) {
	t.Helper()
	if _, err := exec.LookPath("plantuml"); err != nil {
		t.Log("plantuml is not installed (scripts/deps.sh): the trace's PlantUML is not rendered")
		return
	}
	cmd := exec.Command("plantuml", "-tsvg", "-pipe", "-failfast2")
	cmd.Stdin = strings.NewReader(uml)
	svg, err := cmd.Output()
	if err != nil || !strings.Contains(string(svg), "<svg") || strings.Contains(string(svg), "Syntax Error") {
		t.Fatalf("plantuml cannot render the trace: %v\n%s\n%s", err, uml, svg)
	}
}

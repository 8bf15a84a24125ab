package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// TestMembershipWithoutFullMesh: ten nodes with two neighbours each and at
// most six open connections. Every node learns every member (name and
// addresses) from the signed membership records, without a connection to
// each; the connection counts stay within the bound; a change between two
// partners and a review decision still reach their receivers, and the
// reviewer's acknowledgement rows all turn sended.
func TestMembershipWithoutFullMesh(t *testing.T) {
	const n, neighbours, maxConns = 10, 2, 6
	const e, i = 4, 8 // partners
	names := []string{"A", "B", "C", "D", "E", "F", "G", "H", "I", "J"}
	net := testnet.Start(t, testnet.Options{N: n, Names: names, Reviewer: testnet.At(nC),
		Partners: map[int][]int{e: {i}, i: {e}},
		Configure: func(_ int, c *node.Config) {
			c.Connections.Neighbours, c.Connections.Max = neighbours, maxConns
		}})
	all := make([]int, n)
	for k := range all {
		all[k] = k
	}

	testnet.WaitFor(t, 60*time.Second, "every node knows every member by its record", func() bool {
		for _, a := range all {
			nd := net.Node(a)
			if nd.MembersKnown() != n {
				return false
			}
			for _, b := range all {
				if a != b && !nd.IsMember(net.IDs[b]) {
					return false
				}
			}
		}
		return true
	})
	// Names and addresses came with the records.
	for _, a := range all {
		for _, b := range all {
			if a == b {
				continue
			}
			pi, ok := peerInfo(net.Node(a), net.IDs[b].String())
			if !ok || pi.Name != names[b] || len(net.Node(a).Host().Peerstore().Addrs(net.IDs[b])) == 0 {
				t.Fatalf("%s knows %s as %+v (addresses %v)", names[a], names[b], pi, net.Node(a).Host().Peerstore().Addrs(net.IDs[b]))
			}
		}
	}
	within := func(what string) {
		t.Helper()
		testnet.WaitFor(t, 60*time.Second, what, func() bool {
			for _, a := range all {
				if len(net.Node(a).Host().Network().Peers()) > maxConns {
					return false
				}
			}
			return true
		})
	}
	within("every node holds at most max connections")
	fewer := 0
	for _, a := range all {
		if len(net.Node(a).Host().Network().Peers()) < n-1 {
			fewer++
		}
	}
	if fewer == 0 {
		t.Fatalf("every node is connected to every other: no bound at work")
	}

	// A change between partners.
	sub, err := net.NATS(i).SubscribeSync("ferry.resource.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = net.NATS(i).Flush()
	var r reply
	testnet.Request(t, net.NATS(e), "ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"vm1","cpu":2}}`, &r)
	if !r.OK {
		t.Fatalf("propagate: %+v", r.Error)
	}
	m, err := sub.NextMsg(30 * time.Second)
	if err != nil {
		t.Fatalf("the partner got no change: %v", err)
	}
	var ev struct{ Origin string }
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Origin != net.IDs[e].String() {
		t.Fatalf("event %s", m.Data)
	}

	// A review decision, from a member the reviewer keeps no connection to.
	const g = 6
	req := submit(t, net.NATS(g), "insert", "offices", 3, `{"unique_num":3,"name":"bounded"}`)
	row := waitingAt(t, net.Node(nC), req.Origin)
	decideAt(t, net, row.ID, "accept", nil)
	testnet.WaitFor(t, 60*time.Second, "every member applied the decision and the reviewer's acks are sended", func() bool {
		for _, a := range all {
			if got := rowsOf(t, net.Node(a), "offices"); got != `[{"id":3,"name":"bounded","unique_num":3}]` {
				return false
			}
		}
		acks, err := net.Node(nC).Acks(node.AckQuery{RequestID: row.ID})
		if err != nil {
			t.Fatal(err)
		}
		sended := 0
		for _, a := range acks.Rows {
			if a.Ack == "sended" {
				sended++
			}
		}
		return sended == n-1 && len(acks.Rows) == n-1
	})
	within("every node still holds at most max connections")
	if got := fmt.Sprint(len(net.Node(nC).Members())); got != fmt.Sprint(n-1) {
		t.Fatalf("the reviewer counts %s members", got)
	}
}

// peerInfo returns what nd shows of peer id in `ferry peers`.
func peerInfo(nd *node.Node, id string) (node.PeerInfo, bool) {
	for _, pi := range nd.PeerInfos() {
		if pi.PeerID == id {
			return pi, true
		}
	}
	return node.PeerInfo{}, false
}

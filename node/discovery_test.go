package node_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// peerInfo returns what node nd shows of p in `ferry peers`.
func peerInfo(nd *node.Node, p peer.ID) (node.PeerInfo, bool) {
	for _, pi := range nd.PeerInfos() {
		if pi.PeerID == p.String() {
			return pi, true
		}
	}
	return node.PeerInfo{}, false
}

func hasAddr(addrs []ma.Multiaddr, want string) bool {
	for _, a := range addrs {
		if a.String() == want {
			return true
		}
	}
	return false
}

// TestDiscoveryThroughDHT is the acceptance test: three nodes given only one
// bootstrap address find each other through the DHT, and node A reaches its
// partner C knowing only C's peer id.
func TestDiscoveryThroughDHT(t *testing.T) {
	// Node 0 is B, the only bootstrap peer (testnet bootstraps every other
	// node to node 0, and to nothing else). A and C are partners.
	const b, a, c = 0, 1, 2
	net := testnet.Start(t, testnet.Options{N: 3, Names: []string{"B", "A", "C"},
		Partners: map[int][]int{a: {c}, c: {a}}})
	A, B, C := net.IDs[a], net.IDs[b], net.IDs[c]
	bootB := net.Config(b).Listen[0] + "/p2p/" + B.String()
	for _, i := range []int{a, c} {
		cfg := net.Config(i)
		if len(cfg.Bootstrap) != 1 || cfg.Bootstrap[0] != bootB {
			t.Fatalf("node %s bootstraps to %v, want only B (%s)", cfg.Name, cfg.Bootstrap, bootB)
		}
	}
	if len(net.Config(b).Bootstrap) != 0 {
		t.Fatalf("B bootstraps to %v", net.Config(b).Bootstrap)
	}
	cListen := net.Config(c).Listen[0]
	for _, s := range append(net.Config(a).Bootstrap, net.Config(a).Partners...) {
		if strings.Contains(s, cListen) {
			t.Fatalf("A's config holds C's address %s", cListen)
		}
	}

	net.WaitMembers(20 * time.Second)
	// A and C count each other as members from their config (partners), so
	// wait for the proof they met: each exchanged hello with the other, which
	// needs a connection, so one of them had the other's address, which only
	// the DHT could give (their configs name B alone).
	testnet.WaitFor(t, 20*time.Second, "A and C exchanged hello", func() bool {
		ca, ok1 := peerInfo(net.Node(a), C)
		ac, ok2 := peerInfo(net.Node(c), A)
		return ok1 && ok2 && ca.Name == "C" && ac.Name == "A" && !ca.LastSeen.IsZero() && !ac.LastSeen.IsZero()
	})
	for _, i := range []int{a, b, c} {
		for _, j := range []int{a, b, c} {
			if i != j && !net.Node(i).IsMember(net.IDs[j]) {
				t.Fatalf("%s does not count %s as a member", net.Config(i).Name, net.Config(j).Name)
			}
		}
	}
	if !strings.Contains(strings.Join(mustInfo(t, net.Node(a), C).Addrs, " "), cListen) {
		t.Fatalf("A's peer book lacks C's listen address %s: %v", cListen, mustInfo(t, net.Node(a), C).Addrs)
	}

	// Make A forget C: cut the link (A then refuses every connection with C,
	// so C cannot hand its addresses back by dialing in or through identify)
	// and clear what A's peerstore holds of C.
	nA := net.Node(a)
	nA.CutLink(C)
	_ = nA.Host().Network().ClosePeer(C)
	forgetC := func() {
		t.Helper()
		// A's own DHT walks may add C's addresses back at any moment, so
		// clear and check in one step, as many times as it takes.
		testnet.WaitFor(t, 5*time.Second, "A holds no address of C", func() bool {
			nA.Host().Peerstore().ClearAddrs(C)
			return len(nA.Host().Peerstore().Addrs(C)) == 0
		})
	}
	forgetC()
	if cn := nA.Host().Network().Connectedness(C); cn == network.Connected {
		t.Fatalf("A is still connected to C after CutLink")
	}

	// A DHT lookup of C's id, from A, which knows no address of C and cannot
	// talk to C: whatever address of C it ends with came from the DHT (B).
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := nA.DHT().GetClosestPeers(ctx, string(C)); err != nil {
		t.Fatalf("A's DHT lookup of C: %v", err)
	}
	if got := nA.Host().Peerstore().Addrs(C); !hasAddr(got, cListen) {
		t.Fatalf("after a DHT lookup A knows %v of C, want %s", got, cListen)
	}

	// With the link healed and the peerstore empty again, FindPeer by id
	// returns C's listen address.
	forgetC()
	nA.HealLink(C)
	ai, err := nA.DHT().FindPeer(ctx, C)
	if err != nil {
		t.Fatalf("A's DHT cannot find C by id: %v", err)
	}
	if ai.ID != C || !hasAddr(ai.Addrs, cListen) {
		t.Fatalf("FindPeer(C) = %v, want C with %s", ai, cListen)
	}

	// Forget C once more and send C a resource: A's sender opens the delivery
	// stream to partner C by peer id (the routed host looks it up).
	nA.CutLink(C)
	forgetC()
	natsC := net.NATS(c)
	subC, err := natsC.SubscribeSync("ferry.resource.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := natsC.Flush(); err != nil {
		t.Fatal(err)
	}
	nA.HealLink(C)
	var r struct {
		OK    bool `json:"ok"`
		Error *struct {
			Code, Message string
		} `json:"error"`
	}
	testnet.Request(t, net.NATS(a), "ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"x"}}`, &r)
	if !r.OK {
		t.Fatalf("propagate on A: %+v", r.Error)
	}
	m, err := subC.NextMsg(20 * time.Second)
	if err != nil {
		t.Fatalf("C got no event of A's create: %v", err)
	}
	if m.Subject != "ferry.resource.created.vm" {
		t.Fatalf("C published %s", m.Subject)
	}
	var ev struct {
		Origin   string         `json:"origin"`
		Resource map[string]any `json:"resource"`
	}
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Origin != A.String() || ev.Resource["id"] != "x" || ev.Resource["creator_id"] != A.String() {
		t.Fatalf("event on C: %s", m.Data)
	}
	if cn := nA.Host().Network().Connectedness(C); cn != network.Connected {
		t.Fatalf("A is not connected to C after the delivery: %v", cn)
	}
	if !hasAddr(nA.Host().Peerstore().Addrs(C), cListen) {
		t.Fatalf("A did not learn C's address again: %v", nA.Host().Peerstore().Addrs(C))
	}
}

func mustInfo(t *testing.T, nd *node.Node, p peer.ID) node.PeerInfo {
	t.Helper()
	pi, ok := peerInfo(nd, p)
	if !ok {
		t.Fatalf("%s does not know %s", nd.Name(), p)
	}
	return pi
}

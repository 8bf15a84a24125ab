package node_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
)

// boundNet is 9 nodes, node 0 with connections.max 3 (1 neighbour), the
// others unbounded as far as 9 nodes go; discovery rounds a minute apart
// at most, so what trims node 0 between them is the keeper's own
// reaction. It returns once node 0 is within its bound.
func boundNet(t *testing.T) (*testnet.Net, *node.Node, func() int) {
	t.Helper()
	const n, maxConns = 9, 3
	net := testnet.Start(t, testnet.Options{N: n, Reviewer: testnet.At(1), Node: node.Options{DiscoveryPeriod: time.Minute},
		Configure: func(i int, c *node.Config) {
			if i == 0 {
				c.Connections.Max, c.Connections.Neighbours = maxConns, 1
			}
		}})
	// Every node counts every other a member (by their records): node 0,
	// within 3 connections, need not have met each (its bound refuses
	// connections it has no room for).
	wait.Until(t, 60*time.Second, "every node counts every other a member", func() error {
		for i := range n {
			for j := range n {
				if i != j && !net.Node(i).IsMember(net.IDs[j]) {
					return fmt.Errorf("node %d does not count node %d a member", i, j)
				}
			}
		}
		return nil
	})
	a := net.Node(0)
	// Open connections: one closed for room leaves the swarm's list a
	// moment after Close returns.
	conns := func() int {
		n := 0
		for _, c := range a.Host().Network().Conns() {
			if !c.IsClosed() {
				n++
			}
		}
		return n
	}
	wait.Until(t, 60*time.Second, "node 0 within connections.max", func() error {
		if c := conns(); c > maxConns {
			return fmt.Errorf("%d connections", c)
		}
		return nil
	})
	return net, a, conns
}

// sampleMost samples conns every millisecond until the returned stop is
// called, which returns the most seen.
func sampleMost(conns func() int) (stop func() int) {
	var most atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			if c := int64(conns()); c > most.Load() {
				most.Store(c)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() int {
		close(done)
		wg.Wait()
		return int(most.Load())
	}
}

// TestInboundWithinTheBound: every other member but the reviewer dials node 0 at once
// (connections.max 3). Sampled every millisecond, node 0 never holds more
// than 3: as each connection is secured, its connection gater takes it
// only within the bound (peers.Keeper.Admit), closing a less needed
// connection for it when one is past its grace, and refuses it otherwise
// (ferry_connections_refused_total); a refused member tries again later.
func TestInboundWithinTheBound(t *testing.T) {
	net, a, conns := boundNet(t)
	stop := sampleMost(conns)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ai := peer.AddrInfo{ID: a.Host().ID(), Addrs: a.Host().Addrs()}
	var dials sync.WaitGroup
	// Every member but the reviewer (node 1), whose connection closes any
	// other that is not busy, and is taken beyond the bound when all are.
	for i := 2; i < 9; i++ {
		// A refused dial may look like a connection to the dialer (its
		// handshake ends before the gater's word), closed at once.
		dials.Go(func() { _ = net.Node(i).Host().Connect(ctx, ai) })
	}
	dials.Wait()
	if m := stop(); m > 3 {
		t.Fatalf("node 0 held %d connections as 7 members dialed it (connections.max 3)", m)
	}
	refused := metricValue(t, a, "ferry_connections_refused_total")
	if refused == 0 {
		t.Fatal("7 dials into a node of connections.max 3, none refused by its gater")
	}
	t.Logf("connections refused %v, closed for room %v", refused, metricValue(t, a, "ferry_connections_closed_for_room_total"))
}

// TestDHTWalkWithinTheBound: node 0, within connections.max 3, walks the
// DHT for a key (as an advertisement of the rendezvous key does); sampled
// every millisecond, it never holds more than 3 connections: the DHT's
// dials take room (peers.BoundDials) and it asks the peers node 0 is
// connected to. Before, a walk dialed every node of this network.
func TestDHTWalkWithinTheBound(t *testing.T) {
	_, a, conns := boundNet(t)
	stop := sampleMost(conns)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The result is what the walk could reach within the bound; an error
	// (no peer reached) is no failure of the bound.
	_, _ = a.DHT().GetClosestPeers(ctx, "/ferry/test/walk")
	if m := stop(); m > 3 {
		t.Fatalf("node 0 held %d connections during a DHT walk (connections.max 3)", m)
	}
}

// TestASendersNewConnectionTakesRoom: node 0 (connections.max 3, in a
// network of 9, so the reviewer, node 1, is not kept by role) is full of
// connections other members opened and is not connected to the reviewer
// when it submits a request. As the connection to the reviewer opens, node
// 0 holds no more than 3: the sender's dial to the reviewer waits for
// room, and Keeper.Room closes a less needed connection for it
// (ferry_connections_closed_for_room_total); the reviewer gets the
// request.
func TestASendersNewConnectionTakesRoom(t *testing.T) {
	net, a, conns := boundNet(t)
	rv := net.IDs[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ai := peer.AddrInfo{ID: a.Host().ID(), Addrs: a.Host().Addrs()}
	// What node 0 holds as its own connection to the reviewer opens (other
	// members' dials to node 0 take room or are refused on their own: the
	// test watches the sender's dial).
	var atOpen atomic.Int64
	nb := &network.NotifyBundle{ConnectedF: func(nw network.Network, c network.Conn) {
		if c.RemotePeer() == rv && c.Stat().Direction == network.DirOutbound {
			atOpen.CompareAndSwap(0, int64(len(nw.Conns())))
		}
	}}
	a.Host().Network().Notify(nb)
	defer a.Host().Network().StopNotify(nb)
	// The reviewer may dial node 0 itself (a neighbour pick) before node
	// 0's sender does, and the request then needs no dial of node 0's:
	// the test tries again, a new request each time.
	for try := 1; atOpen.Load() == 0; try++ {
		if try > 5 {
			t.Fatal("in 5 tries node 0 never dialed the reviewer: the reviewer's own connection carried each request")
		}
		// Fill node 0 up with connections from members other than the
		// reviewer, and let go of its connection to the reviewer.
		wait.Until(t, 30*time.Second, "node 0 full (3 connections), none to the reviewer", func() error {
			_ = a.Host().Network().ClosePeer(rv)
			for i := 2; i < 9; i++ {
				if c := len(a.Host().Network().Conns()); c >= 3 {
					break
				}
				_ = net.Node(i).Host().Connect(ctx, ai)
			}
			if c := conns(); c != 3 || a.Host().Network().Connectedness(rv) == network.Connected {
				return fmt.Errorf("%d connections, the reviewer's %v", c, a.Host().Network().Connectedness(rv))
			}
			return nil
		})
		var r struct {
			OK      bool
			Request struct{ Origin string }
		}
		testnet.Request(t, net.NATS(0), "ferry.review.submit", fmt.Sprintf(`{"type":"insert","table_name":"places","table_id":%d,"data":{"name":"p"}}`, try), &r)
		if !r.OK {
			t.Fatalf("submit at node 0 refused")
		}
		wait.Until(t, 30*time.Second, "the reviewer holds node 0's request", func() error {
			_, err := net.Node(1).Review().RequestByOrigin(r.Request.Origin)
			return err
		})
	}
	m, closed := atOpen.Load(), metricValue(t, a, "ferry_connections_closed_for_room_total")
	if m > 3 {
		t.Fatalf("node 0 held %d connections as its connection to the reviewer opened (connections.max 3; connections closed for room: %v)", m, closed)
	}
	t.Logf("as the connection to the reviewer opened node 0 held %d; connections closed for room: %v", m, closed)
}

// metricValue is the value of nd's unlabelled counter or gauge name (0 if
// it has none).
func metricValue(t *testing.T, nd *node.Node, name string) float64 {
	t.Helper()
	mfs, err := nd.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		m := mf.GetMetric()[0]
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
	}
	return 0
}

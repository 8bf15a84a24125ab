package node_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	net.WaitMembers(60 * time.Second)
	a := net.Node(0)
	conns := func() int { return len(a.Host().Network().Conns()) }
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

// TestAboveTheBoundTrimmedAtOnce: every other member dials node 0 at once
// (connections.max 3). Inbound connections are not refused, but node 0 is
// back within its bound within seconds, not at its next discovery round,
// nor once the new connections are 10 s old (trimGrace): a connection
// with a member that carries nothing goes once past a short grace.
func TestAboveTheBoundTrimmedAtOnce(t *testing.T) {
	net, a, conns := boundNet(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ai := peer.AddrInfo{ID: a.Host().ID(), Addrs: a.Host().Addrs()}
	var dials sync.WaitGroup
	for i := 1; i < 9; i++ {
		dials.Go(func() { _ = net.Node(i).Host().Connect(ctx, ai) })
	}
	dials.Wait()
	wait.Until(t, 5*time.Second, "node 0 back within connections.max", func() error {
		if c := conns(); c > 3 {
			return fmt.Errorf("%d connections", c)
		}
		return nil
	})
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

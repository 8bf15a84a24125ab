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

// TestConnectionsMaxHoldsAsConnectionsOpen: node 0 has connections.max 3;
// once it is within the bound, every other member dials it at once. Its
// connections never go above 3 (sampled as fast as the network answers,
// the dials under way), the dials it could not make room for are refused
// at their handshake, and ferry_connections_refused_total counts them.
// Before connections were admitted as they open, node 0 held all of them
// until its next discovery round.
func TestConnectionsMaxHoldsAsConnectionsOpen(t *testing.T) {
	const n, maxConns = 9, 3
	net := testnet.Start(t, testnet.Options{N: n, Reviewer: testnet.At(1), Configure: func(i int, c *node.Config) {
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

	var most atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c := int64(conns())
			if c > most.Load() {
				most.Store(c)
			}
			select {
			case <-stop:
				return
			default:
				time.Sleep(time.Millisecond) // a sample every millisecond, as fast as it matters
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ai := peer.AddrInfo{ID: a.Host().ID(), Addrs: a.Host().Addrs()}
	var refused atomic.Int64
	var dials sync.WaitGroup
	for i := 1; i < n; i++ {
		dials.Go(func() {
			if err := net.Node(i).Host().Connect(ctx, ai); err != nil {
				refused.Add(1)
			}
		})
	}
	dials.Wait()
	close(stop)
	wg.Wait()
	if m := most.Load(); m > maxConns {
		t.Fatalf("node 0 held %d connections (connections.max %d)", m, maxConns)
	}
	if refused.Load() == 0 {
		t.Fatalf("all %d members connected to node 0 (connections.max %d): nothing was refused", n-1, maxConns)
	}
	if got := metricValue(t, a, "ferry_connections_refused_total"); got < 1 {
		t.Fatalf("ferry_connections_refused_total %v after %d refused dials", got, refused.Load())
	}
	t.Logf("%d of %d dials refused; node 0 held at most %d connections", refused.Load(), n-1, most.Load())
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
		return m.GetGauge().GetValue()
	}
	return 0
}

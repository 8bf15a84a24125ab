package peers

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// errNoRoom: a DHT dial that would take the node above connections.max.
var errNoRoom = errors.New("no room under connections.max for a DHT dial")

// BoundDials is the host the node's DHT and gossipsub work with: their
// dials take room under connections.max. A Kademlia walk (an advertisement of the
// rendezvous key, a lookup) dials some twenty peers, the same ones closest
// to the key for every node; unbounded, each walk took a node, and the
// peers closest to the key, above the bound until the next trim. Here a
// dial to a peer this node holds no connection with goes only while there
// is room: the open connections, the dials in flight and the connections
// other peers are opening, counted by the keeper (Keeper.reserve, once the
// node's keeper is built; gate carries it) are fewer than max; else
// it fails at once, and the walk counts the peer unreachable and goes on
// with the peers this node is connected to (the DHT forgets that peer from
// its routing table until a connection brings it back). Streams on
// connections that are open, and everything of the node's other than the
// DHT and gossipsub, are not affected: a sender's new connection asks
// Keeper.Room. Gossipsub gets the same host: it opens its stream to a peer
// as the peer connects, and a connection closed in between was dialed
// again outside the bound (the reviewer at 49 in a 1,000-node start);
// within it, the dial goes (a host that never dialed for gossipsub took
// full membership of 300 nodes on internet-like links to 58-68 s after
// the last start, against 47 s), and so do the connects of peer exchange.
func BoundDials(h host.Host, gate *Gate, max int) host.Host {
	return &boundDials{Host: h, gate: gate, max: max}
}

type boundDials struct {
	host.Host
	gate     *Gate
	max      int
	inflight atomic.Int64
}

// take reserves room for one dial to p; false when there is none. Once
// the node's keeper is built the room is the keeper's (Keeper.reserve,
// counted with the dials and inbound connections it let in); before, the
// open connections and the DHT's own dials in flight. The returned func
// gives the room back after the dial.
func (b *boundDials) take(p peer.ID) (func(err error), bool) {
	if k := b.gate.keeper.Load(); k != nil {
		if !k.reserve(p) {
			return nil, false
		}
		return func(err error) {
			if err != nil {
				k.unreserve(p)
			}
		}, true
	}
	if int(b.inflight.Add(1))+len(b.Host.Network().Conns()) > b.max {
		b.inflight.Add(-1)
		return nil, false
	}
	return func(error) { b.inflight.Add(-1) }, true
}

func (b *boundDials) Connect(ctx context.Context, ai peer.AddrInfo) error {
	if b.Host.Network().Connectedness(ai.ID) == network.Connected {
		return nil
	}
	done, ok := b.take(ai.ID)
	if !ok {
		return fmt.Errorf("connect %s: %w", ai.ID, errNoRoom)
	}
	err := b.Host.Connect(ctx, ai)
	done(err)
	return err
}

func (b *boundDials) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	if b.Host.Network().Connectedness(p) == network.Connected {
		// Over the connection found: one closed meanwhile is not dialed
		// again outside the bound (the walk goes on without p).
		return b.Host.NewStream(network.WithNoDial(ctx, "dht: connected"), p, pids...)
	}
	done, ok := b.take(p)
	if !ok {
		return nil, fmt.Errorf("stream to %s: %w", p, errNoRoom)
	}
	// One dial for the room taken, then the stream over what it opened:
	// a stream that dials would dial again, outside the bound, if that
	// connection closed before the stream opened.
	err := b.Host.Connect(ctx, peer.AddrInfo{ID: p})
	done(err)
	if err != nil {
		return nil, fmt.Errorf("stream to %s: %w", p, err)
	}
	return b.Host.NewStream(network.WithNoDial(ctx, "bound dial done"), p, pids...)
}

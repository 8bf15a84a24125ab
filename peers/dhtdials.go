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

// BoundDials is the host the node's DHT works with: the DHT's dials take
// room under connections.max. A Kademlia walk (an advertisement of the
// rendezvous key, a lookup) dials some twenty peers, the same ones closest
// to the key for every node; unbounded, each walk took a node, and the
// peers closest to the key, above the bound until the next trim. Here a
// dial to a peer this node holds no connection with goes only while the
// open connections and the DHT's dials in flight are fewer than max; else
// it fails at once, and the walk counts the peer unreachable and goes on
// with the peers this node is connected to (the DHT forgets that peer from
// its routing table until a connection brings it back). Streams on
// connections that are open, and everything of the node's other than the
// DHT, are not affected: a sender's new connection asks Keeper.Room.
func BoundDials(h host.Host, max int) host.Host { return &boundDials{Host: h, max: max} }

type boundDials struct {
	host.Host
	max      int
	inflight atomic.Int64
}

// take reserves room for one dial; false when there is none.
func (b *boundDials) take() bool {
	if int(b.inflight.Add(1))+len(b.Host.Network().Conns()) > b.max {
		b.inflight.Add(-1)
		return false
	}
	return true
}

func (b *boundDials) Connect(ctx context.Context, ai peer.AddrInfo) error {
	if b.Host.Network().Connectedness(ai.ID) == network.Connected {
		return b.Host.Connect(ctx, ai)
	}
	if !b.take() {
		return fmt.Errorf("connect %s: %w", ai.ID, errNoRoom)
	}
	defer b.inflight.Add(-1)
	return b.Host.Connect(ctx, ai)
}

func (b *boundDials) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	if b.Host.Network().Connectedness(p) == network.Connected {
		return b.Host.NewStream(ctx, p, pids...)
	}
	if !b.take() {
		return nil, fmt.Errorf("stream to %s: %w", p, errNoRoom)
	}
	defer b.inflight.Add(-1)
	return b.Host.NewStream(ctx, p, pids...)
}

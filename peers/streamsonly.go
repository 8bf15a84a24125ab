package peers

import (
	"context"
	"fmt"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// StreamsOnly is the host the node's gossipsub works with: its streams go
// over connections that are open and never dial. Gossipsub opens its
// stream to a peer as that peer connects; when the connection closed in
// between (trimmed, closed for room), the host would dial the peer again,
// outside connections.max (the reviewer at 49 in a 1,000-node start).
// Nor does it connect: gossipsub dials the peers another peer suggests
// when it prunes this node from its mesh (peer exchange; Ferry's nodes
// send none, another implementation may). Gossipsub needs no connection
// of its own: the mesh is built among the peers the node is connected to.
func StreamsOnly(h host.Host) host.Host { return &streamsOnly{Host: h} }

type streamsOnly struct{ host.Host }

func (s *streamsOnly) Connect(_ context.Context, ai peer.AddrInfo) error {
	if s.Network().Connectedness(ai.ID) == network.Connected {
		return nil
	}
	return fmt.Errorf("gossipsub does not dial %s: %w", ai.ID, network.ErrNoConn)
}

func (s *streamsOnly) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	return s.Host.NewStream(network.WithNoDial(ctx, "gossipsub: connected peers only"), p, pids...)
}

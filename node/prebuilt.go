package node

import (
	"context"
	"fmt"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	routedhost "github.com/libp2p/go-libp2p/p2p/host/routed"

	"github.com/ferrynet/ferry/peers"
)

// adoptHost gates a prebuilt host (Options.Host) with the peer book, since
// it has no connection gater of ours (peers.Gate.Prebuilt: dials, streams
// and connections of refused peers are refused), and builds the DHT on it;
// the result is routed as buildHost's is (a stream to a peer with unknown
// addresses looks them up in the DHT). The config's listen addresses,
// private network key and transports are the prebuilt host's business and
// are not used.
func adoptHost(ctx context.Context, c Config, h host.Host, gate *peers.Gate) (host.Host, *dht.IpfsDHT, error) {
	g := gate.Prebuilt(h)
	kad, err := dht.New(ctx, peers.BoundDials(g, gate, c.Connections.Max), dhtOptions(c)...)
	if err != nil {
		return nil, nil, fmt.Errorf("dht on the prebuilt host: %w", err)
	}
	gate.DropRefused(h)
	return routedhost.Wrap(g, kad), kad, nil
}

package node

import (
	"context"
	"fmt"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	routedhost "github.com/libp2p/go-libp2p/p2p/host/routed"
)

// A prebuilt host (Options.Host: libp2p's mocknet in tests and the scale
// bench) has no connection gater of ours, so the peer book gates it the
// other way round, with the same answers as the gater of buildHost:
//
//   - dials: Connect and NewStream to a refused peer fail before dialing
//     (InterceptPeerDial, InterceptAddrDial);
//   - connections: a connection with a refused peer, either direction, is
//     closed as soon as the network reports it (InterceptSecured);
//   - streams: every stream handler set on the node's host first resets a
//     stream whose peer is refused, so nothing a refused peer sends in the
//     moment before its connection closes reaches a service.
//
// Handlers the prebuilt host set before New (libp2p's identify and ping)
// are not wrapped: they answer a refused peer until its connection closes,
// as they would not under the gater. Nothing of Ferry's is among them.

// adoptHost gates h with the book and builds the DHT on it; the result is
// routed as buildHost's is (a stream to a peer with unknown addresses looks
// them up in the DHT). The config's listen addresses, private network key
// and transports are the prebuilt host's business and are not used.
func adoptHost(ctx context.Context, c Config, h host.Host, book *peerBook,
	admit func(protocol.ID, network.StreamHandler) network.StreamHandler) (host.Host, *dht.IpfsDHT, error) {
	g := &gatedHost{Host: h, book: book, admit: admit}
	kad, err := dht.New(ctx, g, dhtOptions(c)...)
	if err != nil {
		return nil, nil, fmt.Errorf("dht on the prebuilt host: %w", err)
	}
	h.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, conn network.Conn) {
		if book.refused(conn.RemotePeer()) {
			_ = conn.Close()
		}
	}})
	// Connections made before the notifiee (a test that linked and
	// connected the hosts first).
	for _, conn := range h.Network().Conns() {
		if book.refused(conn.RemotePeer()) {
			_ = conn.Close()
		}
	}
	return routedhost.Wrap(g, kad), kad, nil
}

// gatedHost is a prebuilt host behind the peer book (see above).
type gatedHost struct {
	host.Host
	book  *peerBook
	admit func(protocol.ID, network.StreamHandler) network.StreamHandler // gateStream (admission.go)
}

func (g *gatedHost) Connect(ctx context.Context, ai peer.AddrInfo) error {
	if g.book.refused(ai.ID) {
		return fmt.Errorf("connect %s: refused by the peer book", ai.ID)
	}
	return g.Host.Connect(ctx, ai)
}

func (g *gatedHost) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	if g.book.refused(p) {
		return nil, fmt.Errorf("stream to %s: refused by the peer book", p)
	}
	return g.Host.NewStream(ctx, p, pids...)
}

func (g *gatedHost) SetStreamHandler(pid protocol.ID, h network.StreamHandler) {
	g.Host.SetStreamHandler(pid, g.gate(g.admit(pid, h)))
}

func (g *gatedHost) SetStreamHandlerMatch(pid protocol.ID, m func(protocol.ID) bool, h network.StreamHandler) {
	g.Host.SetStreamHandlerMatch(pid, m, g.gate(g.admit(pid, h)))
}

func (g *gatedHost) gate(h network.StreamHandler) network.StreamHandler {
	return func(s network.Stream) {
		if g.book.refused(s.Conn().RemotePeer()) {
			_ = s.Reset()
			return
		}
		h(s)
	}
}

package peers

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
)

// Gossipsub's host opens streams over open connections only: to a peer
// whose addresses it knows but holds no connection with, a stream and a
// connect fail (the connect with ErrNoConn) and no connection opens; once connected,
// both work.
func TestStreamsOnlyNeverDials(t *testing.T) {
	a, b := localHost(t), localHost(t)
	const proto = "/ferry/test/streams-only"
	b.SetStreamHandler(proto, func(s network.Stream) { _ = s.Close() })
	a.Peerstore().AddAddrs(b.ID(), b.Addrs(), peerstore.PermanentAddrTTL)
	g := StreamsOnly(a)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := g.NewStream(ctx, b.ID(), proto); err == nil {
		t.Fatal("a stream to a peer not connected opened")
	}
	if err := g.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); !errors.Is(err, network.ErrNoConn) {
		t.Fatalf("a connect to a peer not connected: %v; want ErrNoConn", err)
	}
	if c := a.Network().Connectedness(b.ID()); c == network.Connected {
		t.Fatal("gossipsub's host dialed a peer")
	}
	if err := a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatal(err)
	}
	if err := g.Connect(ctx, peer.AddrInfo{ID: b.ID()}); err != nil {
		t.Fatalf("a connect to a connected peer: %v", err)
	}
	s, err := g.NewStream(ctx, b.ID(), proto)
	if err != nil {
		t.Fatalf("a stream over the open connection: %v", err)
	}
	_ = s.Close()
}

package peers

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
)

// The host the DHT and gossipsub work with dials only within the bound:
// with no room (here before any keeper, max 1 and one connection open) a
// stream to a peer not connected fails and opens no connection; with
// room it dials once and opens the stream over that connection; over an
// open connection a stream needs no room.
func TestBoundDialsStreamsWithinTheBound(t *testing.T) {
	a, b, c := localHost(t), localHost(t), localHost(t)
	const proto = "/ferry/test/bound-dials"
	b.SetStreamHandler(proto, func(s network.Stream) { _ = s.Close() })
	a.Peerstore().AddAddrs(b.ID(), b.Addrs(), peerstore.PermanentAddrTTL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, peer.AddrInfo{ID: c.ID(), Addrs: c.Addrs()}); err != nil {
		t.Fatal(err)
	}
	full := BoundDials(a, &Gate{}, 1)
	if _, err := full.NewStream(ctx, b.ID(), proto); err == nil {
		t.Fatal("a stream that needed a dial opened with no room under the bound")
	}
	if a.Network().Connectedness(b.ID()) == network.Connected {
		t.Fatal("a dial went with no room under the bound")
	}
	room := BoundDials(a, &Gate{}, 2)
	s, err := room.NewStream(ctx, b.ID(), proto)
	if err != nil {
		t.Fatalf("a stream with room for its dial: %v", err)
	}
	_ = s.Close()
	if n := len(a.Network().ConnsToPeer(b.ID())); n != 1 {
		t.Fatalf("%d connections to the peer after one dial", n)
	}
	if s, err = full.NewStream(ctx, b.ID(), proto); err != nil {
		t.Fatalf("a stream over an open connection, the bound full: %v", err)
	}
	_ = s.Close()
}

package peers

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// localHost is a libp2p host on 127.0.0.1 (a port of the kernel's
// choosing), closed at cleanup.
func localHost(t *testing.T) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// As a DHT walk ends (an advertisement of the rendezvous key, a lookup of
// it), the connections the walk opened and nothing else needs are closed
// at once, not a minute later by trim: a connection that was open before
// the walk stays, and so do a partner's, a chosen neighbour's and one the
// other side opened.
func TestWalkConnectionsClosedWhenTheWalkEnds(t *testing.T) {
	self := localHost(t)
	older, partner, neighbour, walked, dialer := localHost(t), localHost(t), localHost(t), localHost(t), localHost(t)
	book, _ := diskBook(t, t.TempDir(), Config{Name: "self", Network: "net", Reviewer: self.ID(), Partners: []peer.ID{partner.ID()}}, self.ID())
	k := &Keeper{cfg: Config{MaxConns: 48, Neighbours: 8}, self: self.ID(), host: self, book: book,
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), neighbourSet: map[peer.ID]struct{}{}, dialing: map[peer.ID]time.Time{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	connect := func(from, to host.Host) {
		t.Helper()
		if err := from.Connect(ctx, peer.AddrInfo{ID: to.ID(), Addrs: to.Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	connect(self, older)
	before := k.connectedSet()
	// The walk's dials, and a connection another peer opens meanwhile.
	for _, h := range []host.Host{partner, neighbour, walked} {
		connect(self, h)
	}
	k.choose(neighbour.ID(), true)
	connect(dialer, self)
	k.closeWalk(before)
	for _, c := range []struct {
		h    host.Host
		name string
		want network.Connectedness
	}{
		{older, "connected before the walk", network.Connected},
		{partner, "a partner", network.Connected},
		{neighbour, "a chosen neighbour", network.Connected},
		{dialer, "a peer that dialed this node", network.Connected},
		{walked, "a peer only the walk dialed", network.NotConnected},
	} {
		if got := self.Network().Connectedness(c.h.ID()); got != c.want {
			t.Errorf("%s: %v after the walk, want %v", c.name, got, c.want)
		}
	}
}

package testnet

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
)

// A peer added again under the same key (a node tried again after a failed
// start) is reached, and reaches others, through the linker even when a
// link to its first, closed host is left: the case that left retried nodes
// of a 1,000-node run isolated.
func TestLinkerDropsLinksToAClosedHost(t *testing.T) {
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	add := func(k crypto.PrivKey, addr string) host.Host {
		h, err := mn.AddPeer(k, ma.StringCast(addr))
		if err != nil {
			t.Fatal(err)
		}
		return &linker{Host: h, mn: mn}
	}
	key := func() crypto.PrivKey {
		k, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	ka, kb, kc := key(), key(), key()
	a, b1, c := add(ka, "/ip4/10.0.0.1/tcp/4242"), add(kb, "/ip4/10.0.0.2/tcp/4242"), add(kc, "/ip4/10.0.0.3/tcp/4242")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info := func(h host.Host) peer.AddrInfo { return peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()} }
	if err := a.Connect(ctx, info(b1)); err != nil {
		t.Fatal(err)
	}
	// b's first host is linked to c too; it closes (the links to it stay:
	// nothing unlinked them), and b comes back under the same key.
	if _, err := mn.LinkPeers(b1.ID(), c.ID()); err != nil {
		t.Fatal(err)
	}
	_ = b1.Close()
	WaitFor(t, 5*time.Second, "a sees b's first host gone", func() bool {
		return a.Network().Connectedness(b1.ID()) != network.Connected
	})
	b2 := add(kb, "/ip4/10.0.0.2/tcp/4242")
	if err := a.Connect(ctx, info(b2)); err != nil {
		t.Fatalf("a dials b's new host: %v", err)
	}
	WaitFor(t, 5*time.Second, "b's new host has a's connection", func() bool {
		return b2.Network().Connectedness(a.ID()) == network.Connected
	})
	// The new host dials c, to which only its predecessor was linked.
	if err := b2.Connect(ctx, info(c)); err != nil {
		t.Fatalf("b's new host dials c: %v", err)
	}
	WaitFor(t, 5*time.Second, "c has b's new host's connection", func() bool {
		return c.Network().Connectedness(b2.ID()) == network.Connected
	})
}

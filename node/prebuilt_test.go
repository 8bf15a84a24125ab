package node_test

import (
	"context"
	"crypto/rand"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// helloTo opens a hello stream from h to p, sends a hello of network and
// reads the answer.
func helloTo(ctx context.Context, h host.Host, p peer.ID, network string) (*pb.Hello, error) {
	s, err := h.NewStream(ctx, p, protocols.Hello)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	fw := protocols.NewFrameWriter(s, 4096)
	if err := fw.Write(&pb.Hello{Network: network, Name: "S"}); err != nil {
		return nil, err
	}
	if err := fw.Flush(); err != nil {
		return nil, err
	}
	theirs := &pb.Hello{}
	if err := protocols.NewFrameReader(s, 4096).Read(theirs); err != nil {
		return nil, err
	}
	return theirs, nil
}

// TestPrebuiltHostGates: nodes on prebuilt hosts (one mocknet) become
// members of each other, and the peer book still gates them as the
// connection gater gates a built host: a refused peer's connections are
// closed, its streams reset, and the node does not dial it; once allowed
// again it is answered.
func TestPrebuiltHostGates(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Mocknet: true})
	net.WaitMembers(30 * time.Second)
	nA := net.Node(0)
	A := net.IDs[0]

	// A stranger on the same mocknet, linked to A.
	mn := net.Mocknet()
	s, err := mn.GenPeer()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mn.LinkPeers(s.ID(), A); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	nw := nA.Config().Network
	if h, err := helloTo(ctx, s, A, nw); err != nil || h.Name != "A" {
		t.Fatalf("hello to A before the block: %v %v", h, err)
	}

	nA.CutLink(s.ID())
	testnet.WaitFor(t, 10*time.Second, "A closed the stranger's connection", func() bool {
		return s.Network().Connectedness(A) != network.Connected
	})
	// The stranger may still reach the mocknet, but A closes the
	// connection and resets what it opens.
	if h, err := helloTo(ctx, s, A, nw); err == nil {
		t.Fatalf("hello to A while blocked answered: %v", h)
	}
	testnet.WaitFor(t, 10*time.Second, "A holds no connection to the stranger", func() bool {
		return len(nA.Host().Network().ConnsToPeer(s.ID())) == 0
	})
	// A does not dial it.
	if err := nA.Host().Connect(ctx, peer.AddrInfo{ID: s.ID(), Addrs: s.Addrs()}); err == nil {
		t.Fatal("A connected to a blocked peer")
	}
	if _, err := nA.Host().NewStream(ctx, s.ID(), protocols.Hello); err == nil {
		t.Fatal("A opened a stream to a blocked peer")
	}

	nA.HealLink(s.ID())
	testnet.WaitFor(t, 10*time.Second, "A answers the stranger again", func() bool {
		h, err := helloTo(ctx, s, A, nw)
		return err == nil && h.Name == "A"
	})
}

// closeSpy records whether its host was closed.
type closeSpy struct {
	host.Host
	closed atomic.Bool
}

func (c *closeSpy) Close() error {
	c.closed.Store(true)
	return c.Host.Close()
}

// TestPrebuiltHostIdentity: a host whose identity is not the home's is
// refused, and closed (the node owns it from New on).
func TestPrebuiltHostIdentity(t *testing.T) {
	home := node.Home{Dir: t.TempDir()}
	if _, err := home.Init(node.InitOptions{Name: "A"}); err != nil {
		t.Fatal(err)
	}
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	other, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h, err := mn.AddPeer(other, ma.StringCast("/ip4/10.0.0.1/tcp/4242"))
	if err != nil {
		t.Fatal(err)
	}
	spy := &closeSpy{Host: h}
	c := node.Default()
	c.Name = "A"
	c.NATS.Listen, c.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0"
	if _, err := node.New(c, home, node.Options{Logger: testnet.Logger(), Host: spy}); err == nil {
		t.Fatal("New took a host of another identity")
	}
	if !spy.closed.Load() {
		t.Fatal("New failed and left the host it was given open")
	}
}

// TestPrebuiltHostRestart: a node of a mocknet network stops and starts
// again on a new host of the same identity, and meets the others again.
func TestPrebuiltHostRestart(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Mocknet: true})
	net.WaitMembers(30 * time.Second)
	net.Restart(1)
	net.WaitMembers(30 * time.Second)
	if got := len(net.Node(1).Host().Network().Conns()); got == 0 {
		t.Fatal("the restarted node has no connection")
	}
}

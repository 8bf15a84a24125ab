package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

func pskFile(t *testing.T) string {
	t.Helper()
	var k [32]byte
	_, _ = rand.Read(k[:])
	p := filepath.Join(t.TempDir(), "swarm.key")
	if err := os.WriteFile(p, []byte("/key/swarm/psk/1.0.0/\n/base16/\n"+hex.EncodeToString(k[:])+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPrivateNetwork: nodes sharing a pre-shared key form a network and
// propagate; a node with another key cannot even connect.
func TestPrivateNetwork(t *testing.T) {
	key, other := pskFile(t), pskFile(t)
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{0: {1}, 1: {0}},
		Configure: func(i int, c *node.Config) {
			c.PrivateNetworkKey = key
			if i == 2 {
				c.PrivateNetworkKey = other
			}
		}})
	testnet.WaitFor(t, 20*time.Second, "A and B are members of each other", func() bool {
		return net.Node(0).IsMember(net.IDs[1]) && net.Node(1).IsMember(net.IDs[0])
	})
	a := net.NATS(0)
	c := collect(t, net.NATS(1), "ferry.resource.created.>")
	must(t, a, `{"action":"create","data_type":"vm","payload":{"id":"p1"}}`)
	testnet.WaitFor(t, 20*time.Second, "B receives over the private network", func() bool { return c.count() == 1 })
	// With another key the handshake never completes: bounded by the timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := net.Node(2).Host().Connect(ctx, peer.AddrInfo{ID: net.IDs[0], Addrs: net.Node(0).Host().Addrs()})
	if err == nil {
		t.Fatal("a node with another private network key connected")
	}
	if len(net.Node(0).Members()) != 1 {
		t.Fatalf("A counts %d members", len(net.Node(0).Members()))
	}
}

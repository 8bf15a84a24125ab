package node_test

import (
	"strings"
	"testing"

	"github.com/ferrynet/ferry/node"
)

// A partners entry is a peer id or a multiaddr ending in /p2p/<peer id>
// (the kept address of a partner that is not a Ferry node); an address
// without the peer id is refused, naming the entry and both forms.
func TestPartnersTakeAddresses(t *testing.T) {
	id := newPeerID(t).String()
	c := node.Default()
	c.Partners = []string{id, "/ip4/127.0.0.1/tcp/4101/p2p/" + id}
	if err := c.Validate(); err != nil {
		t.Fatalf("a partner given as a multiaddr with /p2p/ is refused: %v", err)
	}
	c.Partners = []string{id, "/ip4/127.0.0.1/tcp/4101"}
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "partners[1]") || !strings.Contains(err.Error(), "multiaddr ending in /p2p/<peer id>") {
		t.Fatalf("an address without its peer id: %v; want an error naming partners[1] and the forms taken", err)
	}
}

package node

import (
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/peers"
)

// The peer side of the node (the peer book, hello, the admission gate,
// membership records, discovery and bounded connections) is the peers
// package; this file is what the node hands it and asks of it.

// DefaultDiscoveryPeriod is the longest wait between discovery rounds
// (Options.DiscoveryPeriod).
const DefaultDiscoveryPeriod = peers.DefaultDiscoveryPeriod

// peersConfig is what the peers package takes of c, parsed (New validated
// c first).
func peersConfig(c Config) peers.Config {
	pc := peers.Config{Name: c.Name, Network: c.Network, Version: Version,
		Neighbours: c.Connections.Neighbours, MaxConns: c.Connections.Max}
	if c.Reviewer != "" {
		pc.Reviewer, _ = peer.Decode(c.Reviewer)
	}
	for _, s := range c.Partners {
		id, _ := peer.Decode(s)
		pc.Partners = append(pc.Partners, id)
	}
	for _, s := range c.Members {
		id, _ := peer.Decode(s)
		pc.Members = append(pc.Members, id)
	}
	for _, s := range c.Bootstrap {
		if ai, err := peer.AddrInfoFromString(s); err == nil {
			pc.Bootstrap = append(pc.Bootstrap, *ai)
		}
	}
	return pc
}

// metMember runs each time a member says hello (each new connection):
// what is owed it is resent at once, and catch-up asks it at once.
func (n *Node) metMember(p peer.ID) {
	n.sender.Kick(p)
	n.catchup.Connected(p)
}

// peerHolds hears, in hello, how far p holds this node's changes: the
// restore guard checks it against the store, and a receiver that holds
// less than it acknowledged gets it again.
func (n *Node) peerHolds(p peer.ID, v uint64) {
	if n.restore.PeerHolds(p, v) {
		n.sender.HoldsAtMost(p, v)
	}
}

// MembersKnown is the number of members with a signed record held, this
// node included.
func (n *Node) MembersKnown() int { return n.members.Known() }

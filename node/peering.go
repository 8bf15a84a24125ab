package node

import (
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"

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
		Neighbours: c.Connections.Neighbours, MaxConns: c.Connections.Max, Lifetime: c.MemberLifetimeValue()}
	if r := c.ReviewerID(); r != "" {
		pc.Reviewer, _ = peer.Decode(r)
	}
	for _, r := range c.ReviewGroup() {
		id, _ := peer.Decode(r)
		pc.Reviewers = append(pc.Reviewers, id)
	}
	for _, s := range c.Partners {
		ai, _ := peers.ParsePartner(s)
		pc.Partners = append(pc.Partners, ai.ID)
		if len(ai.Addrs) > 0 {
			if pc.PartnerAddrs == nil {
				pc.PartnerAddrs = map[peer.ID][]ma.Multiaddr{}
			}
			pc.PartnerAddrs[ai.ID] = append(pc.PartnerAddrs[ai.ID], ai.Addrs...)
		}
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

// keepPartnerAddrs puts the addresses partners were given with (config,
// operator) into the peerstore for good: a partner that is not a Ferry node
// sends no membership record or hello to learn them from, and the sender
// and discovery dial it by peer id.
func (n *Node) keepPartnerAddrs() {
	for p, addrs := range n.book.PartnerAddrs() {
		n.host.Peerstore().AddAddrs(p, addrs, peerstore.PermanentAddrTTL)
	}
}

package peers

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Config is what this package takes of the node's configuration, parsed:
// the node builds it from its Config once that is valid (ferry.yaml stays
// the node's business).
type Config struct {
	// Name is this node's label (name), sent in hello.
	Name string
	// Network is the network name (network): peers that present another
	// are refused.
	Network string
	// Version is Ferry's release, sent in hello and in membership records.
	Version string
	// Reviewer is the configured reviewer (reviewer); "" when none.
	Reviewer peer.ID
	// Reviewers is the review group (reviewers, or [reviewer]): decisions
	// signed by any of them are the group's. A node in it is its own
	// Reviewer.
	Reviewers []peer.ID
	// Partners are the configured partners (partners); the operator's
	// changes, kept in the store, apply over them.
	Partners []peer.ID
	// PartnerAddrs are the addresses given with partners (entries of
	// partners that are multiaddrs ending in /p2p/<peer id>): kept in the
	// peerstore for good, so a partner that is not a Ferry node (no
	// membership record, no hello) is reached (partners.go).
	PartnerAddrs map[peer.ID][]ma.Multiaddr
	// Members, when set (members), are the only peers that may be members;
	// empty: anyone who presents the network.
	Members []peer.ID
	// Lifetime is how long a membership record lasts (member_lifetime;
	// 0: membership.DefaultLifetime): this node renews its own every third
	// of it, and a member whose record expired left (leave.go).
	Lifetime time.Duration
	// Bootstrap are the peers dialed while the node has no neighbours
	// (bootstrap).
	Bootstrap []peer.AddrInfo
	// Neighbours is how many other members are kept connected
	// (connections.neighbours).
	Neighbours int
	// MaxConns bounds the open connections (connections.max): above it the
	// least needed are closed.
	MaxConns int
}

package node

import (
	"context"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/internal/promreg"
	"github.com/ferrynet/ferry/protocols"
)

// Bounded connections (config section connections): partners and the
// reviewer stay connected and protected; up to `neighbours` other members
// are kept connected for gossip (membership records, decisions); any other
// member is dialed by the sender when there is something to send it, and
// above `max` open connections the least needed ones are closed.

// connTag protects partners, the reviewer and the chosen neighbours in the
// connection manager.
const (
	connTag      = "ferry"
	neighbourTag = "ferry-neighbour"
)

// special reports whether p is kept connected by role: a partner or the
// reviewer.
func (n *Node) special(p peer.ID) bool {
	return n.book.IsPartner(p) || p == n.book.Reviewer()
}

// keepReviewer reports whether discovery keeps a connection to the
// reviewer: while the network has fewer members than connections.max (the
// reviewer can hold one connection from each). In a bigger network the
// reviewer is dialed when there is something to send it (requests,
// applied reports) and decisions reach members by gossip and their
// neighbours (spread/, sync/), or the reviewer would carry a connection
// from every member.
func (n *Node) keepReviewer() bool {
	return len(n.book.Members()) < n.cfg.Connections.Max
}

// neighbours lists the connected members that are neither partners nor the
// reviewer.
func (n *Node) neighbours() []peer.ID {
	var out []peer.ID
	for _, p := range n.host.Network().Peers() {
		if p != n.id && !n.special(p) && n.book.IsMember(p) {
			out = append(out, p)
		}
	}
	return out
}

// keepNeighbours dials known members, at random, until `neighbours` of them
// are connected; it reports how many are still lacking.
func (n *Node) keepNeighbours(ctx context.Context) int {
	want := n.cfg.Connections.Neighbours
	have := n.neighbours()
	// `want` of the connected members are this node's neighbours
	// (protected; those protected already stay so); members connected
	// beyond them are not, so the connection manager and trim may close
	// them.
	cm := n.host.ConnManager()
	kept := 0
	for _, p := range have {
		if cm.IsProtected(p, neighbourTag) {
			if kept < want {
				kept++
			} else {
				cm.Unprotect(p, neighbourTag)
			}
		}
	}
	for _, p := range have {
		if kept < want && !cm.IsProtected(p, neighbourTag) {
			cm.Protect(p, neighbourTag)
			kept++
		}
	}
	lacking := want - len(have)
	if lacking <= 0 {
		return 0
	}
	var cands []peer.ID
	for _, p := range n.book.Members() {
		if p == n.id || n.special(p) || n.book.refused(p) || n.host.Network().Connectedness(p) == network.Connected ||
			len(n.host.Peerstore().Addrs(p)) == 0 {
			continue
		}
		cands = append(cands, p)
	}
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	for _, p := range cands {
		if lacking == 0 || ctx.Err() != nil {
			break
		}
		if err := n.host.Connect(ctx, peer.AddrInfo{ID: p}); err != nil {
			n.log.Debug("neighbour unreachable", "peer", p, "err", err)
			continue
		}
		n.host.ConnManager().Protect(p, neighbourTag)
		lacking--
	}
	return lacking
}

// trimGrace keeps a new connection from trim: a joining node completes
// hello and pulls the membership records over its first connection.
const trimGrace = 10 * time.Second

// young reports whether a connection to p opened within trimGrace.
func (n *Node) young(p peer.ID) bool {
	for _, c := range n.host.Network().ConnsToPeer(p) {
		if time.Since(c.Stat().Opened) < trimGrace {
			return true
		}
	}
	return false
}

// busy reports whether a connection to p carries work now: a delivery,
// sync or membership stream.
func (n *Node) busy(p peer.ID) bool {
	for _, c := range n.host.Network().ConnsToPeer(p) {
		for _, s := range c.GetStreams() {
			id := s.Protocol()
			if protocols.ProtocolCode(id) != 0 || id == protocols.Sync || id == protocols.Members || id == protocols.Applied {
				return true
			}
		}
	}
	return false
}

// trim closes connections above connections.max: first to peers that are
// not members (DHT walks), then to members this node did not pick as
// neighbours, never to partners, the reviewer, a peer with work in flight,
// or one connected for less than trimGrace. It keeps `neighbours` members connected.
func (n *Node) trim() {
	// A second connection to a peer (both sides dialed at once) is closed
	// first: one is enough, and the bound counts connections.
	for _, p := range n.host.Network().Peers() {
		cs := n.host.Network().ConnsToPeer(p)
		if len(cs) < 2 || n.busy(p) {
			continue
		}
		slices.SortFunc(cs, func(a, b network.Conn) int { return a.Stat().Opened.Compare(b.Stat().Opened) })
		for _, c := range cs[1:] {
			if time.Since(c.Stat().Opened) >= trimGrace {
				_ = c.Close()
			}
		}
	}
	peers := n.host.Network().Peers()
	excess := len(n.host.Network().Conns()) - n.cfg.Connections.Max
	if excess <= 0 {
		return
	}
	type cand struct {
		p    peer.ID
		rank int
	}
	var cands []cand
	members := 0
	for _, p := range peers {
		if n.special(p) || n.busy(p) || n.young(p) {
			continue
		}
		switch {
		case !n.book.IsMember(p):
			cands = append(cands, cand{p, 0})
		case !n.host.ConnManager().IsProtected(p, neighbourTag):
			cands = append(cands, cand{p, 1})
			members++
		default:
			cands = append(cands, cand{p, 2})
			members++
		}
	}
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	slices.SortStableFunc(cands, func(a, b cand) int { return a.rank - b.rank })
	for _, c := range cands {
		if excess == 0 {
			break
		}
		if c.rank > 0 && members <= n.cfg.Connections.Neighbours {
			break
		}
		if c.rank > 0 {
			members--
		}
		n.host.ConnManager().Unprotect(c.p, neighbourTag)
		_ = n.host.Network().ClosePeer(c.p)
		excess--
	}
}

// connLimits are the connection manager's watermarks for a config: trimming
// starts above max and goes down to three quarters of it.
func connLimits(c Config) (low, high int) {
	high = c.Connections.Max
	low = max(high*3/4, c.Connections.Neighbours+1)
	return low, high
}

// registerConnMetrics adds ferry_connections (open connections, by role of
// the peer).
func (n *Node) registerConnMetrics() error {
	g := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "ferry", Name: "connections",
		Help: "Open peer connections (bounded by connections.max, partners and the reviewer beyond it)."},
		func() float64 { return float64(len(n.host.Network().Conns())) })
	return promreg.Register(n.reg, g)
}

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

// kept reports whether p is kept connected by role: a partner, or the
// reviewer while keepReviewer holds.
func (n *Node) kept(p peer.ID) bool {
	return n.book.IsPartner(p) || (p == n.book.Reviewer() && n.keepReviewer())
}

// keepReviewer reports whether discovery keeps a connection to the
// reviewer: while the network has fewer members than connections.max (the
// reviewer can hold one connection from each). In a bigger network the
// reviewer is dialed when there is something to send it (requests,
// applied reports) and decisions reach members by gossip and their
// neighbours (spread/, catchup/), or the reviewer would carry a connection
// from every member.
func (n *Node) keepReviewer() bool {
	return n.book.MemberCount() < n.cfg.Connections.Max
}

// choose marks p as one of this node's neighbours (on) or not: the node
// keeps its own set (a prebuilt host's connection manager may not protect
// at all, mocknet's does not) and protects them in the connection manager.
func (n *Node) choose(p peer.ID, on bool) {
	n.neighbourMu.Lock()
	if n.neighbourSet == nil {
		n.neighbourSet = map[peer.ID]struct{}{}
	}
	if on {
		n.neighbourSet[p] = struct{}{}
	} else {
		delete(n.neighbourSet, p)
	}
	n.neighbourMu.Unlock()
	if on {
		n.host.ConnManager().Protect(p, neighbourTag)
	} else {
		n.host.ConnManager().Unprotect(p, neighbourTag)
	}
}

// chosen reports whether p is one of this node's neighbours.
func (n *Node) chosen(p peer.ID) bool {
	n.neighbourMu.Lock()
	defer n.neighbourMu.Unlock()
	_, ok := n.neighbourSet[p]
	return ok
}

// neighbours lists the members this node chose as its neighbours (dialed
// by keepNeighbours, see choose) and is connected to.
// A connection another member opened to this node is that member's
// neighbour, not this node's: the dialer keeps it or closes it.
func (n *Node) neighbours() []peer.ID {
	var out []peer.ID
	for _, p := range n.host.Network().Peers() {
		if p != n.id && !n.kept(p) && n.book.IsMember(p) && n.chosen(p) {
			out = append(out, p)
		}
	}
	return out
}

// outbound reports whether this node opened a connection it holds to p.
func (n *Node) outbound(p peer.ID) bool {
	for _, c := range n.host.Network().ConnsToPeer(p) {
		if c.Stat().Direction == network.DirOutbound {
			return true
		}
	}
	return false
}

// keepNeighbours keeps `neighbours` members connected as this node's
// neighbours: beyond that number it lets go of the extra ones, below it
// it picks members at random (the bootstrap peer and the first members
// met are not favoured: neighbours spread evenly) and dials them. It
// reports how many are still lacking.
func (n *Node) keepNeighbours(ctx context.Context) int {
	want := n.cfg.Connections.Neighbours
	// A neighbour whose connection closed is one no more.
	n.neighbourMu.Lock()
	var gone []peer.ID
	for p := range n.neighbourSet {
		if n.host.Network().Connectedness(p) != network.Connected {
			gone = append(gone, p)
		}
	}
	n.neighbourMu.Unlock()
	for _, p := range gone {
		n.choose(p, false)
	}
	have := n.neighbours()
	for _, p := range have[min(want, len(have)):] {
		n.choose(p, false)
	}
	lacking := want - len(have)
	if lacking <= 0 {
		return 0
	}
	var cands []peer.ID
	for _, p := range n.book.Members() {
		if p == n.id || n.kept(p) || n.book.refused(p) || n.chosen(p) {
			continue
		}
		// A member connected already counts when this node opened the
		// connection; one the member opened is its own (a dial would
		// make a second).
		if n.host.Network().Connectedness(p) == network.Connected {
			if n.outbound(p) {
				cands = append(cands, p)
			}
			continue
		}
		if len(n.host.Peerstore().Addrs(p)) > 0 {
			cands = append(cands, p)
		}
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
		n.choose(p, true)
		lacking--
	}
	return lacking
}

// trimGrace keeps a new connection from trim: a joining node completes
// hello and pulls the membership records over its first connection.
const trimGrace = 10 * time.Second

// idleAfter is how long a connection this node opened and no longer needs
// (not to a partner, the reviewer or a neighbour; no delivery, sync or
// membership stream on it) stays open: a sender that has more for the
// peer within it finds the connection up.
const idleAfter = time.Minute

// bootstrapIDs are the peer ids of the config's bootstrap addresses.
func (n *Node) bootstrapIDs() map[peer.ID]bool {
	ids := map[peer.ID]bool{}
	for _, b := range n.cfg.Bootstrap {
		if ai, err := peer.AddrInfoFromString(b); err == nil {
			ids[ai.ID] = true
		}
	}
	return ids
}

// openedAt is when c opened: the transport's word (Stat().Opened), else
// when the node saw it connect (libp2p's mocknet leaves Opened unset; a
// connection older than the notifiee is taken as opened now).
func (n *Node) openedAt(c network.Conn) time.Time {
	if t := c.Stat().Opened; !t.IsZero() {
		return t
	}
	v, _ := n.connSeen.LoadOrStore(c.ID(), time.Now())
	return v.(time.Time)
}

// young reports whether a connection to p opened within d.
func (n *Node) young(p peer.ID, d time.Duration) bool {
	for _, c := range n.host.Network().ConnsToPeer(p) {
		if time.Since(n.openedAt(c)) < d {
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

// trim holds the connections to what the node needs. A second connection
// to a peer is closed. A connection this node opened and no longer needs
// is closed once idle for idleAfter (the dialer owns a connection: the
// other side may hold it as its neighbour), to a bootstrap peer already
// after trimGrace once the node has its neighbours. Above connections.max the
// least needed are closed, in either direction: first to peers that are
// not members (DHT walks), then to members this node did not pick as
// neighbours; never to partners, the reviewer, a peer with work in
// flight, or one connected for less than trimGrace, and `neighbours`
// members stay.
func (n *Node) trim() {
	nw := n.host.Network()
	cm := n.host.ConnManager()
	// A second connection to a peer (both sides dialed at once) is closed
	// first: one is enough, and the bound counts connections.
	for _, p := range nw.Peers() {
		cs := nw.ConnsToPeer(p)
		if len(cs) < 2 || n.busy(p) {
			continue
		}
		slices.SortFunc(cs, func(a, b network.Conn) int { return n.openedAt(a).Compare(n.openedAt(b)) })
		for _, c := range cs[1:] {
			if time.Since(n.openedAt(c)) >= trimGrace {
				_ = c.Close()
			}
		}
	}
	if r := n.book.Reviewer(); r != "" && r != n.id && !n.kept(r) {
		cm.Unprotect(r, connTag)
	}
	// A bootstrap peer is let go of as soon as the node has its
	// neighbours: every joining node dials it.
	settled := len(n.neighbours()) >= n.cfg.Connections.Neighbours
	boot := n.bootstrapIDs()
	for _, p := range nw.Peers() {
		if n.kept(p) || n.chosen(p) || !n.outbound(p) || n.busy(p) {
			continue
		}
		hold := idleAfter
		if settled && boot[p] {
			hold = trimGrace
		}
		if n.young(p, hold) {
			continue
		}
		_ = nw.ClosePeer(p)
	}
	peers := nw.Peers()
	excess := len(nw.Conns()) - n.cfg.Connections.Max
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
		stranger := !n.book.IsMember(p)
		// A stranger's streams are no work of this node's: they do not
		// keep its connection.
		if n.kept(p) || (!stranger && n.busy(p)) || n.young(p, trimGrace) {
			continue
		}
		switch {
		case stranger:
			cands = append(cands, cand{p, 0})
		case !n.chosen(p):
			cands = append(cands, cand{p, 1})
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
		if c.rank == 2 {
			if members <= n.cfg.Connections.Neighbours {
				break
			}
			members--
		}
		n.choose(c.p, false)
		_ = nw.ClosePeer(c.p)
		excess--
	}
}

// strangerCap bounds the connections peers opened to this node while it
// counts them neither partners nor members (a joining node is one until
// its hello, a few milliseconds): half of connections.max, so strangers
// never hold the room members need.
func strangerCap(c Config) int { return max(1, c.Connections.Max/2) }

// capStrangers closes c, just opened by a peer that is neither a partner
// nor a member, when more than strangerCap such connections are open. It
// runs on the connection notifiee, before anything was served on c.
func (n *Node) capStrangers(c network.Conn) {
	p := c.RemotePeer()
	if c.Stat().Direction != network.DirInbound || n.knownPeer(p) {
		return
	}
	strangers := 0
	for _, o := range n.host.Network().Conns() {
		if o.Stat().Direction == network.DirInbound && !o.IsClosed() && !n.knownPeer(o.RemotePeer()) {
			strangers++
		}
	}
	if strangers <= strangerCap(n.cfg) {
		return
	}
	n.metrics.strangersClosed.Inc()
	n.log.Debug("connection closed: too many strangers", "peer", p, "strangers", strangers, "cap", strangerCap(n.cfg))
	n.spawn(func() { _ = c.Close() })
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

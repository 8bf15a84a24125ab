package peers

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/internal/promreg"
	"github.com/ferrynet/ferry/protocols"
)

// Bounded connections (config section connections): partners and the
// reviewer stay connected and protected; up to `neighbours` other members
// are kept connected for gossip (membership records, decisions); any other
// member is dialed by the sender when there is something to send it, and
// above `max` open connections the least needed ones are closed.

// Keeper keeps the node's connections: it reacts to each connection that
// opens or closes, and runs discovery (discovery.go), which dials what the
// node needs and trims the rest.
type Keeper struct {
	cfg    Config
	self   peer.ID
	host   host.Host
	dht    *dht.IpfsDHT
	book   *Book
	gate   *Gate
	hello  *Hello
	period time.Duration
	group  *lifecycle.Group
	log    *slog.Logger

	strangersClosed prometheus.Counter

	// neighbourSet is the members this node chose as its neighbours
	// (choose, chosen).
	neighbourMu  sync.Mutex
	neighbourSet map[peer.ID]struct{}
}

// KeeperDeps are what the keeper works with; every one is required but
// Period.
type KeeperDeps struct {
	Config Config
	Host   host.Host
	DHT    *dht.IpfsDHT
	Book   *Book
	Gate   *Gate
	Hello  *Hello
	// Period is the longest wait between discovery rounds (0:
	// DefaultDiscoveryPeriod).
	Period time.Duration
	// Group owns the keeper's goroutines.
	Group      *lifecycle.Group
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// NewKeeper builds the keeper and registers ferry_connections (open
// connections) and ferry_strangers_closed_total.
func NewKeeper(d KeeperDeps) (*Keeper, error) {
	period := d.Period
	if period <= 0 {
		period = DefaultDiscoveryPeriod
	}
	k := &Keeper{cfg: d.Config, self: d.Book.Self(), host: d.Host, dht: d.DHT, book: d.Book, gate: d.Gate, hello: d.Hello,
		period: period, group: d.Group, log: d.Logger, neighbourSet: map[peer.ID]struct{}{},
		strangersClosed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ferry", Name: "strangers_closed_total",
			Help: "Connections opened by peers that are neither partners nor members, closed at once because half of connections.max such connections were open."})}
	conns := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "ferry", Name: "connections",
		Help: "Open peer connections (bounded by connections.max, partners and the reviewer beyond it)."},
		func() float64 { return float64(len(k.host.Network().Conns())) })
	if err := promreg.Register(d.Registerer, conns, k.strangersClosed); err != nil {
		return nil, err
	}
	return k, nil
}

// Connected runs on the connection notifiee as c opens: it notes when c
// opened, closes it when strangers hold too many connections, protects a
// partner's or the reviewer's, and greets the peer when this node dialed.
// ctx bounds the greeting.
func (k *Keeper) Connected(ctx context.Context, c network.Conn) {
	p := c.RemotePeer()
	k.gate.opened(c)
	k.capStrangers(c)
	if k.kept(p) {
		k.host.ConnManager().Protect(p, connTag)
	}
	if c.Stat().Direction != network.DirOutbound {
		return
	}
	k.hello.Greet(ctx, c)
}

// Disconnected runs on the connection notifiee as c closes.
func (k *Keeper) Disconnected(c network.Conn) {
	k.hello.forget(c)
	k.gate.closed(c)
}

// Protect protects the connections to p in the connection manager (a
// partner the operator added).
func (k *Keeper) Protect(p peer.ID) { k.host.ConnManager().Protect(p, connTag) }

// connTag protects partners, the reviewer and the chosen neighbours in the
// connection manager.
const (
	connTag      = "ferry"
	neighbourTag = "ferry-neighbour"
)

// kept reports whether p is kept connected by role: a partner, every
// reviewer of the review group while keepReviewer holds (a member takes
// decisions, catch-up and snapshots from whichever is up), and on a node
// of the review group the group's other reviewers (the group's log runs
// over those connections).
func (k *Keeper) kept(p peer.ID) bool {
	if k.book.IsPartner(p) {
		return true
	}
	if p == k.self || !k.book.InReviewGroup(p) {
		return false
	}
	return k.keepReviewer() || k.book.InReviewGroup(k.self)
}

// keepReviewer reports whether discovery keeps a connection to the
// reviewer: while the network has fewer members than connections.max (the
// reviewer can hold one connection from each). In a bigger network the
// reviewer is dialed when there is something to send it (requests,
// applied reports) and decisions reach members by gossip and their
// neighbours (spread/, catchup/), or the reviewer would carry a connection
// from every member.
func (k *Keeper) keepReviewer() bool {
	return k.book.MemberCount() < k.cfg.MaxConns
}

// choose marks p as one of this node's neighbours (on) or not: the node
// keeps its own set (a prebuilt host's connection manager may not protect
// at all, mocknet's does not) and protects them in the connection manager.
func (k *Keeper) choose(p peer.ID, on bool) {
	k.neighbourMu.Lock()
	if on {
		k.neighbourSet[p] = struct{}{}
	} else {
		delete(k.neighbourSet, p)
	}
	k.neighbourMu.Unlock()
	if on {
		k.host.ConnManager().Protect(p, neighbourTag)
	} else {
		k.host.ConnManager().Unprotect(p, neighbourTag)
	}
}

// chosen reports whether p is one of this node's neighbours.
func (k *Keeper) chosen(p peer.ID) bool {
	k.neighbourMu.Lock()
	defer k.neighbourMu.Unlock()
	_, ok := k.neighbourSet[p]
	return ok
}

// neighbours lists the members this node chose as its neighbours (dialed
// by keepNeighbours, see choose) and is connected to.
// A connection another member opened to this node is that member's
// neighbour, not this node's: the dialer keeps it or closes it.
func (k *Keeper) neighbours() []peer.ID {
	var out []peer.ID
	for _, p := range k.host.Network().Peers() {
		if p != k.self && !k.kept(p) && k.book.IsMember(p) && k.chosen(p) {
			out = append(out, p)
		}
	}
	return out
}

// outbound reports whether this node opened a connection it holds to p.
func (k *Keeper) outbound(p peer.ID) bool {
	for _, c := range k.host.Network().ConnsToPeer(p) {
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
func (k *Keeper) keepNeighbours(ctx context.Context) int {
	want := k.cfg.Neighbours
	// A neighbour whose connection closed is one no more.
	k.neighbourMu.Lock()
	var gone []peer.ID
	for p := range k.neighbourSet {
		if k.host.Network().Connectedness(p) != network.Connected {
			gone = append(gone, p)
		}
	}
	k.neighbourMu.Unlock()
	for _, p := range gone {
		k.choose(p, false)
	}
	have := k.neighbours()
	for _, p := range have[min(want, len(have)):] {
		k.choose(p, false)
	}
	lacking := want - len(have)
	if lacking <= 0 {
		return 0
	}
	var cands []peer.ID
	for _, p := range k.book.Members() {
		if p == k.self || k.kept(p) || k.book.refused(p) || k.chosen(p) {
			continue
		}
		// A member connected already counts when this node opened the
		// connection; one the member opened is its own (a dial would
		// make a second).
		if k.host.Network().Connectedness(p) == network.Connected {
			if k.outbound(p) {
				cands = append(cands, p)
			}
			continue
		}
		if len(k.host.Peerstore().Addrs(p)) > 0 {
			cands = append(cands, p)
		}
	}
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	for _, p := range cands {
		if lacking == 0 || ctx.Err() != nil {
			break
		}
		if err := k.host.Connect(ctx, peer.AddrInfo{ID: p}); err != nil {
			k.log.Debug("neighbour unreachable", "peer", p, "err", err)
			continue
		}
		k.choose(p, true)
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

// bootstrapIDs are the peer ids of the config's bootstrap peers.
func (k *Keeper) bootstrapIDs() map[peer.ID]bool {
	ids := map[peer.ID]bool{}
	for _, ai := range k.cfg.Bootstrap {
		ids[ai.ID] = true
	}
	return ids
}

// young reports whether a connection to p opened within d.
func (k *Keeper) young(p peer.ID, d time.Duration) bool {
	for _, c := range k.host.Network().ConnsToPeer(p) {
		if time.Since(k.gate.openedAt(c)) < d {
			return true
		}
	}
	return false
}

// busy reports whether a connection to p carries work now: a delivery,
// sync or membership stream.
func (k *Keeper) busy(p peer.ID) bool {
	for _, c := range k.host.Network().ConnsToPeer(p) {
		for _, s := range c.GetStreams() {
			id := s.Protocol()
			if protocols.ProtocolCode(id) != 0 || id == protocols.Sync || id == protocols.Members || id == protocols.Applied || id == protocols.AppliedRelay {
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
func (k *Keeper) trim() {
	nw := k.host.Network()
	cm := k.host.ConnManager()
	// A second connection to a peer (both sides dialed at once) is closed
	// first: one is enough, and the bound counts connections.
	for _, p := range nw.Peers() {
		cs := nw.ConnsToPeer(p)
		if len(cs) < 2 || k.busy(p) {
			continue
		}
		slices.SortFunc(cs, func(a, b network.Conn) int { return k.gate.openedAt(a).Compare(k.gate.openedAt(b)) })
		for _, c := range cs[1:] {
			if time.Since(k.gate.openedAt(c)) >= trimGrace {
				_ = c.Close()
			}
		}
	}
	for _, r := range k.book.ReviewGroup() {
		if r != k.self && !k.kept(r) {
			cm.Unprotect(r, connTag)
		}
	}
	// A bootstrap peer is let go of as soon as the node has its
	// neighbours: every joining node dials it.
	settled := len(k.neighbours()) >= k.cfg.Neighbours
	boot := k.bootstrapIDs()
	for _, p := range nw.Peers() {
		if k.kept(p) || k.chosen(p) || !k.outbound(p) || k.busy(p) {
			continue
		}
		hold := idleAfter
		if settled && boot[p] {
			hold = trimGrace
		}
		if k.young(p, hold) {
			continue
		}
		_ = nw.ClosePeer(p)
	}
	peers := nw.Peers()
	excess := len(nw.Conns()) - k.cfg.MaxConns
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
		stranger := !k.book.IsMember(p)
		// A stranger's streams are no work of this node's: they do not
		// keep its connection.
		if k.kept(p) || (!stranger && k.busy(p)) || k.young(p, trimGrace) {
			continue
		}
		switch {
		case stranger:
			cands = append(cands, cand{p, 0})
		case !k.chosen(p):
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
			if members <= k.cfg.Neighbours {
				break
			}
			members--
		}
		k.choose(c.p, false)
		_ = nw.ClosePeer(c.p)
		excess--
	}
}

// strangerCap bounds the connections peers opened to this node while it
// counts them neither partners nor members (a joining node is one until
// its hello, a few milliseconds): half of connections.max, so strangers
// never hold the room members need.
func strangerCap(c Config) int { return max(1, c.MaxConns/2) }

// capStrangers closes c, just opened by a peer that is neither a partner
// nor a member, when more than strangerCap such connections are open. It
// runs on the connection notifiee, before anything was served on c.
func (k *Keeper) capStrangers(c network.Conn) {
	p := c.RemotePeer()
	if c.Stat().Direction != network.DirInbound || k.gate.known(p) {
		return
	}
	strangers := 0
	for _, o := range k.host.Network().Conns() {
		if o.Stat().Direction == network.DirInbound && !o.IsClosed() && !k.gate.known(o.RemotePeer()) {
			strangers++
		}
	}
	if strangers <= strangerCap(k.cfg) {
		return
	}
	k.strangersClosed.Inc()
	k.log.Debug("connection closed: too many strangers", "peer", p, "strangers", strangers, "cap", strangerCap(k.cfg))
	k.group.Go(func() { _ = c.Close() })
}

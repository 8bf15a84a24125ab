package peers

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
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
// member is dialed by the sender when there is something to send it and
// room under `max` (Room: a less needed connection may be closed for it);
// the DHT dials only within `max` (BoundDials); and a connection that takes
// the node above `max` (another peer's dial) has the least needed ones
// closed at once (holdBound).

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
	roomClosed      prometheus.Counter
	refused         prometheus.Counter

	// neighbourSet is the members this node chose as its neighbours
	// (choose, chosen).
	neighbourMu  sync.Mutex
	neighbourSet map[peer.ID]struct{}

	// over is poked when a connection takes the node above
	// connections.max (holdBound).
	over chan struct{}
	// roomMu serialises trim and Room (each counts the connections and
	// closes some); dialing holds when Room let a dial go to a peer, until
	// its connection opens (or dialHeld passes), and admitting when Admit
	// took a connection a peer opens, until it opens: both count against
	// the bound meanwhile, apart (a peer may be dialing this node while
	// this node dials it, and the two connections both open).
	roomMu    sync.Mutex
	dialing   map[peer.ID]time.Time
	admitting map[peer.ID]time.Time
	warned    time.Time // warnOver's last line
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
// connections), ferry_strangers_closed_total,
// ferry_connections_closed_for_room_total and
// ferry_connections_refused_total.
func NewKeeper(d KeeperDeps) (*Keeper, error) {
	period := d.Period
	if period <= 0 {
		period = DefaultDiscoveryPeriod
	}
	k := &Keeper{cfg: d.Config, self: d.Book.Self(), host: d.Host, dht: d.DHT, book: d.Book, gate: d.Gate, hello: d.Hello,
		period: period, group: d.Group, log: d.Logger, neighbourSet: map[peer.ID]struct{}{},
		over: make(chan struct{}, 1), dialing: map[peer.ID]time.Time{}, admitting: map[peer.ID]time.Time{},
		strangersClosed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ferry", Name: "strangers_closed_total",
			Help: "Connections opened by peers that are neither partners nor members, closed at once because half of connections.max such connections were open."}),
		roomClosed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ferry", Name: "connections_closed_for_room_total",
			Help: "Connections closed to make room under connections.max for a new connection (a sender's dial to a receiver owed something, a new neighbour, a connection another peer opened)."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ferry", Name: "connections_refused_total",
			Help: "Connections other peers opened, refused as they were secured: the node was at connections.max with no connection it could close for them."})}
	conns := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "ferry", Name: "connections",
		Help: "Open peer connections (bounded by connections.max, partners and the reviewer beyond it)."},
		func() float64 { return float64(len(k.host.Network().Conns())) })
	if err := promreg.Register(d.Registerer, conns, k.strangersClosed, k.roomClosed, k.refused); err != nil {
		return nil, err
	}
	// The DHT's dials (BoundDials) take room from the keeper from now on.
	d.Gate.keeper.Store(k)
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
	k.roomMu.Lock()
	if c.Stat().Direction == network.DirInbound {
		delete(k.admitting, p)
	} else {
		delete(k.dialing, p)
	}
	k.roomMu.Unlock()
	if len(k.host.Network().Conns()) > k.cfg.MaxConns {
		select {
		case k.over <- struct{}{}:
		default:
		}
	}
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
// met are not favoured: neighbours spread evenly) and dials them, each
// within the bound (Room). It reports how many are still lacking.
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
		// A new neighbour takes room under the bound like any dial of
		// the node's own (Room may close a less needed connection).
		if !k.Room(p) {
			continue
		}
		if err := k.host.Connect(ctx, peer.AddrInfo{ID: p}); err != nil {
			k.unreserve(p)
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

// memberGrace keeps a new connection with a peer this node counts a member
// already from trim above connections.max: its hello is a round trip, and
// who opened it (a sender, sync, a relay) starts its stream at once; a
// connection with nothing on it after that (a DHT query's, a neighbour
// pick of the other side's) is what trim lets go of first.
const memberGrace = 2 * time.Second

// graceOf is how long a connection to p is kept from trim above the bound.
func (k *Keeper) graceOf(p peer.ID) time.Duration {
	if k.book.IsMember(p) || k.book.IsPartner(p) {
		return memberGrace
	}
	return trimGrace
}

// dialHeld is how long a dial Room let go counts against the bound at
// most before its connection opens: longer than any dial of the node's
// own may take (discovery's connectTimeout, the sender's DialTimeout,
// stream.DefaultDialTimeout: a hold that ended before the dial did would
// let the node count too few). Each dialer gives the room back as its dial
// ends (Dialed, unreserve); the hold bounds what a dialer that never says
// keeps.
const dialHeld = 30 * time.Second

// admitHeld is how long a connection Admit took counts against the bound
// at most before it opens (the rest of its upgrade after the gater).
const admitHeld = connectTimeout

// boundRetry is how often holdBound looks again while the node stays above
// connections.max after a poke (connections age into trim's reach).
const boundRetry = 250 * time.Millisecond

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

// helloSettle is how long after its hello ended a connection stays in its
// grace (inGrace): who opened it starts what it opened it for right after
// the hello (a delivery, a pull of the membership records), and a stream
// of that kind keeps the connection (busy).
const helloSettle = 500 * time.Millisecond

// inGrace reports whether a connection to p is kept from trim above the
// bound by its age: opened within its grace (graceOf) and its hello not
// ended helloSettle ago.
func (k *Keeper) inGrace(p peer.ID) bool {
	d := k.graceOf(p)
	for _, c := range k.host.Network().ConnsToPeer(p) {
		if time.Since(k.gate.openedAt(c)) < d && !k.gate.settled(c, helloSettle) {
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
			if protocols.ProtocolCode(id) != 0 || id == protocols.Sync || id == protocols.Members || id == protocols.Applied || id == protocols.AppliedRelay || id == protocols.Hello {
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
// least needed are closed, in either direction (spare): first to peers
// that are not members, then to members this node did not pick as
// neighbours, the oldest first; never to partners, the reviewer, a peer
// with work in flight, or one younger than its grace (memberGrace for a
// member, trimGrace for others), and `neighbours` members stay. It runs at
// the end of each discovery round, and at once when a connection takes
// the node above the bound (holdBound).
func (k *Keeper) trim() {
	k.roomMu.Lock()
	defer k.roomMu.Unlock()
	nw := k.host.Network()
	cm := k.host.ConnManager()
	// A second connection to a peer (both sides dialed at once) is closed
	// first: one is enough, and the bound counts connections. One that
	// carries no stream goes once past the peer's grace; one with streams
	// once past trimGrace, when nothing busy runs to the peer.
	for _, p := range nw.Peers() {
		cs := nw.ConnsToPeer(p)
		if len(cs) < 2 {
			continue
		}
		busy := k.busy(p)
		slices.SortFunc(cs, func(a, b network.Conn) int { return k.gate.openedAt(a).Compare(k.gate.openedAt(b)) })
		for _, c := range cs[1:] {
			age := time.Since(k.gate.openedAt(c))
			if (len(c.GetStreams()) == 0 && age >= k.graceOf(p)) || (!busy && age >= trimGrace) {
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
	excess := len(nw.Conns()) - k.cfg.MaxConns
	if excess <= 0 {
		return
	}
	for _, p := range k.spare() {
		if excess <= 0 {
			break
		}
		excess -= len(nw.ConnsToPeer(p))
		k.choose(p, false)
		_ = nw.ClosePeer(p)
	}
}

// spare lists the peers whose connections trim may close above
// connections.max, the least needed first: peers that are not members (DHT
// walks), then members this node did not pick as neighbours, then
// neighbours beyond `neighbours`; the oldest connection first within each
// rank. Never partners, the reviewer, a member with work in flight
// (busy), or a connection younger than its grace (graceOf). roomMu held.
func (k *Keeper) spare() []peer.ID {
	type cand struct {
		p    peer.ID
		rank int
		at   time.Time
	}
	var cands []cand
	members := 0
	for _, p := range k.host.Network().Peers() {
		stranger := !k.book.IsMember(p)
		// A stranger's streams are no work of this node's: they do not
		// keep its connection.
		if k.kept(p) || (!stranger && k.busy(p)) || k.inGrace(p) {
			continue
		}
		var at time.Time
		for _, c := range k.host.Network().ConnsToPeer(p) {
			if o := k.gate.openedAt(c); at.IsZero() || o.Before(at) {
				at = o
			}
		}
		switch {
		case stranger:
			cands = append(cands, cand{p, 0, at})
		case !k.chosen(p):
			cands = append(cands, cand{p, 1, at})
		default:
			cands = append(cands, cand{p, 2, at})
			members++
		}
	}
	slices.SortStableFunc(cands, func(a, b cand) int {
		if a.rank != b.rank {
			return a.rank - b.rank
		}
		return a.at.Compare(b.at)
	})
	var out []peer.ID
	for _, c := range cands {
		if c.rank == 2 {
			if members <= k.cfg.Neighbours {
				break
			}
			members--
		}
		out = append(out, c.p)
	}
	return out
}

// unbusy lists the connected peers not kept by role and carrying no work
// now, but for those in skip: what a reviewer's connection may take room
// from once spare and graced are used up. roomMu held.
func (k *Keeper) unbusy(skip []peer.ID) []peer.ID {
	var out []peer.ID
	for _, p := range k.host.Network().Peers() {
		if !slices.Contains(skip, p) && !k.kept(p) && !k.busy(p) {
			out = append(out, p)
		}
	}
	return out
}

// graced lists the members whose connections spare leaves out for their
// grace alone (not kept by role, not busy, not a chosen neighbour), the
// oldest first. roomMu held.
func (k *Keeper) graced() []peer.ID {
	var out []peer.ID
	for _, p := range k.host.Network().Peers() {
		if k.book.IsMember(p) && !k.kept(p) && !k.busy(p) && !k.chosen(p) && k.inGrace(p) {
			out = append(out, p)
		}
	}
	return out
}

// holdBound trims as soon as a connection takes the node above
// connections.max (Connected pokes it), not at the next discovery round:
// a connection nothing needs goes at once, a young one once past its grace
// (it looks again every boundRetry for as long as trimGrace, and says what
// holds it above the bound past a member's grace). It runs
// until ctx ends (Run starts it).
func (k *Keeper) holdBound(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.over:
		}
		start := time.Now()
		for {
			k.trim()
			if len(k.host.Network().Conns()) <= k.cfg.MaxConns {
				break
			}
			// Past a member's grace, what keeps the node above the bound
			// is work or role: worth a line (warnOver).
			if time.Since(start) > memberGrace+2*boundRetry {
				k.warnOver()
			}
			if time.Since(start) > trimGrace+boundRetry {
				break
			}
			t := time.NewTimer(boundRetry)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

// Dialed tells the keeper that a dial to p that Room let go has ended,
// with a connection or without: the room Room held for it is given back
// (a connection it opened counts among the node's own now). A dialer that
// never says holds it for dialHeld.
func (k *Keeper) Dialed(p peer.ID) { k.unreserve(p) }

// unreserve gives back the room Room reserved for a dial to p that failed.
func (k *Keeper) unreserve(p peer.ID) {
	k.roomMu.Lock()
	delete(k.dialing, p)
	k.roomMu.Unlock()
}

// warnOver logs, at most once per trimGrace, the connections of a node
// that stays above connections.max with nothing trim may close: each
// peer's name, the direction and age of its connection, whether it is a
// member, a chosen neighbour or kept by role, and its streams' protocols.
func (k *Keeper) warnOver() {
	k.roomMu.Lock()
	if time.Since(k.warned) < trimGrace {
		k.roomMu.Unlock()
		return
	}
	k.warned = time.Now()
	k.roomMu.Unlock()
	cs := k.host.Network().Conns()
	var b strings.Builder
	for _, c := range cs {
		p := c.RemotePeer()
		dir := "in"
		if c.Stat().Direction == network.DirOutbound {
			dir = "out"
		}
		var ps []string
		for _, s := range c.GetStreams() {
			ps = append(ps, string(s.Protocol()))
		}
		fmt.Fprintf(&b, "[%s %s %s %s member=%v neighbour=%v kept=%v streams=%v] ", k.book.Name(p), p, dir,
			time.Since(k.gate.openedAt(c)).Round(100*time.Millisecond), k.book.IsMember(p), k.chosen(p), k.kept(p), ps)
	}
	k.log.Warn("above connections.max with nothing to close", "connections", len(cs), "max", k.cfg.MaxConns, "held", strings.TrimSpace(b.String()))
}

// pendingLocked is the node's connections, the dials Room let go (or
// reserve reserved) whose connections have not opened yet, the dial to p
// aside (Room asked again for it), and the connections Admit took that
// have not opened yet, p's included; roomMu held.
func (k *Keeper) pendingLocked(p peer.ID) int {
	nw := k.host.Network()
	n := len(nw.Conns())
	for q, at := range k.dialing {
		switch {
		case time.Since(at) > dialHeld:
			delete(k.dialing, q)
		case q != p && nw.Connectedness(q) != network.Connected:
			n++
		}
	}
	for q, at := range k.admitting {
		if time.Since(at) > admitHeld {
			delete(k.admitting, q)
			continue
		}
		n++
	}
	return n
}

// reserve counts a dial to p against connections.max when there is room,
// without closing anything for it (the DHT's dials: a walk asks the peers
// the node is connected to instead); the connection opening, or
// unreserve, gives the room back.
func (k *Keeper) reserve(p peer.ID) bool {
	k.roomMu.Lock()
	defer k.roomMu.Unlock()
	if k.pendingLocked(p)+1 > k.cfg.MaxConns {
		return false
	}
	k.dialing[p] = time.Now()
	return true
}

// Room reports whether this node may open a new connection to p within
// connections.max (a sender with something for p, stream.SenderOptions.Room;
// a new neighbour, keepNeighbours):
// yes when it is connected to p already, when p is kept by role (partners
// and the reviewer are beyond the bound), or when the connections open and
// the dials Room let go leave room; else it makes room by closing the least
// needed connections (spare), and says no when they are too few (the
// sender tries again later; decisions reach a member by gossip and its
// neighbours meanwhile).
func (k *Keeper) Room(p peer.ID) bool { return k.room(p, false) }

// room is Room for a dial of the node's own (inbound false), and Admit's
// for a connection p opens (inbound): that one is a new connection even
// when the node holds one with p already or dials p itself (both sides
// dialing at once), and counts as such.
func (k *Keeper) room(p peer.ID, inbound bool) bool {
	nw := k.host.Network()
	if p == k.self || k.kept(p) || (!inbound && nw.Connectedness(p) == network.Connected) {
		return true
	}
	k.roomMu.Lock()
	defer k.roomMu.Unlock()
	except, reserve := p, 0
	// A reviewer's connection (its neighbour pick, its redelivery of
	// decisions a member has not reported) is never turned away: it takes
	// room from any connection not kept and not busy, grace or neighbour.
	rev := inbound && k.book.InReviewGroup(p)
	if inbound && !rev {
		except = "" // a dial of the node's own to p in flight counts too
		// Room is kept for the neighbours this node lacks: others'
		// connections never crowd out the node's own gossip mesh (a node
		// full of its joiners' connections learned late members' records
		// only at its next pull).
		// At most half the bound: a node keeps taking others'.
		reserve = min(max(0, k.cfg.Neighbours-len(k.neighbours())), k.cfg.MaxConns/2)
	}
	need := k.pendingLocked(except) + reserve + 1 - k.cfg.MaxConns
	if need > 0 {
		spare := k.spare()
		if rev || (inbound && !k.book.IsMember(p) && !k.book.IsPartner(p)) {
			// A joining node (no member yet) knows no one else: it
			// takes room from members still in their grace too (they
			// know other members).
			spare = append(spare, k.graced()...)
		}
		if rev {
			spare = append(spare, k.unbusy(spare)...)
		}
		var close []peer.ID
		for _, q := range spare {
			if need <= 0 {
				break
			}
			need -= len(nw.ConnsToPeer(q))
			close = append(close, q)
		}
		if need > 0 {
			return false
		}
		for _, q := range close {
			k.log.Debug("connection closed to make room", "peer", q, "for", p)
			k.choose(q, false)
			_ = nw.ClosePeer(q)
			k.roomClosed.Inc()
		}
		// Counted again: a connection whose close is still under way (one
		// the other side closed first, its streams still resetting) is
		// listed until it is done, and takes its room until then.
		if k.pendingLocked(except)+reserve+1 > k.cfg.MaxConns {
			return false
		}
	}
	if inbound {
		k.admitting[p] = time.Now()
	} else {
		k.dialing[p] = time.Now()
	}
	return true
}

// Admit decides, as a connection peer p opened is secured (before it
// counts among the node's connections), whether the node takes it within
// connections.max: as Room does for a dial of the node's own, yes when p is
// connected already, kept by role (partners, the reviewer while kept) or a
// reviewer of the review group (its connections are always taken), or
// when there is room, made if need be by closing the least needed
// connections (spare); no when the node is full of connections it needs
// (ferry_connections_refused_total): the peer tries again later (a sender
// with its backoff, a joining node at its next discovery round). The
// node's connection gater (ConnGater) calls it; a prebuilt host's network
// has no gater, and whatever dials over it asks Admit first (the test
// network's mocknet does).
func (k *Keeper) Admit(p peer.ID) bool {
	// A reviewer's connection takes room from any connection not kept
	// and not busy (room), and is taken beyond the bound only when every
	// other is (like a partner's): a member full of busy connections must
	// not turn away the reviewer's redelivery of decisions it has not
	// reported.
	if k.room(p, true) || k.book.InReviewGroup(p) {
		return true
	}
	k.refused.Inc()
	k.log.Debug("connection refused: no room under connections.max", "peer", p)
	return false
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

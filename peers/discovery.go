package peers

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	drouting "github.com/libp2p/go-libp2p/p2p/discovery/routing"
	dutil "github.com/libp2p/go-libp2p/p2p/discovery/util"
)

// Discovery timing: rounds start fast and slow down to the period.
const (
	DefaultDiscoveryPeriod = 30 * time.Second
	discoveryFirst         = 250 * time.Millisecond
	connectTimeout         = 10 * time.Second
	// advertiseEvery is how often the node advertises itself under the
	// rendezvous key (provider records live 48 hours).
	advertiseEvery = 30 * time.Minute
	// rendezvousProviders is how many members advertise the rendezvous key
	// in a period, on average: each advertises with the probability
	// rendezvousProviders / members. A node that knows no member finds a
	// few under the key and learns every other from their records; each
	// advertisement is a DHT walk that dials some twenty peers.
	rendezvousProviders = 16
	// advertiseFirst bounds the wait before the first advertisement.
	advertiseFirst = 2 * time.Minute
	// advertiseTimeout bounds one advertisement.
	advertiseTimeout = 30 * time.Second
)

// dhtRefresh is how often discovery refreshes the DHT routing table (a
// walk of every bucket, which dials the peers it meets), at a random time
// in the second half of each period. Kademlia's own refresh (at start and
// every ten minutes) is off (the node's DHT options): a network of members
// started together would each walk the whole network at once, and the
// routing table fills from the connections the node makes anyway. Ferry
// looks members up by their records; the DHT serves the rendezvous key and
// peers known by id only.
const dhtRefresh = time.Hour

// rendezvous is the DHT key members advertise.
func (k *Keeper) rendezvous() string { return "/ferry/" + k.cfg.Network + "/members" }

// Run keeps the node joined until ctx ends (the node runs it on its own
// goroutine from Start): bootstrap peers, the DHT, the rendezvous
// key, connections to partners and the reviewer, found by peer id, and to
// `connections.neighbours` other members. The DHT is walked only while
// neighbours are lacking, to advertise (first within advertiseFirst, then
// every advertiseEvery) and to refresh its routing table (every
// dhtRefresh); once the node has its connections the rounds only check
// them and trim the rest.
func (k *Keeper) Run(ctx context.Context) {
	period := k.period
	disc := drouting.NewRoutingDiscovery(k.dht)
	wait := discoveryFirst
	// The first advertisement waits until the start's dials are done, at
	// a random time so that nodes started together do not walk the DHT
	// together; members find this node by its record meanwhile.
	adv := &advertising{next: time.Now().Add(advertiseFirst/2 + rand.N(advertiseFirst/2))}
	refresh := time.Now().Add(dhtRefresh/2 + rand.N(dhtRefresh/2))
	k.group.Go(func() { k.holdBound(ctx) })
	for {
		k.round(ctx, disc, adv)
		if time.Now().After(refresh) {
			k.dht.RefreshRoutingTable()
			refresh = time.Now().Add(dhtRefresh/2 + rand.N(dhtRefresh/2))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(wait*2, period)
		// A node with no neighbour knows no member to pick: it tries its
		// bootstrap peers again within seconds (a bootstrap peer full of
		// connections refuses it until room frees).
		if len(k.neighbours()) == 0 {
			wait = min(wait, joinRetry)
		}
	}
}

// joinRetry bounds the wait between rounds of a node with no neighbour.
const joinRetry = 2 * time.Second

// advertising paces the rendezvous advertisements: every advertiseEvery
// after one succeeded, and after a failure again in a minute, doubling.
type advertising struct {
	mu    sync.Mutex
	next  time.Time
	fails int
	busy  bool
}

// skip passes this period's advertisement (see rendezvousProviders).
func (a *advertising) skip() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.next = time.Now().Add(advertiseEvery)
}

func (a *advertising) due() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.busy && !time.Now().Before(a.next)
}

// advertise puts this node under the rendezvous key (a DHT provide: the
// closest peers to the key are dialed), on its own goroutine and deadline:
// it must not hold the discovery round, nor be retried every round.
func (k *Keeper) advertise(ctx context.Context, disc *drouting.RoutingDiscovery, adv *advertising) {
	adv.mu.Lock()
	if adv.busy || time.Now().Before(adv.next) {
		adv.mu.Unlock()
		return
	}
	adv.busy = true
	adv.mu.Unlock()
	actx, cancel := context.WithTimeout(ctx, advertiseTimeout)
	defer cancel()
	before := k.connectedSet()
	_, err := disc.Advertise(actx, k.rendezvous())
	k.closeWalk(before)
	adv.mu.Lock()
	defer adv.mu.Unlock()
	adv.busy = false
	if err == nil {
		adv.fails = 0
		adv.next = time.Now().Add(advertiseEvery)
		return
	}
	if ctx.Err() == nil {
		k.log.Debug("advertise", "err", err)
	}
	adv.fails++
	adv.next = time.Now().Add(min(time.Minute<<min(adv.fails-1, 5), advertiseEvery))
}

// round is one discovery round: greetings still owed, bootstrap peers,
// partners and the reviewer, neighbours, the rendezvous key; then trim.
func (k *Keeper) round(nctx context.Context, disc *drouting.RoutingDiscovery, adv *advertising) {
	ctx, cancel := context.WithTimeout(nctx, connectTimeout)
	defer cancel()
	// Rounds are paced here; the swarm's dial backoff (up to five minutes)
	// would keep a healed partition apart.
	ctx = network.WithForceDirectDial(ctx, "ferry discovery")
	k.hello.GreetPending(nctx)
	// Bootstrap peers while the node has no neighbours yet (it knows no
	// member to pick).
	joined := len(k.neighbours()) > 0
	for _, ai := range k.cfg.Bootstrap {
		if joined {
			break
		}
		if ai.ID == k.self || k.host.Network().Connectedness(ai.ID) == network.Connected || !k.Room(ai.ID) {
			continue
		}
		if err := k.host.Connect(ctx, ai); err != nil {
			k.unreserve(ai.ID)
			k.log.Debug("bootstrap peer unreachable", "peer", ai.ID, "err", err)
		}
	}
	// Partners and the reviewers first: the peerstore knows their addresses
	// from the peer book even when no bootstrap peer is up.
	want := k.book.Partners()
	for _, r := range k.book.ReviewGroup() {
		if r != k.self && k.kept(r) {
			want = append(want, r)
		}
	}
	for _, p := range want {
		if k.book.refused(p) || k.host.Network().Connectedness(p) == network.Connected {
			continue
		}
		// The routed host finds the addresses of a bare peer id in the
		// peerstore or the DHT.
		if err := k.host.Connect(ctx, peer.AddrInfo{ID: p}); err != nil {
			k.log.Debug("peer unreachable", "peer", p, "err", err)
		}
	}
	// Neighbours from the members known by their records first.
	lacking := k.keepNeighbours(ctx)
	defer k.trim()
	if k.dht.RoutingTable().Size() == 0 {
		return
	}
	if adv.due() {
		if m := k.book.MemberCount(); m <= rendezvousProviders || rand.N(m) < rendezvousProviders {
			k.group.Go(func() { k.advertise(nctx, disc, adv) })
		} else {
			adv.skip()
		}
	}
	if lacking <= 0 {
		return
	}
	before := k.connectedSet()
	found, err := dutil.FindPeers(ctx, disc, k.rendezvous())
	// The members found are what the lookup was for: their connections
	// stay (closing one to dial it again below would be a round trip lost).
	for _, ai := range found {
		before[ai.ID] = struct{}{}
	}
	k.closeWalk(before)
	if err != nil && nctx.Err() == nil {
		k.log.Debug("find members", "err", err)
	}
	for _, ai := range found {
		if lacking <= 0 {
			break
		}
		if ai.ID == k.self || k.book.refused(ai.ID) || k.host.Network().Connectedness(ai.ID) == network.Connected || !k.Room(ai.ID) {
			continue
		}
		if err := k.host.Connect(ctx, ai); err != nil {
			k.unreserve(ai.ID)
			k.log.Debug("member unreachable", "peer", ai.ID, "err", err)
			continue
		}
		lacking--
	}
}

// connectedSet is the peers the node is connected to now.
func (k *Keeper) connectedSet() map[peer.ID]struct{} {
	ps := k.host.Network().Peers()
	set := make(map[peer.ID]struct{}, len(ps))
	for _, p := range ps {
		set[p] = struct{}{}
	}
	return set
}

// closeWalk closes, as a DHT walk (an advertisement, a lookup of the
// rendezvous key) ends, the connections it opened: those this node dialed
// to peers not in keep (the peers it was connected to before the walk, and
// the members a lookup found), which nothing else needs (not kept by role,
// not a chosen neighbour, no work on them, no dial of the node's own
// pending on them). Left to trim, they would stay idleAfter and close a
// discovery round later, minutes into a network's rest; a walk dials some
// twenty peers.
func (k *Keeper) closeWalk(keep map[peer.ID]struct{}) {
	k.roomMu.Lock()
	defer k.roomMu.Unlock()
	nw := k.host.Network()
	for _, p := range nw.Peers() {
		if _, ok := keep[p]; ok {
			continue
		}
		if _, ok := k.dialing[p]; ok {
			continue
		}
		if _, ok := k.admitting[p]; ok {
			continue
		}
		if k.kept(p) || k.chosen(p) || !k.outbound(p) || k.busy(p) {
			continue
		}
		_ = nw.ClosePeer(p)
	}
}

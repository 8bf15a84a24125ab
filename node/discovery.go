package node

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

// rendezvous is the DHT key members advertise.
func (n *Node) rendezvous() string { return "/ferry/" + n.cfg.Network + "/members" }

// discover keeps the node joined: bootstrap peers, the DHT, the rendezvous
// key, connections to partners and the reviewer, found by peer id, and to
// `connections.neighbours` other members. The DHT is walked only while
// neighbours are lacking, to advertise (first within advertiseFirst, then
// every advertiseEvery) and to refresh its routing table (every
// dhtRefresh); once the node has its connections the rounds only check
// them and trim the rest.
func (n *Node) discover() {
	period := n.opts.DiscoveryPeriod
	if period <= 0 {
		period = DefaultDiscoveryPeriod
	}
	disc := drouting.NewRoutingDiscovery(n.dht)
	wait := discoveryFirst
	// The first advertisement waits until the start's dials are done, at
	// a random time so that nodes started together do not walk the DHT
	// together; members find this node by its record meanwhile.
	adv := &advertising{next: time.Now().Add(advertiseFirst/2 + rand.N(advertiseFirst/2))}
	refresh := time.Now().Add(dhtRefresh/2 + rand.N(dhtRefresh/2))
	for {
		n.discoverRound(disc, adv)
		if time.Now().After(refresh) {
			n.dht.RefreshRoutingTable()
			refresh = time.Now().Add(dhtRefresh/2 + rand.N(dhtRefresh/2))
		}
		t := time.NewTimer(wait)
		select {
		case <-n.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(wait*2, period)
	}
}

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
func (n *Node) advertise(disc *drouting.RoutingDiscovery, adv *advertising) {
	adv.mu.Lock()
	if adv.busy || time.Now().Before(adv.next) {
		adv.mu.Unlock()
		return
	}
	adv.busy = true
	adv.mu.Unlock()
	ctx, cancel := context.WithTimeout(n.ctx, advertiseTimeout)
	defer cancel()
	_, err := disc.Advertise(ctx, n.rendezvous())
	adv.mu.Lock()
	defer adv.mu.Unlock()
	adv.busy = false
	if err == nil {
		adv.fails = 0
		adv.next = time.Now().Add(advertiseEvery)
		return
	}
	if n.ctx.Err() == nil {
		n.log.Debug("advertise", "err", err)
	}
	adv.fails++
	adv.next = time.Now().Add(min(time.Minute<<min(adv.fails-1, 5), advertiseEvery))
}

func (n *Node) discoverRound(disc *drouting.RoutingDiscovery, adv *advertising) {
	ctx, cancel := context.WithTimeout(n.ctx, connectTimeout)
	defer cancel()
	// Rounds are paced here; the swarm's dial backoff (up to five minutes)
	// would keep a healed partition apart.
	ctx = network.WithForceDirectDial(ctx, "ferry discovery")
	for _, c := range n.hello.pending() {
		n.greet(c)
	}
	// Bootstrap peers while the node has no neighbours yet (it knows no
	// member to pick).
	joined := len(n.neighbours()) > 0
	for _, b := range n.cfg.Bootstrap {
		if joined {
			break
		}
		ai, err := peer.AddrInfoFromString(b)
		if err != nil || ai.ID == n.id || n.host.Network().Connectedness(ai.ID) == network.Connected {
			continue
		}
		if err := n.host.Connect(ctx, *ai); err != nil {
			n.log.Debug("bootstrap peer unreachable", "peer", ai.ID, "err", err)
		}
	}
	// Partners and the reviewer first: the peerstore knows their addresses
	// from the peer book even when no bootstrap peer is up.
	want := n.book.Partners()
	if r := n.book.Reviewer(); r != "" && r != n.id && n.keepReviewer() {
		want = append(want, r)
	}
	for _, p := range want {
		if n.book.refused(p) || n.host.Network().Connectedness(p) == network.Connected {
			continue
		}
		// The routed host finds the addresses of a bare peer id in the
		// peerstore or the DHT.
		if err := n.host.Connect(ctx, peer.AddrInfo{ID: p}); err != nil {
			n.log.Debug("peer unreachable", "peer", p, "err", err)
		}
	}
	// Neighbours from the members known by their records first.
	lacking := n.keepNeighbours(ctx)
	defer n.trim()
	if n.dht.RoutingTable().Size() == 0 {
		return
	}
	if adv.due() {
		if k := n.book.MemberCount(); k <= rendezvousProviders || rand.N(k) < rendezvousProviders {
			n.spawn(func() { n.advertise(disc, adv) })
		} else {
			adv.skip()
		}
	}
	if lacking <= 0 {
		return
	}
	found, err := dutil.FindPeers(ctx, disc, n.rendezvous())
	if err != nil && n.ctx.Err() == nil {
		n.log.Debug("find members", "err", err)
	}
	for _, ai := range found {
		if lacking <= 0 {
			break
		}
		if ai.ID == n.id || n.book.refused(ai.ID) || n.host.Network().Connectedness(ai.ID) == network.Connected {
			continue
		}
		if err := n.host.Connect(ctx, ai); err != nil {
			n.log.Debug("member unreachable", "peer", ai.ID, "err", err)
			continue
		}
		lacking--
	}
}

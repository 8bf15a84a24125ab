package peers

import (
	"math/rand/v2"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The bound on connections holds when a connection opens, not only at
// the next discovery round (trim): a connection that would take the node
// above connections.max is let in only if a less needed one can make room
// for it, else it is refused (an inbound one at its handshake, the
// connection gater's InterceptSecured; a dial before it starts,
// InterceptPeerDial). The peer that was refused tries another: a member
// picking neighbours takes the next candidate, a DHT walk the next peer.
//
// Beyond the bound, as before: partners and the reviewers a node keeps
// (kept), and strangers (peers not known as members yet: a joining node,
// whose first connection goes to its bootstrap peer), which capStrangers
// bounds to half of connections.max.
//
// What makes room, least needed first (never a partner, a kept reviewer, a
// chosen neighbour, a peer with work in flight, or one connected for less
// than trimGrace):
//
//  0. a peer that is not a member (a DHT walk's);
//  1. a member this node dialed and no longer needs (trim closes it after
//     idleAfter anyway);
//  2. a member that dialed this node (its neighbour pick, its DHT walk):
//     only for a dial of a new neighbour of this node's own or of a
//     reviewer (a member's requests), and on a node of the review group
//     for any connection (members dial a reviewer with their requests).
//     Never for a DHT walk's dial: its connection is gone in seconds.
//
// A member refuses rather than drop another member's neighbour for a
// third one: that would only move the excess around.

// roomHold is how long a connection admitted holds its place before it
// shows up as connected: an inbound one is admitted at its handshake (its
// muxer is negotiated after), a dial before it starts. A dial of a
// neighbour that fails gives its place back at once; any other place that
// was not taken is given back after roomHold.
const roomHold = 5 * time.Second

// room admits connections within connections.max (see above).
type room struct {
	mu sync.Mutex
	// held are the connections admitted and not yet connected, by peer:
	// when each was admitted.
	held map[peer.ID]time.Time
}

// admit says whether a connection with p may open (dir: who opens it),
// making room for it if it must. It runs on the connection gater.
func (k *Keeper) admit(p peer.ID, dir network.Direction) bool {
	if p == k.self || k.kept(p) {
		return true
	}
	inbound := dir == network.DirInbound
	if inbound && !k.gate.known(p) {
		return true // a stranger: capStrangers bounds them
	}
	r := &k.room
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for q, at := range r.held {
		if now.Sub(at) > roomHold {
			delete(r.held, q)
		}
	}
	open := len(k.host.Network().Conns())
	if _, ok := r.held[p]; ok || open+len(r.held) < k.cfg.MaxConns {
		r.hold(p, now)
		return true
	}
	most := 1
	if k.book.InReviewGroup(k.self) || (!inbound && (k.picked(p) || k.book.InReviewGroup(p))) {
		most = 2
	}
	v, ok := k.leastNeeded(most, p)
	if !ok {
		k.roomRefused.Inc()
		k.log.Debug("connection refused: connections.max reached", "peer", p, "inbound", inbound, "open", open, "max", k.cfg.MaxConns)
		return false
	}
	_ = k.host.Network().ClosePeer(v)
	r.hold(p, now)
	return true
}

// hold keeps a place for a connection with p admitted at now; r.mu is
// held.
func (r *room) hold(p peer.ID, now time.Time) {
	if r.held == nil {
		r.held = map[peer.ID]time.Time{}
	}
	r.held[p] = now
}

// release gives back the place held for a dial of p that failed.
func (k *Keeper) release(p peer.ID) {
	k.room.mu.Lock()
	defer k.room.mu.Unlock()
	delete(k.room.held, p)
}

// opened runs on the connection notifiee as c opens: the place held for
// it is taken, and if c took the node above connections.max anyway (a
// dial already under way when the node filled up, a kept peer) the least
// needed other connection goes at once.
func (k *Keeper) opened(c network.Conn) {
	p := c.RemotePeer()
	k.room.mu.Lock()
	defer k.room.mu.Unlock()
	delete(k.room.held, p)
	if k.kept(p) || !k.gate.known(p) {
		return
	}
	if len(k.host.Network().Conns())+len(k.room.held) <= k.cfg.MaxConns {
		return
	}
	if v, ok := k.leastNeeded(2, p); ok {
		_ = k.host.Network().ClosePeer(v)
	}
}

// leastNeeded picks the connection that makes room (see above) up to rank
// most, never one to but.
func (k *Keeper) leastNeeded(most int, but peer.ID) (peer.ID, bool) {
	var best []peer.ID
	rank := most + 1
	for _, p := range k.host.Network().Peers() {
		if p == but || k.kept(p) || k.chosen(p) || k.young(p, trimGrace) {
			continue
		}
		r := 2
		switch {
		case !k.book.IsMember(p):
			r = 0 // a stranger's streams are no work of this node's
		case k.busy(p):
			continue
		case k.outbound(p):
			r = 1
		}
		switch {
		case r > rank:
		case r < rank:
			rank, best = r, append(best[:0], p)
		default:
			best = append(best, p)
		}
	}
	if rank > most || len(best) == 0 {
		return "", false
	}
	return best[rand.N(len(best))], true
}

package node

import (
	"context"
	"errors"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/membership"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// memberAddrTTL is how long the addresses of a membership record stay in
// the peerstore: records are republished with the same sequence (and then
// not taken again) while the addresses do not change.
const memberAddrTTL = 24 * time.Hour

// newMembership builds the membership service on the node's gossipsub
// router: the peer book learns members from their signed records.
func (n *Node) newMembership() (*membership.Service, error) {
	return membership.New(membership.Deps{Host: n.host, PubSub: n.gossip, Key: n.key, Network: n.cfg.Network,
		Name: n.cfg.Name, Version: Version, Allowed: n.book.allowed, Republish: n.opts.MembersRepublish,
		OnRecord: func(r membership.Record) {
			if len(r.Addrs) > 0 {
				n.host.Peerstore().AddAddrs(r.Peer, r.Addrs, memberAddrTTL)
			}
			n.book.learn(r)
		},
		Logger: n.log.With("component", "members"), Registerer: n.reg})
}

// learn takes what a verified membership record tells of its peer: name,
// network and addresses. The entry is saved without an fsync, and only
// when it changed: a crash loses at most what the next record brings back.
func (b *peerBook) learn(r membership.Record) {
	member := r.Network == b.network && b.allowed(r.Peer)
	b.mu.Lock()
	e := b.book[r.Peer]
	was := e != nil && e.Member
	var addrs [][]byte
	for _, a := range r.Addrs {
		addrs = append(addrs, a.Bytes())
	}
	changed := e == nil || e.Name != r.Name || e.Network != r.Network || e.Member != member || !sameAddrs(e.Addrs, addrs)
	if e == nil {
		e = &storepb.Peer{Id: []byte(r.Peer)}
	}
	e = cloneEntry(e)
	e.Name, e.Network, e.Member, e.Addrs = r.Name, r.Network, member, addrs
	if changed {
		e.LastSeen = time.Now().Unix()
	}
	b.book[r.Peer] = e
	if member != was {
		b.memberList = nil
	}
	b.mu.Unlock()
	if changed {
		b.st.SubmitLazy(context.Background(), func(tx *store.Txn) error { tx.PutPeer(e); return nil }, func(err error) {
			if err != nil && !errors.Is(err, store.ErrClosed) {
				b.log.Warn("save peer", "peer", r.Peer, "err", err)
			}
		})
	}
	if member && !was {
		b.log.Info("member joined", "peer", r.Peer, "name", r.Name)
	}
}

func sameAddrs(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if string(a[i]) != string(b[i]) {
			return false
		}
	}
	return true
}

// MembersKnown is the number of members with a signed record held, this
// node included.
func (n *Node) MembersKnown() int { return n.members.Known() }

// takeRecord keeps the membership record a peer sent in hello.
func (n *Node) takeRecord(p peer.ID, raw []byte) {
	r, err := n.members.Take(raw)
	switch {
	case err != nil && !errors.Is(err, membership.ErrStale):
		n.log.Debug("member record in hello refused", "peer", p, "err", err)
	case err == nil && r.Peer != p:
		n.log.Debug("hello carried another peer's record", "peer", p, "record", r.Peer)
	}
	if err == nil || errors.Is(err, membership.ErrStale) {
		n.members.Joined()
	}
}

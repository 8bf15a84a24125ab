package peers

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/membership"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// MembershipDeps are what the membership service is built with here.
type MembershipDeps struct {
	Config Config
	Host   host.Host
	// PubSub is the node's gossipsub router.
	PubSub *pubsub.PubSub
	// Key signs this node's record.
	Key crypto.PrivKey
	// Book learns members from their records, and says who may be one.
	Book *Book
	// Republish is membership.Deps.Republish (0: its default).
	Republish  time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// NewMembership builds the membership service on the node's gossipsub
// router: the peer book learns members from their signed records, and
// their addresses go to the peerstore.
func NewMembership(d MembershipDeps) (*membership.Service, error) {
	return membership.New(membership.Deps{Host: d.Host, PubSub: d.PubSub, Key: d.Key, Network: d.Config.Network,
		Name: d.Config.Name, Version: d.Config.Version, Allowed: d.Book.allowed, Republish: d.Republish,
		Lifetime: d.Config.Lifetime,
		OnRecord: func(r membership.Record) {
			// The addresses last as long as the record: a member that
			// renews it keeps them, one that left loses them.
			if ttl := time.Until(r.Expires); len(r.Addrs) > 0 && ttl > 0 {
				d.Host.Peerstore().AddAddrs(r.Peer, r.Addrs, ttl)
			}
			d.Book.learn(r)
		},
		OnExpire: d.Book.expire,
		Logger:   d.Logger, Registerer: d.Registerer})
}

// expire hears that p's record expired (membership.Deps.OnExpire): the
// member list is made again now rather than at its next use.
func (b *Book) expire(r membership.Record) {
	b.mu.Lock()
	b.memberList = nil
	b.mu.Unlock()
	b.members0()
}

// learn takes what a verified membership record tells of its peer: name,
// network and addresses. The entry is saved without an fsync, and only
// when it changed: a crash loses at most what the next record brings back.
func (b *Book) learn(r membership.Record) {
	now := time.Now()
	var expires int64
	if !r.Expires.IsZero() {
		expires = r.Expires.UnixNano()
	}
	b.mu.Lock()
	member := r.Network == b.network && b.allowedLocked(r.Peer)
	e := b.book[r.Peer]
	was := e != nil && e.Member && b.memberLocked(r.Peer, now)
	var addrs [][]byte
	for _, a := range r.Addrs {
		addrs = append(addrs, a.Bytes())
	}
	changed := e == nil || e.Name != r.Name || e.Network != r.Network || e.Member != member || !sameAddrs(e.Addrs, addrs) ||
		e.ExpiresAt != expires
	if e == nil {
		e = &storepb.Peer{Id: []byte(r.Peer)}
	}
	e = cloneEntry(e)
	e.Name, e.Network, e.Member, e.Addrs, e.ExpiresAt = r.Name, r.Network, member, addrs, expires
	if changed {
		e.LastSeen = now.Unix()
	}
	b.book[r.Peer] = e
	back := member && b.gone[r.Peer]
	delete(b.gone, r.Peer)
	if member != was || back {
		b.memberList = nil
	} else if member && expires != 0 && (b.listUntil.IsZero() || expires < b.listUntil.UnixNano()) {
		b.listUntil = time.Unix(0, expires) // the list is made again at this expiry
	}
	b.mu.Unlock()
	if changed {
		b.st.SubmitLazy(context.Background(), func(tx *store.Txn) error { tx.PutPeer(e); return nil }, func(err error) {
			if err != nil && !errors.Is(err, store.ErrClosed) {
				b.log.Warn("save peer", "peer", r.Peer, "err", err)
			}
		})
	}
	switch {
	case back:
		b.log.Info("member back: a new record after its last expired", "peer", r.Peer, "name", r.Name)
	case member && !was:
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

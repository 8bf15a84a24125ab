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

// memberAddrTTL is how long the addresses of a membership record stay in
// the peerstore: records are republished with the same sequence (and then
// not taken again) while the addresses do not change.
const memberAddrTTL = 24 * time.Hour

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
		OnRecord: func(r membership.Record) {
			if len(r.Addrs) > 0 {
				d.Host.Peerstore().AddAddrs(r.Peer, r.Addrs, memberAddrTTL)
			}
			d.Book.learn(r)
		},
		Logger: d.Logger, Registerer: d.Registerer})
}

// learn takes what a verified membership record tells of its peer: name,
// network and addresses. The entry is saved without an fsync, and only
// when it changed: a crash loses at most what the next record brings back.
func (b *Book) learn(r membership.Record) {
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

// Package peers is how a Ferry node knows and reaches the network: the peer
// book (who is a member, a partner, the reviewer; the connection gater; the
// Roles of every service and the stream layer's Audience), hello, the
// admission gate that holds a stranger's streams until its hello, the
// membership glue (signed records into the book), and the keeper of the
// node's bounded connections with its discovery loop. It imports the
// services it serves (membership, search, stream) and never the node: the
// node builds each type here with every dependency it needs, complete.
package peers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/search"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// Book knows the network: who is a member, a partner, the reviewer, and
// each peer's name and addresses. It is the node's Roles for every service,
// the stream layer's Audience, search's PeerBook, and the connection gater.
type Book struct {
	self     peer.ID
	name     string
	network  string
	reviewer peer.ID
	group    []peer.ID        // the review group (reviewers), sorted
	members  map[peer.ID]bool // from config; empty: anyone who presents the network
	st       *store.Store
	log      *slog.Logger

	mu       sync.RWMutex
	partners map[peer.ID]bool
	// partnerAddrs are the addresses partners were given with (config
	// and operator; partners.go).
	partnerAddrs map[peer.ID][]ma.Multiaddr
	book         map[peer.ID]*storepb.Peer
	strange      map[peer.ID]bool // presented another network
	blocked      map[peer.ID]bool // links cut on purpose (fault injection)
	// removed are the members removed by the operator or the config, and
	// added the operator's adds of peers outside `members` (leave.go).
	removed map[peer.ID]removal
	added   map[peer.ID]bool
	// gone are the members whose record expired, as last logged.
	gone map[peer.ID]bool
	// listUntil is the first record expiry after memberList was made: the
	// list is made again from then on (zero: none).
	listUntil time.Time
	// memberList is Members' answer until the set changes (nil: to be
	// made again). Connection trimming and discovery ask for it often, and
	// with a thousand members making it (a set, then a sort) was the
	// largest share of an idle node's CPU.
	memberList []peer.ID
}

// BookDeps are what the peer book is built from.
type BookDeps struct {
	Config Config
	// Self is this node's peer id.
	Self peer.ID
	// Store holds the peer book and the operator's partner changes.
	Store  *store.Store
	Logger *slog.Logger
}

// NewBook loads the peer book and the operator's partner changes from the
// store over the config.
func NewBook(d BookDeps) (*Book, error) {
	c := d.Config
	pb := &Book{self: d.Self, name: c.Name, network: c.Network, reviewer: c.Reviewer, st: d.Store, log: d.Logger,
		members: map[peer.ID]bool{}, partners: map[peer.ID]bool{}, partnerAddrs: map[peer.ID][]ma.Multiaddr{}, book: map[peer.ID]*storepb.Peer{},
		strange: map[peer.ID]bool{}, blocked: map[peer.ID]bool{}, removed: map[peer.ID]removal{}, added: map[peer.ID]bool{},
		gone: map[peer.ID]bool{}}
	for _, id := range c.Members {
		pb.members[id] = true
	}
	for _, id := range c.Partners {
		pb.partners[id] = true
	}
	over, err := d.Store.PartnerOverrides()
	if err != nil {
		return nil, fmt.Errorf("load partners: %w", err)
	}
	for id, on := range over {
		if on {
			pb.partners[id] = true
		} else {
			delete(pb.partners, id)
		}
	}
	if err := pb.loadPartnerAddrs(c); err != nil {
		return nil, err
	}
	peers, err := d.Store.Peers()
	if err != nil {
		return nil, fmt.Errorf("load peer book: %w", err)
	}
	now := time.Now()
	var undated []*storepb.Peer
	for _, p := range peers {
		if p.Member && p.ExpiresAt == 0 && c.Lifetime > 0 {
			// Met before records had a lifetime: it has one from now to
			// show a record again.
			p.ExpiresAt = now.Add(c.Lifetime).UnixNano()
			undated = append(undated, p)
		}
		pb.book[peer.ID(p.Id)] = p
	}
	if len(undated) > 0 {
		if err := d.Store.Update(context.Background(), func(tx *store.Txn) error {
			for _, p := range undated {
				tx.PutPeer(p)
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("date the peer book's members: %w", err)
		}
	}
	delete(pb.partners, d.Self)
	pb.group = slices.Clone(c.Reviewers)
	if len(pb.group) == 0 && c.Reviewer != "" {
		pb.group = []peer.ID{c.Reviewer}
	}
	slices.Sort(pb.group)
	if slices.Contains(pb.group, d.Self) {
		pb.reviewer = d.Self
	}
	if err := pb.loadRemovals(now); err != nil {
		return nil, err
	}
	return pb, nil
}

// Self is this node.
func (b *Book) Self() peer.ID { return b.self }

// SelfName is this node's label.
func (b *Book) SelfName() string { return b.name }

// Network is the network name.
func (b *Book) Network() string { return b.network }

// Reviewer is the configured reviewer ("" when none): on a node of the
// review group the node itself, on a member the group's first reviewer.
func (b *Book) Reviewer() peer.ID { return b.reviewer }

// InReviewGroup reports whether p is one of the review group (reviewers).
func (b *Book) InReviewGroup(p peer.ID) bool { return p != "" && slices.Contains(b.group, p) }

// ReviewGroup lists the review group's peer ids, sorted (a copy).
func (b *Book) ReviewGroup() []peer.ID { return slices.Clone(b.group) }

// IsPartner reports whether p receives (and may send) owned resources.
func (b *Book) IsPartner(p peer.ID) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.partners[p]
}

// Partners lists the partners, sorted.
func (b *Book) Partners() []peer.ID {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]peer.ID, 0, len(b.partners))
	for p := range b.partners {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// allowed reports whether p may be a member at all: in `members` (or
// added by the operator) when that list is set, and not removed.
func (b *Book) allowed(p peer.ID) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.allowedLocked(p)
}

// allowedLocked is allowed; b.mu held.
func (b *Book) allowedLocked(p peer.ID) bool {
	if _, gone := b.removed[p]; gone {
		return false
	}
	return b.configAllows(p)
}

// IsMember reports whether p belongs to the network: its record presented
// our network name and has not expired (or, before any record of it, it
// is configured as partner, member or reviewer), and it is in `members`
// when that list is set, and not removed (leave.go).
func (b *Book) IsMember(p peer.ID) bool {
	if p == b.self {
		return true
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.memberLocked(p, time.Now())
}

// memberLocked is IsMember for another peer at now; b.mu held.
func (b *Book) memberLocked(p peer.ID, now time.Time) bool {
	if !b.allowedLocked(p) {
		return false
	}
	if p == b.reviewer {
		return true
	}
	if e := b.book[p]; e != nil && e.Member {
		_, expired := b.expiredLocked(p, now)
		return !expired
	}
	return b.partners[p] || b.members[p] || b.added[p]
}

// Members lists the members this node knows, itself excluded, sorted.
func (b *Book) Members() []peer.ID {
	return slices.Clone(b.members0())
}

// MemberCount is len(Members()), without the copy.
func (b *Book) MemberCount() int { return len(b.members0()) }

// members0 is the cached member list (callers must not change it).
func (b *Book) members0() []peer.ID {
	now := time.Now()
	b.mu.RLock()
	out := b.memberList
	fresh := b.listUntil.IsZero() || now.Before(b.listUntil)
	b.mu.RUnlock()
	if out != nil && fresh {
		return out
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.memberList == nil || !(b.listUntil.IsZero() || now.Before(b.listUntil)) {
		b.memberList = b.listMembers(now)
	}
	return b.memberList
}

// listMembers makes the member list at now, and notes (and logs) the
// members whose record expired; b.mu held.
func (b *Book) listMembers(now time.Time) []peer.ID {
	set := map[peer.ID]bool{}
	b.listUntil = time.Time{}
	for id, e := range b.book {
		if !e.Member {
			continue
		}
		at, expired := b.expiredLocked(id, now)
		if expired {
			if !b.gone[id] && b.allowedLocked(id) {
				b.gone[id] = true
				b.log.Info("member left: its record expired", "peer", id, "name", e.Name, "expired_at", at.UTC())
			}
			continue
		}
		if !at.IsZero() && (b.listUntil.IsZero() || at.Before(b.listUntil)) {
			b.listUntil = at
		}
		set[id] = true
	}
	for id := range b.partners {
		set[id] = true
	}
	for id := range b.members {
		set[id] = true
	}
	for id := range b.added {
		set[id] = true
	}
	if b.reviewer != "" {
		set[b.reviewer] = true
	}
	delete(set, b.self)
	out := make([]peer.ID, 0, len(set))
	for id := range set {
		if b.memberLocked(id, now) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Name is a peer's label: its hello name, else a short form of its id.
func (b *Book) Name(p peer.ID) string {
	if p == b.self {
		return b.name
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.nameLocked(p)
}

// nameLocked is Name for another peer; b.mu held (or the book not yet
// shared).
func (b *Book) nameLocked(p peer.ID) string {
	if e := b.book[p]; e != nil && e.Name != "" {
		return e.Name
	}
	s := p.String()
	if len(s) > 12 {
		return s[len(s)-8:]
	}
	return s
}

// Entry returns a copy of p's peer book entry.
func (b *Book) Entry(p peer.ID) (*storepb.Peer, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	e, ok := b.book[p]
	if !ok {
		return nil, false
	}
	return cloneEntry(e), true
}

// Entries lists the peer book.
func (b *Book) Entries() []*storepb.Peer {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]*storepb.Peer, 0, len(b.book))
	for _, e := range b.book {
		out = append(out, cloneEntry(e))
	}
	slices.SortFunc(out, func(x, y *storepb.Peer) int { return compareStrings(x.Name, y.Name) })
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func cloneEntry(e *storepb.Peer) *storepb.Peer {
	c := &storepb.Peer{Id: e.Id, Name: e.Name, Network: e.Network, LastSeen: e.LastSeen, Member: e.Member, ExpiresAt: e.ExpiresAt}
	c.Addrs = append(c.Addrs, e.Addrs...)
	return c
}

// Lookup finds peer book entries by peer id or (case-insensitive) name,
// for search on data type peer.
func (b *Book) Lookup(text string) []search.PeerRecord {
	text = strings.TrimSpace(text)
	id, idErr := peer.Decode(text)
	b.mu.RLock()
	var found []*storepb.Peer
	for p, e := range b.book {
		if (idErr == nil && p == id) || strings.EqualFold(e.Name, text) {
			found = append(found, cloneEntry(e))
		}
	}
	b.mu.RUnlock()
	slices.SortFunc(found, func(x, y *storepb.Peer) int { return compareStrings(string(x.Id), string(y.Id)) })
	out := make([]search.PeerRecord, 0, len(found))
	for _, e := range found {
		p := peer.ID(e.Id)
		r := search.PeerRecord{PeerID: p.String(), Name: b.Name(p), Addrs: []string{}, Roles: search.RoleNames(b, p)}
		for _, a := range e.Addrs {
			if m, err := ma.NewMultiaddrBytes(a); err == nil {
				r.Addrs = append(r.Addrs, m.String())
			}
		}
		out = append(out, r)
	}
	return out
}

// SetPartner adds or removes a partner and persists the operator's choice.
// Addresses given with an add are kept with it (added to those it had);
// a remove forgets them.
func (b *Book) SetPartner(ctx context.Context, p peer.ID, on bool, addrs ...ma.Multiaddr) error {
	if p == b.self {
		return errors.New("a node cannot be its own partner")
	}
	b.mu.RLock()
	kept := mergeAddrs(slices.Clone(b.partnerAddrs[p]), addrs)
	b.mu.RUnlock()
	err := b.st.Update(ctx, func(tx *store.Txn) error {
		tx.SetPartner(p, on)
		switch {
		case !on:
			tx.DeleteAux(auxPartnerAddrs + p.String())
		case len(addrs) > 0:
			tx.SetAux(auxPartnerAddrs+p.String(), encodeAddrs(kept))
		}
		return nil
	})
	if err != nil {
		return err
	}
	b.mu.Lock()
	if on {
		b.partners[p] = true
		if len(kept) > 0 {
			b.partnerAddrs[p] = kept
		}
	} else {
		delete(b.partners, p)
		delete(b.partnerAddrs, p)
	}
	b.memberList = nil
	b.mu.Unlock()
	return nil
}

// record notes a hello from p: a peer that presented another network is
// refused from now on. Hello does not make a member (its signed record
// does, see learn) and writes nothing to disk.
func (b *Book) record(p peer.ID, h *pb.Hello) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if h.Network != b.network {
		b.strange[p] = true
	}
	if e := b.book[p]; e != nil {
		e = cloneEntry(e)
		e.LastSeen = time.Now().Unix()
		b.book[p] = e
	}
}

// Block cuts p off (fault injection for tests): no connection is accepted or
// dialed until Unblock.
func (b *Book) Block(p peer.ID, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		b.blocked[p] = true
	} else {
		delete(b.blocked, p)
	}
}

func (b *Book) refused(p peer.ID) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.blocked[p] || b.strange[p] || !b.allowedLocked(p)
}

// Connection gater: members only (when `members` is set), never a peer that
// presented another network, never a blocked one.

func (b *Book) InterceptPeerDial(p peer.ID) bool                 { return !b.refused(p) }
func (b *Book) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool { return !b.refused(p) }
func (b *Book) InterceptAccept(network.ConnMultiaddrs) bool      { return true }
func (b *Book) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return !b.refused(p)
}
func (b *Book) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

package node

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
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ferrynet/ferry/membership"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/search"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// Version is Ferry's release, sent in hello.
const Version = "0.1.0"

// peerBook knows the network: who is a member, a partner, the reviewer, and
// each peer's name and addresses. It is the node's Roles for every service,
// and its connection gater.
type peerBook struct {
	self     peer.ID
	name     string
	network  string
	reviewer peer.ID
	members  map[peer.ID]bool // from config; empty: anyone who presents the network
	st       *store.Store
	log      *slog.Logger

	mu       sync.RWMutex
	partners map[peer.ID]bool
	book     map[peer.ID]*storepb.Peer
	strange  map[peer.ID]bool // presented another network
	blocked  map[peer.ID]bool // links cut on purpose (fault injection)
	onMember []func(peer.ID)
	// memberList is Members' answer until the set changes (nil: to be
	// made again). Connection trimming and discovery ask for it often, and
	// with a thousand members making it (a set, then a sort) was the
	// largest share of an idle node's CPU.
	memberList []peer.ID
}

func newPeerBook(c Config, self peer.ID, st *store.Store, log *slog.Logger) (*peerBook, error) {
	pb := &peerBook{self: self, name: c.Name, network: c.Network, st: st, log: log,
		members: map[peer.ID]bool{}, partners: map[peer.ID]bool{}, book: map[peer.ID]*storepb.Peer{},
		strange: map[peer.ID]bool{}, blocked: map[peer.ID]bool{}}
	if c.Reviewer != "" {
		pb.reviewer, _ = peer.Decode(c.Reviewer)
	}
	for _, m := range c.Members {
		id, _ := peer.Decode(m)
		pb.members[id] = true
	}
	for _, p := range c.Partners {
		id, _ := peer.Decode(p)
		pb.partners[id] = true
	}
	over, err := st.PartnerOverrides()
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
	peers, err := st.Peers()
	if err != nil {
		return nil, fmt.Errorf("load peer book: %w", err)
	}
	for _, p := range peers {
		pb.book[peer.ID(p.Id)] = p
	}
	delete(pb.partners, self)
	return pb, nil
}

// Self is this node.
func (b *peerBook) Self() peer.ID { return b.self }

// SelfName is this node's label.
func (b *peerBook) SelfName() string { return b.name }

// Network is the network name.
func (b *peerBook) Network() string { return b.network }

// Reviewer is the configured reviewer ("" when none).
func (b *peerBook) Reviewer() peer.ID { return b.reviewer }

// IsPartner reports whether p receives (and may send) owned resources.
func (b *peerBook) IsPartner(p peer.ID) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.partners[p]
}

// Partners lists the partners, sorted.
func (b *peerBook) Partners() []peer.ID {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]peer.ID, 0, len(b.partners))
	for p := range b.partners {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// allowed reports whether p may be a member at all.
func (b *peerBook) allowed(p peer.ID) bool {
	return len(b.members) == 0 || b.members[p]
}

// IsMember reports whether p belongs to the network: it presented our
// network name (or is configured as partner or reviewer), and is in
// `members` when that list is set.
func (b *peerBook) IsMember(p peer.ID) bool {
	if p == b.self {
		return true
	}
	if !b.allowed(p) {
		return false
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if e := b.book[p]; e != nil && e.Member {
		return true
	}
	return b.partners[p] || p == b.reviewer || b.members[p]
}

// Members lists the members this node knows, itself excluded, sorted.
func (b *peerBook) Members() []peer.ID {
	return slices.Clone(b.members0())
}

// MemberCount is len(Members()), without the copy.
func (b *peerBook) MemberCount() int { return len(b.members0()) }

// members0 is the cached member list (callers must not change it).
func (b *peerBook) members0() []peer.ID {
	b.mu.RLock()
	out := b.memberList
	b.mu.RUnlock()
	if out != nil {
		return out
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.memberList == nil {
		b.memberList = b.listMembers()
	}
	return b.memberList
}

// listMembers makes the member list; b.mu held.
func (b *peerBook) listMembers() []peer.ID {
	set := map[peer.ID]bool{}
	for id, e := range b.book {
		if e.Member {
			set[id] = true
		}
	}
	for id := range b.partners {
		set[id] = true
	}
	for id := range b.members {
		set[id] = true
	}
	if b.reviewer != "" {
		set[b.reviewer] = true
	}
	delete(set, b.self)
	out := make([]peer.ID, 0, len(set))
	for id := range set {
		if b.allowed(id) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Name is a peer's label: its hello name, else a short form of its id.
func (b *peerBook) Name(p peer.ID) string {
	if p == b.self {
		return b.name
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
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
func (b *peerBook) Entry(p peer.ID) (*storepb.Peer, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	e, ok := b.book[p]
	if !ok {
		return nil, false
	}
	return cloneEntry(e), true
}

// Entries lists the peer book.
func (b *peerBook) Entries() []*storepb.Peer {
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
	c := &storepb.Peer{Id: e.Id, Name: e.Name, Network: e.Network, LastSeen: e.LastSeen, Member: e.Member}
	c.Addrs = append(c.Addrs, e.Addrs...)
	return c
}

// Lookup finds peer book entries by peer id or (case-insensitive) name,
// for search on data type peer.
func (b *peerBook) Lookup(text string) []search.PeerRecord {
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

// OnMember registers fn to run each time a member says hello (each new
// connection): the node uses it to resend and catch up at once.
func (b *peerBook) OnMember(fn func(peer.ID)) {
	b.mu.Lock()
	b.onMember = append(b.onMember, fn)
	b.mu.Unlock()
}

// SetPartner adds or removes a partner and persists the operator's choice.
func (b *peerBook) SetPartner(ctx context.Context, p peer.ID, on bool) error {
	if p == b.self {
		return errors.New("a node cannot be its own partner")
	}
	err := b.st.Update(ctx, func(tx *store.Txn) error {
		tx.SetPartner(p, on)
		return nil
	})
	if err != nil {
		return err
	}
	b.mu.Lock()
	if on {
		b.partners[p] = true
	} else {
		delete(b.partners, p)
	}
	b.memberList = nil
	b.mu.Unlock()
	return nil
}

// record notes a hello from p: a peer that presented another network is
// refused from now on; a member's hello (a live connection) runs the
// OnMember hooks. Hello does not make a member (its signed record does,
// see learn) and writes nothing to disk.
func (b *peerBook) record(p peer.ID, h *pb.Hello) {
	b.mu.Lock()
	if h.Network != b.network {
		b.strange[p] = true
	}
	if e := b.book[p]; e != nil {
		e = cloneEntry(e)
		e.LastSeen = time.Now().Unix()
		b.book[p] = e
	}
	hooks := slices.Clone(b.onMember)
	b.mu.Unlock()
	if h.Network == b.network && b.IsMember(p) {
		for _, fn := range hooks {
			fn(p)
		}
	}
}

// Block cuts p off (fault injection for tests): no connection is accepted or
// dialed until Unblock.
func (b *peerBook) Block(p peer.ID, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		b.blocked[p] = true
	} else {
		delete(b.blocked, p)
	}
}

func (b *peerBook) refused(p peer.ID) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.blocked[p] || b.strange[p] || !b.allowed(p)
}

// Connection gater: members only (when `members` is set), never a peer that
// presented another network, never a blocked one.

func (b *peerBook) InterceptPeerDial(p peer.ID) bool                 { return !b.refused(p) }
func (b *peerBook) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool { return !b.refused(p) }
func (b *peerBook) InterceptAccept(network.ConnMultiaddrs) bool      { return true }
func (b *peerBook) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return !b.refused(p)
}
func (b *peerBook) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

// hello exchanges names and network on a connection this node dialed; the
// other side answers on the same stream.
type hello struct {
	h    host.Host
	book *peerBook
	log  *slog.Logger
	// holds tells how far this node holds a peer's own changes (sent in
	// hello); onHolds hears how far the peer holds this node's.
	holds   func(peer.ID) uint64
	onHolds func(peer.ID, uint64)
	// own is this node's signed membership record (sent in hello); take
	// verifies and keeps a peer's.
	own  func() []byte
	take func(p peer.ID, raw []byte)
	// seen hears that a connection's hello ended (streams may wait on it).
	seen *greetings

	mu      sync.Mutex
	greeted map[string]bool  // connection ids that exchanged hello
	met     map[peer.ID]bool // peers that exchanged hello since the node started
}

// Met reports whether p exchanged hello with this node since it started.
func (x *hello) Met(p peer.ID) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.met[p]
}

// pending lists connections that have not exchanged hello yet.
func (x *hello) pending() []network.Conn {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []network.Conn
	for _, c := range x.h.Network().Conns() {
		if !x.greeted[c.ID()] {
			out = append(out, c)
		}
	}
	return out
}

func (x *hello) forget(c network.Conn) {
	x.mu.Lock()
	delete(x.greeted, c.ID())
	x.mu.Unlock()
}

func (x *hello) me(p peer.ID) *pb.Hello {
	h := &pb.Hello{Network: x.book.network, Name: x.book.name, Version: Version}
	if x.own != nil {
		h.Record = x.own()
	}
	if x.holds != nil {
		h.HoldsVersion = x.holds(p)
	}
	for _, a := range x.h.Addrs() {
		h.Addrs = append(h.Addrs, a.Bytes())
	}
	return h
}

// maxHelloBytes bounds a hello frame: names, addresses and a membership
// record.
const maxHelloBytes = 4096 + membership.MaxRecordBytes

func (x *hello) serve(s network.Stream) error {
	_ = s.SetDeadline(time.Now().Add(protocols.HelloTimeout))
	theirs := &pb.Hello{}
	fr := protocols.NewFrameReader(s, maxHelloBytes)
	defer fr.Release()
	if err := fr.Read(theirs); err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	fw := protocols.NewFrameWriter(s, maxHelloBytes)
	defer fw.Release()
	if err := fw.Write(x.me(s.Conn().RemotePeer())); err != nil {
		return err
	}
	if err := fw.Flush(); err != nil {
		return err
	}
	x.learn(s.Conn(), theirs)
	return nil
}

func (x *hello) greet(ctx context.Context, c network.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, protocols.HelloTimeout)
	defer cancel()
	s, err := x.h.NewStream(network.WithNoDial(ctx, "hello"), c.RemotePeer(), protocols.Hello)
	if err != nil {
		return fmt.Errorf("open hello: %w", err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(protocols.HelloTimeout))
	fw := protocols.NewFrameWriter(s, maxHelloBytes)
	defer fw.Release()
	fr := protocols.NewFrameReader(s, maxHelloBytes)
	defer fr.Release()
	if err := fw.Write(x.me(c.RemotePeer())); err != nil {
		_ = s.Reset()
		return err
	}
	if err := fw.Flush(); err != nil {
		_ = s.Reset()
		return err
	}
	theirs := &pb.Hello{}
	if err := fr.Read(theirs); err != nil {
		_ = s.Reset()
		return fmt.Errorf("read hello: %w", err)
	}
	x.learn(c, theirs)
	return nil
}

func (x *hello) learn(c network.Conn, h *pb.Hello) {
	if x.seen != nil {
		defer x.seen.greeted(c)
	}
	x.mu.Lock()
	x.greeted[c.ID()] = true
	if x.met == nil {
		x.met = map[peer.ID]bool{}
	}
	x.met[c.RemotePeer()] = true
	x.mu.Unlock()
	p := c.RemotePeer()
	// The peer's own listen addresses; a connection's remote address is an
	// ephemeral port when the peer dialed in.
	var addrs []ma.Multiaddr
	for _, b := range h.Addrs {
		if a, err := ma.NewMultiaddrBytes(b); err == nil {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 && c.Stat().Direction == network.DirOutbound {
		addrs = []ma.Multiaddr{c.RemoteMultiaddr()}
	}
	if len(addrs) > 0 && h.Network == x.book.network {
		x.h.Peerstore().AddAddrs(p, addrs, peerstore.RecentlyConnectedAddrTTL)
	}
	if len(h.Record) > 0 && h.Network == x.book.network && x.take != nil {
		x.take(p, h.Record)
	}
	x.book.record(p, h)
	if h.Network != x.book.network {
		x.log.Warn("peer is in another network; disconnecting", "peer", p, "network", h.Network)
		_ = c.Close()
		return
	}
	if x.onHolds != nil && x.book.IsMember(p) {
		x.onHolds(p, h.HoldsVersion)
	}
}

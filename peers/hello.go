package peers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/membership"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// Hello exchanges names, network, addresses, membership records and how far
// each side holds the other's changes, once on each connection: the side
// that dialed greets, the other answers on the same stream.
type Hello struct {
	cfg      Config
	h        host.Host
	book     *Book
	gate     *Gate
	members  *membership.Service
	holds    func(peer.ID) uint64
	onHolds  func(peer.ID, uint64)
	onMember func(peer.ID)
	group    *lifecycle.Group
	log      *slog.Logger

	mu      sync.Mutex
	greeted map[network.Conn]bool // connections that exchanged hello (by identity: a swarm connection's ID() formats its peer id at each call)
	met     map[peer.ID]bool      // peers that exchanged hello since the node started
}

// HelloDeps are what hello works with; every one is required.
type HelloDeps struct {
	Config Config
	Host   host.Host
	Book   *Book
	// Gate hears that a connection's hello ended (streams may wait on it).
	Gate *Gate
	// Members gives this node's signed membership record (sent in hello)
	// and verifies and keeps a peer's.
	Members *membership.Service
	// Holds tells how far this node holds a peer's own changes (sent in
	// hello); OnHolds hears how far the peer holds this node's.
	Holds   func(peer.ID) uint64
	OnHolds func(peer.ID, uint64)
	// OnMember runs each time a member says hello (each new connection),
	// on the goroutine of the exchange: the node resends and catches up at
	// once. It must not block for long.
	OnMember func(peer.ID)
	// Group owns the greetings' goroutines (Greet).
	Group  *lifecycle.Group
	Logger *slog.Logger
}

// NewHello builds hello; nothing runs until the node serves Serve and calls
// Greet.
func NewHello(d HelloDeps) *Hello {
	return &Hello{cfg: d.Config, h: d.Host, book: d.Book, gate: d.Gate, members: d.Members, holds: d.Holds,
		onHolds: d.OnHolds, onMember: d.OnMember, group: d.Group, log: d.Logger,
		greeted: map[network.Conn]bool{}, met: map[peer.ID]bool{}}
}

// Met reports whether p exchanged hello with this node since it started.
func (x *Hello) Met(p peer.ID) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.met[p]
}

// pending lists connections that have not exchanged hello yet.
func (x *Hello) pending() []network.Conn {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []network.Conn
	for _, c := range x.h.Network().Conns() {
		if !x.greeted[c] {
			out = append(out, c)
		}
	}
	return out
}

func (x *Hello) forget(c network.Conn) {
	x.mu.Lock()
	delete(x.greeted, c)
	x.mu.Unlock()
}

func (x *Hello) me(p peer.ID) *pb.Hello {
	h := &pb.Hello{Network: x.cfg.Network, Name: x.cfg.Name, Version: x.cfg.Version, Record: x.members.Own(),
		HoldsVersion: x.holds(p)}
	for _, a := range x.h.Addrs() {
		h.Addrs = append(h.Addrs, a.Bytes())
	}
	return h
}

// maxHelloBytes bounds a hello frame: names, addresses and a membership
// record.
const maxHelloBytes = 4096 + membership.MaxRecordBytes

// Serve answers a hello a peer opened (the handler of protocols.Hello).
func (x *Hello) Serve(s network.Stream) error {
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

// Greet runs hello on c in the background, on the group; ctx bounds it.
func (x *Hello) Greet(ctx context.Context, c network.Conn) {
	x.group.Go(func() {
		if err := x.greet(ctx, c); err != nil && ctx.Err() == nil {
			x.log.Debug("hello failed", "peer", c.RemotePeer(), "err", err)
		}
	})
}

// GreetPending greets, in the background, every connection that has not
// exchanged hello yet.
func (x *Hello) GreetPending(ctx context.Context) {
	for _, c := range x.pending() {
		x.Greet(ctx, c)
	}
}

func (x *Hello) greet(ctx context.Context, c network.Conn) error {
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

func (x *Hello) learn(c network.Conn, h *pb.Hello) {
	defer x.gate.greeted(c)
	x.mu.Lock()
	x.greeted[c] = true
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
	if len(addrs) > 0 && h.Network == x.cfg.Network {
		x.h.Peerstore().AddAddrs(p, addrs, peerstore.RecentlyConnectedAddrTTL)
	}
	if len(h.Record) > 0 && h.Network == x.cfg.Network {
		x.takeRecord(p, h.Record)
	}
	x.book.record(p, h)
	if h.Network == x.cfg.Network && x.book.IsMember(p) {
		x.onMember(p)
	}
	if h.Network != x.cfg.Network {
		x.log.Warn("peer is in another network; disconnecting", "peer", p, "network", h.Network)
		_ = c.Close()
		return
	}
	if x.book.IsMember(p) {
		x.onHolds(p, h.HoldsVersion)
	}
}

// takeRecord keeps the membership record a peer sent in hello.
func (x *Hello) takeRecord(p peer.ID, raw []byte) {
	r, err := x.members.Take(raw)
	switch {
	case err != nil && !errors.Is(err, membership.ErrStale):
		x.log.Debug("member record in hello refused", "peer", p, "err", err)
	case err == nil && r.Peer != p:
		x.log.Debug("hello carried another peer's record", "peer", p, "record", r.Peer)
	}
	if err == nil || errors.Is(err, membership.ErrStale) {
		x.members.Joined()
	}
}

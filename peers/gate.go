package peers

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/ferrynet/ferry/protocols"
)

// Admission before allocation (docs/architecture.md, "Admission"): every
// protocol names who may open a stream of it, and a stream of anyone else
// is reset when it opens, before a byte of it is read.

// Gate admits streams when they open, and keeps what that needs of each
// connection: when it opened and whether its hello ended.
type Gate struct {
	book *Book
	stop <-chan struct{}
	log  *slog.Logger
	// greetings tells when each connection's hello ended.
	greetings *greetings
	// seen holds when each connection without a transport open time
	// (libp2p's mocknet) connected, by connection id (see openedAt).
	seen sync.Map
	// helloAt holds when each connection's hello ended, by connection id
	// (settled).
	helloAt sync.Map
	// keeper is the node's, once built: the DHT's dials (BoundDials) take
	// room from it.
	keeper atomic.Pointer[Keeper]
}

// GateDeps are what the gate works with; every one is required.
type GateDeps struct {
	Book *Book
	// Stop is closed when the node stops: streams waiting for a hello go
	// on at once.
	Stop   <-chan struct{}
	Logger *slog.Logger
}

// NewGate builds the gate. It admits nothing until a host is behind it
// (Admitted, Prebuilt).
func NewGate(d GateDeps) *Gate {
	return &Gate{book: d.Book, stop: d.Stop, log: d.Logger, greetings: newGreetings()}
}

// AdmitDelivery says who may open a delivery stream: owned resources,
// considers and planner entries come from partners; review requests (to
// the reviewer) and decisions (from the reviewer) from members. Each
// change is still checked by its service (the node's kindMux.Admit).
func (g *Gate) AdmitDelivery(p peer.ID, id protocol.ID) bool {
	switch id {
	case protocols.ResourceConsider, protocols.Planner:
		return g.book.IsPartner(p)
	}
	return g.book.IsPartner(p) || g.book.IsMember(p)
}

// helloWait bounds how long a stream from a peer not known yet waits for
// the hello of its connection (counted from the connection's opening):
// every Ferry node says hello on each connection it dials, and the DHT and
// gossipsub of a joining node open their streams at the same moment.
const helloWait = 5 * time.Second

// Streams that wait for a hello are bounded, per connection and in all: a
// waiting stream holds what its peer sent (up to its window, 256 KiB) and a
// goroutine. A joining node opens a few (the DHT, gossipsub); beyond the
// bounds a stream is decided at once, as if its hello had not come.
const (
	waitPerConn = 8
	waitTotal   = 128
)

// greetings tells, per connection, when its hello exchange ended (or the
// connection went), for streams that wait on it.
type greetings struct {
	mu      sync.Mutex
	done    map[string]chan struct{} // by connection id; closed when greeted or gone
	waiting map[string]int           // streams waiting, by connection id
	total   int                      // streams waiting in all
}

func newGreetings() *greetings {
	return &greetings{done: map[string]chan struct{}{}, waiting: map[string]int{}}
}

// enter counts a stream that waits on connection id; false when the
// bounds are reached.
func (g *greetings) enter(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.total >= waitTotal || g.waiting[id] >= waitPerConn {
		return false
	}
	g.total++
	g.waiting[id]++
	return true
}

func (g *greetings) leave(id string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.total--
	if g.waiting[id]--; g.waiting[id] <= 0 {
		delete(g.waiting, id)
	}
}

func (g *greetings) chanOf(id string) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch := g.done[id]
	if ch == nil {
		ch = make(chan struct{})
		g.done[id] = ch
	}
	return ch
}

// greeted marks c's hello done.
func (g *greetings) greeted(c network.Conn) {
	ch := g.chanOf(c.ID())
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// forget drops a closed connection, waking whoever waits on it.
func (g *greetings) forget(c network.Conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ch := g.done[c.ID()]; ch != nil {
		select {
		case <-ch:
		default:
			close(ch)
		}
		delete(g.done, c.ID())
	}
}

// wait returns when c's hello is done, c closed, stop closed, or at
// until; at once when too many streams wait already.
func (g *greetings) wait(c network.Conn, until time.Time, stop <-chan struct{}) {
	d := time.Until(until)
	if d <= 0 || c.IsClosed() || !g.enter(c.ID()) {
		return
	}
	defer g.leave(c.ID())
	ch := g.chanOf(c.ID())
	if c.IsClosed() { // closed meanwhile: forget may have run before chanOf
		g.forget(c)
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-stop:
	}
}

// greeted marks c's hello done (Hello, when an exchange ends).
func (g *Gate) greeted(c network.Conn) {
	g.helloAt.LoadOrStore(c.ID(), time.Now())
	g.greetings.greeted(c)
}

// settled reports whether c's hello ended at least d ago.
func (g *Gate) settled(c network.Conn, d time.Duration) bool {
	v, ok := g.helloAt.Load(c.ID())
	return ok && time.Since(v.(time.Time)) >= d
}

// opened notes when c opened, for a transport that keeps no open time
// (the connection notifiee, as c connects).
func (g *Gate) opened(c network.Conn) {
	if c.Stat().Opened.IsZero() {
		g.seen.Store(c.ID(), time.Now())
	}
}

// closed forgets a closed connection, waking the streams that wait on its
// hello.
func (g *Gate) closed(c network.Conn) {
	g.greetings.forget(c)
	g.seen.Delete(c.ID())
	g.helloAt.Delete(c.ID())
}

// openedAt is when c opened: the transport's word (Stat().Opened), else
// when the node saw it connect (libp2p's mocknet leaves Opened unset; a
// connection older than the notifiee is taken as opened now).
func (g *Gate) openedAt(c network.Conn) time.Time {
	if t := c.Stat().Opened; !t.IsZero() {
		return t
	}
	v, _ := g.seen.LoadOrStore(c.ID(), time.Now())
	return v.(time.Time)
}

// known reports whether p may be admitted by role without waiting: a
// member (partners and the reviewer are members).
func (g *Gate) known(p peer.ID) bool { return g.book.IsPartner(p) || g.book.IsMember(p) }

// handler wraps every stream handler set on the node's host after it was
// built (Ferry's own, the DHT's, gossipsub's; libp2p's identify and ping
// are set before and stay as they are):
//
//   - a stream from a peer this node does not count a member yet, on a
//     connection whose hello has not ended, waits for that hello (at most
//     helloWait after the connection opened; at most waitPerConn and
//     waitTotal streams wait) before its handler runs, so the handler's
//     admission check (inbound.Handle) knows the peer;
//   - the DHT and gossipsub, which have no admission check of their own,
//     admit members only: a stranger's stream is reset before a byte of it
//     is read (the DHT sizes its buffer from the length a message claims).
//
// Hello and the members pull are how a peer says who it is: they never
// wait.
func (g *Gate) handler(pid protocol.ID, h network.StreamHandler) network.StreamHandler {
	if pid == protocols.Hello || pid == protocols.Members {
		return h
	}
	membersOnly := pid == dhtProtocol || !strings.HasPrefix(string(pid), "/ferry/")
	return func(s network.Stream) {
		c := s.Conn()
		p := c.RemotePeer()
		if !g.known(p) {
			g.greetings.wait(c, g.openedAt(c).Add(helloWait), g.stop)
			if membersOnly && !g.known(p) {
				g.log.Debug("stream refused at open: peer not admitted", "protocol", pid, "peer", p)
				_ = s.Reset()
				return
			}
		}
		h(s)
	}
}

// dhtProtocol is the DHT's stream protocol (/ferry/kad/1.0.0).
const dhtProtocol = protocols.DHTPrefix + "/kad/1.0.0"

// Admitted is h, built with the peer book as its connection gater, with
// every stream handler set on it from now on behind the gate.
func (g *Gate) Admitted(h host.Host) host.Host { return &admittedHost{Host: h, gate: g} }

// admittedHost is a built host whose stream handlers pass the gate.
type admittedHost struct {
	host.Host
	gate *Gate
}

func (a *admittedHost) SetStreamHandler(pid protocol.ID, h network.StreamHandler) {
	a.Host.SetStreamHandler(pid, a.gate.handler(pid, h))
}

func (a *admittedHost) SetStreamHandlerMatch(pid protocol.ID, m func(protocol.ID) bool, h network.StreamHandler) {
	a.Host.SetStreamHandlerMatch(pid, m, a.gate.handler(pid, h))
}

// A prebuilt host (the node's Options.Host: libp2p's mocknet in tests and
// the scale bench) has no connection gater of ours, so the peer book gates
// it the other way round, with the same answers as the gater of a built
// host:
//
//   - dials: Connect and NewStream to a refused peer fail before dialing
//     (InterceptPeerDial, InterceptAddrDial);
//   - connections: a connection with a refused peer, either direction, is
//     closed as soon as the network reports it (InterceptSecured; see
//     DropRefused);
//   - streams: every stream handler set on the node's host first resets a
//     stream whose peer is refused, so nothing a refused peer sends in the
//     moment before its connection closes reaches a service.
//
// Handlers the prebuilt host set before the node was built (libp2p's
// identify and ping) are not wrapped: they answer a refused peer until its
// connection closes, as they would not under the gater. Nothing of Ferry's
// is among them.

// Prebuilt is a prebuilt host h behind the peer book and the gate (see
// above). Call DropRefused on h too.
func (g *Gate) Prebuilt(h host.Host) host.Host { return &gatedHost{Host: h, gate: g} }

// DropRefused closes h's connections with peers the book refuses: those
// open now, and each one as the network reports it (behind the gater too: a
// connection that passed the gater before its peer was blocked is added
// after the block).
func (g *Gate) DropRefused(h host.Host) {
	h.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, conn network.Conn) {
		if g.book.refused(conn.RemotePeer()) {
			_ = conn.Close()
		}
	}})
	// Connections made before the notifiee (a test that linked and
	// connected the hosts first).
	for _, conn := range h.Network().Conns() {
		if g.book.refused(conn.RemotePeer()) {
			_ = conn.Close()
		}
	}
}

// gatedHost is a prebuilt host behind the peer book (see above).
type gatedHost struct {
	host.Host
	gate *Gate
}

func (g *gatedHost) Connect(ctx context.Context, ai peer.AddrInfo) error {
	if g.gate.book.refused(ai.ID) {
		return fmt.Errorf("connect %s: refused by the peer book", ai.ID)
	}
	return g.Host.Connect(ctx, ai)
}

func (g *gatedHost) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	if g.gate.book.refused(p) {
		return nil, fmt.Errorf("stream to %s: refused by the peer book", p)
	}
	return g.Host.NewStream(ctx, p, pids...)
}

func (g *gatedHost) SetStreamHandler(pid protocol.ID, h network.StreamHandler) {
	g.Host.SetStreamHandler(pid, g.refuse(g.gate.handler(pid, h)))
}

func (g *gatedHost) SetStreamHandlerMatch(pid protocol.ID, m func(protocol.ID) bool, h network.StreamHandler) {
	g.Host.SetStreamHandlerMatch(pid, m, g.refuse(g.gate.handler(pid, h)))
}

// refuse resets a stream whose peer the book refuses before h runs.
func (g *gatedHost) refuse(h network.StreamHandler) network.StreamHandler {
	return func(s network.Stream) {
		if g.gate.book.refused(s.Conn().RemotePeer()) {
			_ = s.Reset()
			return
		}
		h(s)
	}
}

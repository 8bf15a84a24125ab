package node

import (
	"strings"
	"sync"
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

// admitDelivery says who may open a delivery stream: owned resources,
// considers and planner entries come from partners; review requests (to
// the reviewer) and decisions (from the reviewer) from members. Each
// change is still checked by its service (kindMux.Admit).
func (n *Node) admitDelivery(p peer.ID, id protocol.ID) bool {
	switch id {
	case protocols.ResourceConsider, protocols.Planner:
		return n.book.IsPartner(p)
	}
	return n.book.IsPartner(p) || n.book.IsMember(p)
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

// knownPeer reports whether p may be admitted by role without waiting: a
// member (partners and the reviewer are members).
func (n *Node) knownPeer(p peer.ID) bool { return n.book.IsPartner(p) || n.book.IsMember(p) }

// gateStream wraps every stream handler set on the node's host after it
// was built (Ferry's own, the DHT's, gossipsub's; libp2p's identify and
// ping are set before and stay as they are):
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
func (n *Node) gateStream(pid protocol.ID, h network.StreamHandler) network.StreamHandler {
	if pid == protocols.Hello || pid == protocols.Members {
		return h
	}
	membersOnly := pid == dhtProtocol || !strings.HasPrefix(string(pid), "/ferry/")
	return func(s network.Stream) {
		c := s.Conn()
		p := c.RemotePeer()
		if !n.knownPeer(p) {
			n.greetings.wait(c, n.openedAt(c).Add(helloWait), n.ctx.Done())
			if membersOnly && !n.knownPeer(p) {
				n.log.Debug("stream refused at open: peer not admitted", "protocol", pid, "peer", p)
				_ = s.Reset()
				return
			}
		}
		h(s)
	}
}

// dhtProtocol is the DHT's stream protocol (/ferry/kad/1.0.0).
const dhtProtocol = protocols.DHTPrefix + "/kad/1.0.0"

// admittedHost is a built host whose stream handlers pass gateStream.
type admittedHost struct {
	host.Host
	gate func(protocol.ID, network.StreamHandler) network.StreamHandler
}

func (a *admittedHost) SetStreamHandler(pid protocol.ID, h network.StreamHandler) {
	a.Host.SetStreamHandler(pid, a.gate(pid, h))
}

func (a *admittedHost) SetStreamHandlerMatch(pid protocol.ID, m func(protocol.ID) bool, h network.StreamHandler) {
	a.Host.SetStreamHandlerMatch(pid, m, a.gate(pid, h))
}

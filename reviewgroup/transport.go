package reviewgroup

// transport.go: raft's StreamLayer over libp2p. raft's NetworkTransport
// treats it as a TCP listener and dialer: it dials a server address (here a
// peer id) for a connection it pools and reuses, and serves each accepted
// connection on a goroutine of its own until the connection fails. Each
// connection is one libp2p stream on /ferry/review-raft/1.0.0.
//
// Who ends what: raft closes the connections it dialed (or pools them until
// the layer closes) and closes each accepted one when its reader ends. The
// layer's Close resets every stream still open, so those readers end; the
// inbound handler that handed a stream to raft returns once raft closed it,
// and the Group's lifecycle.Group waits for the handlers. Locks: mu guards
// conns and is a leaf (nothing is called under it).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols"
)

// errLayerClosed is what Accept and Dial return once the layer closed.
var errLayerClosed = errors.New("review group transport closed")

// raftStreamReserve is the memory reserved for one inbound raft stream:
// raft's reader buffer (256 KiB) and writer buffer (4 KiB).
const raftStreamReserve = 260 << 10

// streamLayer implements raft.StreamLayer on a libp2p host.
type streamLayer struct {
	host    host.Host
	self    peer.ID
	allowed func(peer.ID) bool

	accept chan *conn // unbuffered: a stream is raft's once Accept took it
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	conns map[*conn]struct{} // open streams, both directions
	shut  bool

	heard sync.Map // peer.ID -> *atomic.Int64: when bytes last arrived from it (unix ns)
}

func newStreamLayer(h host.Host, allowed func(peer.ID) bool) *streamLayer {
	ctx, cancel := context.WithCancel(context.Background())
	return &streamLayer{
		host: h, self: h.ID(), allowed: allowed,
		accept: make(chan *conn), ctx: ctx, cancel: cancel,
		conns: map[*conn]struct{}{},
	}
}

// Accept hands raft the next inbound stream.
func (l *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.ctx.Done():
		return nil, errLayerClosed
	}
}

// Close stops Accept and Dial and ends every stream still open (raft calls
// it from NetworkTransport.Close). Idempotent.
func (l *streamLayer) Close() error {
	l.mu.Lock()
	if l.shut {
		l.mu.Unlock()
		return nil
	}
	l.shut = true
	open := make([]*conn, 0, len(l.conns))
	for c := range l.conns {
		open = append(open, c)
	}
	l.mu.Unlock()
	l.cancel()
	for _, c := range open {
		// The peer reads the end of the stream (raft takes that quietly),
		// and the reset ends this side's readers at once.
		_ = c.s.CloseWrite()
		_ = c.s.Reset()
	}
	return nil
}

// Addr is this member's raft address: its peer id.
func (l *streamLayer) Addr() net.Addr { return addr(l.self) }

// Dial opens a stream to the member whose address (peer id) is address.
func (l *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	p, err := peer.Decode(string(address))
	if err != nil {
		return nil, fmt.Errorf("review group: server address %q is not a peer id: %w", address, err)
	}
	if !l.allowed(p) {
		return nil, fmt.Errorf("review group: %s is not a member of the group here: not dialed", p)
	}
	ctx := l.ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	// Raft paces its own retries; the swarm's dial backoff (up to minutes
	// after repeated failures) would keep a healed link shut.
	ctx = network.WithForceDirectDial(ctx, "ferry review group")
	s, err := l.host.NewStream(ctx, p, protocols.ReviewRaft)
	if err != nil {
		return nil, fmt.Errorf("review group: open a raft stream to %s: %w", p, err)
	}
	if err := s.Scope().SetService(protocols.ServiceReviewGroup); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("review group: raft stream to %s: %w", p, err)
	}
	c := l.newConn(s)
	if !l.track(c) {
		_ = s.Reset()
		return nil, errLayerClosed
	}
	return c, nil
}

// serve is the inbound handler of /ferry/review-raft/1.0.0 (registered
// with inbound.Handle, which has checked Allowed): it hands the stream to
// raft and returns when raft closed it, or at once if the layer closed
// before raft took it.
func (l *streamLayer) serve(s network.Stream) error {
	c := l.newConn(s)
	if !l.track(c) {
		return errLayerClosed
	}
	select {
	case l.accept <- c:
	case <-l.ctx.Done():
		_ = c.Close()
		return errLayerClosed
	}
	<-c.done
	return nil
}

// track counts c in the open streams, unless the layer closed.
func (l *streamLayer) track(c *conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.shut {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *streamLayer) forget(c *conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// heardFrom notes that bytes arrived from p now.
func (l *streamLayer) heardFrom(p peer.ID) {
	v, ok := l.heard.Load(p)
	if !ok {
		v, _ = l.heard.LoadOrStore(p, new(atomic.Int64))
	}
	v.(*atomic.Int64).Store(time.Now().UnixNano())
}

// lastHeard is when bytes last arrived from p on a raft stream (zero:
// never since the start).
func (l *streamLayer) lastHeard(p peer.ID) time.Time {
	if v, ok := l.heard.Load(p); ok {
		return time.Unix(0, v.(*atomic.Int64).Load())
	}
	return time.Time{}
}

func (l *streamLayer) newConn(s network.Stream) *conn {
	return &conn{s: s, layer: l, remote: s.Conn().RemotePeer(), done: make(chan struct{})}
}

// conn is a libp2p stream seen as a net.Conn: Read, Write and the deadlines
// are the stream's; Close closes it (a reset if the close fails) once.
type conn struct {
	s      network.Stream
	layer  *streamLayer
	remote peer.ID
	once   sync.Once
	done   chan struct{} // closed by Close
}

var _ net.Conn = (*conn)(nil)

func (c *conn) Read(b []byte) (int, error) {
	n, err := c.s.Read(b)
	if n > 0 {
		c.layer.heardFrom(c.remote)
	}
	return n, err
}

func (c *conn) Write(b []byte) (int, error)        { return c.s.Write(b) }
func (c *conn) SetDeadline(t time.Time) error      { return c.s.SetDeadline(t) }
func (c *conn) SetReadDeadline(t time.Time) error  { return c.s.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.s.SetWriteDeadline(t) }

func (c *conn) Close() error {
	c.once.Do(func() {
		if err := c.s.Close(); err != nil {
			_ = c.s.Reset()
		}
		c.layer.forget(c)
		close(c.done)
	})
	return nil
}

func (c *conn) LocalAddr() net.Addr  { return addr(c.layer.self) }
func (c *conn) RemoteAddr() net.Addr { return addr(c.remote) }

// addr is a member's raft address: its peer id.
type addr peer.ID

func (a addr) Network() string { return "libp2p" }
func (a addr) String() string  { return peer.ID(a).String() }

package testnet

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/nats-io/nats-server/v2/server"
)

// mockHost adds node i to the mocknet under its home's key, at the address
// of its config, and returns its host behind a linker (Options.Mocknet).
// A host of an earlier run of node i was closed with that node; its links
// went with it (unlink).
func (n *Net) mockHost(i int) (host.Host, error) {
	key, err := n.Homes[i].Identity()
	if err != nil {
		return nil, err
	}
	a, err := ma.NewMultiaddr(n.cfgs[i].Listen[0])
	if err != nil {
		return nil, err
	}
	h, err := n.mn.AddPeer(key, a)
	if err != nil {
		return nil, err
	}
	return &linker{Host: h, mn: n.mn, wan: n.wan, admit: n.admits,
		site: func(from, to peer.ID, at string) { n.sites.Store([2]peer.ID{from, to}, at) }}, nil
}

// DialSite says where in the node's code the last mocknet dial from `from`
// to `to` that made a new connection was asked for (the innermost Ferry
// functions of its call stack), or "" when none did (a prebuilt host's
// dials, a connection `to` opened). For tests that must name what took a
// node above its bound.
func (n *Net) DialSite(from, to peer.ID) string {
	v, _ := n.sites.Load([2]peer.ID{from, to})
	s, _ := v.(string)
	return s
}

// callSite names the caller's stack, innermost first: the first Ferry
// functions (outside this package) and, where Ferry was called from a
// library's goroutine, the library's functions that called it.
func callSite() string {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(3, pcs)])
	var names []string
	lib := 0 // library frames named after the last Ferry one
	for len(names) < 6 {
		f, more := frames.Next()
		switch {
		case strings.Contains(f.Function, "/internal/testnet."):
		case strings.HasPrefix(f.Function, "github.com/ferrynet/ferry/"):
			names, lib = append(names, strings.TrimPrefix(f.Function, "github.com/ferrynet/ferry/")), 0
		case len(names) > 0 && lib < 2 && !strings.HasPrefix(f.Function, "runtime."):
			names, lib = append(names, f.Function), lib+1
		}
		if !more {
			break
		}
	}
	return strings.Join(names, " < ")
}

// admits asks the node at `to`, as a built host's connection gater would,
// whether it takes a connection `from` opens (node.AdmitConnection); a
// node not running takes none, and its dial fails on its own.
func (n *Net) admits(to, from peer.ID) bool {
	for i, id := range n.IDs {
		if id == to {
			if nd := n.Node(i); nd != nil {
				return nd.AdmitConnection(from)
			}
			return true
		}
	}
	return true
}

// unlink removes node i's mocknet links after it stopped, so a restarted
// node i is linked to its new host, not the closed one.
func (n *Net) unlink(i int) {
	n.mu.Lock()
	closing := n.closing
	n.mu.Unlock()
	if n.mn == nil || closing {
		return
	}
	for _, p := range n.mn.Peers() {
		if p != n.IDs[i] && len(n.mn.LinksBetweenPeers(n.IDs[i], p)) > 0 {
			_ = n.mn.UnlinkPeers(n.IDs[i], p)
		}
	}
}

// linker is a mocknet host that links itself to a peer before it first
// dials it: a mocknet dials only over links, and linking every pair of a
// thousand nodes up front costs half a million links.
//
// With Options.WAN its streams, both those it opens and those its
// handlers are given, carry their writes over the link model, and a dial
// that makes a new connection pays the handshake first.
type linker struct {
	host.Host
	mn  mocknet.Mocknet
	wan *wanLinks // nil: plain mocknet links
	// admit is the other side's connection gater (a mocknet has none):
	// whether the node at `to` takes a new connection from `from`.
	admit func(to, from peer.ID) bool
	// site, if set, is told where each dial that makes a new connection
	// was asked for (Net.DialSite).
	site func(from, to peer.ID, at string)

	// dialsMu guards dials: one dial to a peer at a time. A swarm joins
	// concurrent dials to one peer into one connection; the mocknet opens
	// one for each, beyond what the node's bound counted.
	dialsMu sync.Mutex
	dials   map[peer.ID]*peerDial
}

type peerDial struct {
	mu    sync.Mutex
	users int
}

// dialLock holds dials to p to one at a time; the returned func lets go.
func (l *linker) dialLock(p peer.ID) func() {
	l.dialsMu.Lock()
	if l.dials == nil {
		l.dials = map[peer.ID]*peerDial{}
	}
	d := l.dials[p]
	if d == nil {
		d = &peerDial{}
		l.dials[p] = d
	}
	d.users++
	l.dialsMu.Unlock()
	d.mu.Lock()
	return func() {
		d.mu.Unlock()
		l.dialsMu.Lock()
		if d.users--; d.users == 0 {
			delete(l.dials, p)
		}
		l.dialsMu.Unlock()
	}
}

// connect dials p unless connected, one dial to p at a time: asks p's
// gater, links, pays the WAN's handshake, then the mocknet's dial.
func (l *linker) connect(ctx context.Context, ai peer.AddrInfo) error {
	defer l.dialLock(ai.ID)()
	if ai.ID == l.ID() || l.Network().Connectedness(ai.ID) == network.Connected {
		return l.Host.Connect(ctx, ai)
	}
	if err := l.admitted(ai.ID); err != nil {
		return err
	}
	l.link(ai.ID)
	if l.site != nil {
		l.site(l.ID(), ai.ID, callSite())
	}
	if err := l.dial(ctx, ai.ID); err != nil {
		return err
	}
	return l.Host.Connect(ctx, ai)
}

// admitted asks p, before a dial that makes a new connection (connect
// calls it only when not connected to p), whether it takes it
// (linker.admit).
func (l *linker) admitted(p peer.ID) error {
	if l.admit == nil {
		return nil
	}
	if !l.admit(p, l.ID()) {
		return fmt.Errorf("%s refused the connection (its connection gater: no room under connections.max)", p)
	}
	return nil
}

func (l *linker) link(p peer.ID) {
	there := l.mn.Net(p)
	if p == l.ID() || there == nil {
		return
	}
	// A link is keyed by the two peers but joins two networks: one made to
	// an earlier host of p (a node restarted, or tried again after a failed
	// start, while others dialed it) leads to a closed network, and the
	// mocknet picks among a pair's links at random. Drop those; link anew
	// when no current one is left.
	here, current := l.mn.Net(l.ID()), false
	for _, k := range l.mn.LinksBetweenPeers(l.ID(), p) {
		ok := true
		for _, x := range k.Networks() {
			ok = ok && (x == here || x == there)
		}
		if ok {
			current = true
		} else {
			_ = l.mn.Unlink(k)
		}
	}
	if !current {
		// Two dialers may link the same pair at once: a second link is harmless.
		_, _ = l.mn.LinkPeers(l.ID(), p)
	}
}

func (l *linker) Connect(ctx context.Context, ai peer.AddrInfo) error {
	return l.connect(ctx, ai)
}

func (l *linker) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	// The mocknet's NewStream dials whatever the context says; a real
	// swarm does not dial for a stream asked WithNoDial.
	if noDial, _ := network.GetNoDial(ctx); noDial {
		if l.Network().Connectedness(p) != network.Connected {
			return nil, fmt.Errorf("stream to %s without dialing: %w", p, network.ErrNoConn)
		}
	} else if err := l.connect(ctx, peer.AddrInfo{ID: p}); err != nil {
		return nil, err
	}
	s, err := l.Host.NewStream(ctx, p, pids...)
	if err != nil || l.wan == nil {
		return s, err
	}
	return l.wan.wrap(s), nil
}

// dial pays the WAN's handshake when there is no connection to p yet.
func (l *linker) dial(ctx context.Context, p peer.ID) error {
	if l.wan == nil || p == l.ID() || l.Network().Connectedness(p) == network.Connected {
		return nil
	}
	return l.wan.handshake(ctx, l.ID(), p)
}

func (l *linker) SetStreamHandler(pid protocol.ID, h network.StreamHandler) {
	l.Host.SetStreamHandler(pid, l.handler(h))
}

func (l *linker) SetStreamHandlerMatch(pid protocol.ID, m func(protocol.ID) bool, h network.StreamHandler) {
	l.Host.SetStreamHandlerMatch(pid, m, l.handler(h))
}

// handler gives h the stream over the link model (WAN).
func (l *linker) handler(h network.StreamHandler) network.StreamHandler {
	if l.wan == nil {
		return h
	}
	return func(s network.Stream) { h(l.wan.wrap(s)) }
}

// sharedNATS starts the one embedded NATS server of Options.SharedNATS, on
// a free port of 127.0.0.1; stopped at cleanup (Start's).
func sharedNATS(t testing.TB) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		MaxPayload: 8 << 20, MaxPending: 256 << 20})
	if err != nil {
		t.Fatal(fmt.Errorf("shared nats: %w", err))
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		t.Fatal("shared nats did not start")
	}
	return s
}

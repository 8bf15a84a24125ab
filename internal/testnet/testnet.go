// Package testnet starts N real Ferry nodes in one process for tests and
// benchmarks: fresh homes in temp dirs, libp2p on 127.0.0.1, an embedded
// NATS server each, bootstrap and partners wired, cleaned up at the end.
//
// For big networks (the scale bench) the nodes' libp2p can run on one
// in-memory mocknet (Options.Mocknet) and their NATS on one shared embedded
// server (Options.SharedNATS); see those options for what changes.
package testnet

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/stream"
)

// Options shape a test network.
type Options struct {
	// N is the number of nodes; names are A, B, C... unless Names is set.
	N     int
	Names []string
	// Partners lists, per node index, the indexes of its partners.
	Partners map[int][]int
	// Mesh makes every node a partner of every other.
	Mesh bool
	// Reviewer is the index of the reviewer node; nil for none (see At).
	Reviewer *int
	// Reviewers are the indexes of the review group's nodes (`reviewers`
	// of every node's config); nil for none.
	Reviewers []int
	// NoBootstrap leaves configs without bootstrap peers (the default is
	// node 0 for every other node).
	NoBootstrap bool
	// Later lists nodes that Start initialises but does not run: a test
	// starts them with Restart (a member that joins a network with history).
	Later []int
	// Configure adjusts node i's config before it starts.
	Configure func(i int, c *node.Config)
	// Node is passed to node.New (timing overrides).
	Node node.Options
	// Mocknet runs every node's libp2p on one libp2p mocknet
	// (p2p/net/mock) instead of TCP on 127.0.0.1: in-memory connections,
	// no sockets, no noise or yamux, no file descriptors (node.Options.Host).
	// Two nodes are linked the first time one dials the other, so a
	// network of bounded connections does not pay for N² links. Each node
	// still has its own DHT, gossipsub, store and services.
	Mocknet bool
	// SharedNATS points every node at one embedded NATS server (nats.url)
	// under its own prefix (Net.Prefix) instead of an embedded server per
	// node: one listener and one client connection per node instead of a
	// server each (fds, goroutines, memory at hundreds of nodes). Net.NATS
	// connects to the shared server; subjects start with Net.Prefix(i).
	SharedNATS bool
	// WAN makes the mocknet's links internet-like (latency per pair,
	// jitter, loss as retransmission delay; see WAN); needs Mocknet.
	WAN *WAN
}

// Net is a running test network.
type Net struct {
	t     testing.TB
	o     Options
	Homes []node.Home
	IDs   []peer.ID
	cfgs  []node.Config
	mu    sync.Mutex
	nodes []*node.Node

	mn      mocknet.Mocknet // Options.Mocknet
	wan     *wanLinks       // Options.WAN
	nats    *server.Server  // Options.SharedNATS
	closing bool            // Close: no unlinking per node
	// sites: where in the node's code each mocknet dial that made a new
	// connection came from, by [dialer, dialed] (DialSite).
	sites sync.Map
}

// FastSender is sender timing for tests: quick retries, short ack timeout.
var FastSender = stream.SenderOptions{AckTimeout: 5 * time.Second, BackoffMin: 50 * time.Millisecond,
	BackoffMax: 500 * time.Millisecond, RetryScan: 500 * time.Millisecond, DialTimeout: 10 * time.Second}

var routeOnce sync.Once

// Logger is the nodes' logger: silent unless FERRY_TEST_LOG is set.
// go-libp2p's own logs go the same way.
func Logger() *slog.Logger {
	l := logger()
	routeOnce.Do(func() { node.RouteLibp2pLogs(l.Handler()) })
	return l
}

func logger() *slog.Logger {
	if lvl := os.Getenv("FERRY_TEST_LOG"); lvl != "" {
		var l slog.Level
		_ = l.UnmarshalText([]byte(lvl))
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Start initialises and starts a network, and stops it at cleanup.
func Start(t testing.TB, o Options) *Net {
	t.Helper()
	if o.Names == nil {
		for i := range o.N {
			if o.N <= 26 {
				o.Names = append(o.Names, string(rune('A'+i)))
			} else {
				o.Names = append(o.Names, fmt.Sprintf("N%04d", i))
			}
		}
	}
	if o.Node.Logger == nil {
		o.Node.Logger = Logger()
	}
	if o.Node.Sender.AckTimeout == 0 {
		o.Node.Sender = FastSender
	}
	if o.Node.DiscoveryPeriod == 0 {
		o.Node.DiscoveryPeriod = time.Second
	}
	n := &Net{t: t, o: o, nodes: make([]*node.Node, o.N)}
	for i := range o.N {
		h := node.Home{Dir: t.TempDir()}
		id, err := h.Init(node.InitOptions{Name: o.Names[i]})
		if err != nil {
			t.Fatal(err)
		}
		n.Homes = append(n.Homes, h)
		n.IDs = append(n.IDs, id)
	}
	// After the temp dirs: cleanups run last first, so the nodes stop
	// before their homes are removed.
	t.Cleanup(func() {
		n.Close()
		if n.mn != nil {
			_ = n.mn.Close()
		}
		if n.wan != nil {
			n.wan.close()
		}
		if n.nats != nil {
			n.nats.Shutdown()
			n.nats.WaitForShutdown()
		}
	})
	if o.WAN != nil && !o.Mocknet {
		t.Fatal("testnet: Options.WAN shapes mocknet links: set Mocknet too")
	}
	if o.Mocknet {
		n.mn = mocknet.New()
	}
	if o.WAN != nil {
		n.wan = newWANLinks(o.WAN)
	}
	if o.SharedNATS {
		n.nats = sharedNATS(t)
	}
	for i := range o.N {
		c := node.Default()
		c.Name = o.Names[i]
		// Port 0 at first; the ports a node got are kept for its restarts.
		c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		if o.Mocknet {
			// The address the mocknet host announces (nothing listens).
			c.Listen = []string{fmt.Sprintf("/ip4/10.%d.%d.%d/tcp/4242", i>>16&255, i>>8&255, i&255)}
		}
		c.NATS.Listen = "127.0.0.1:0"
		if o.SharedNATS {
			c.NATS.URL = n.nats.ClientURL()
			c.NATS.Prefix = n.Prefix(i)
		}
		c.Admin.Listen = "127.0.0.1:0"
		c.Log.Level = "debug"
		var partners []int
		if o.Mesh {
			for j := range o.N {
				if j != i {
					partners = append(partners, j)
				}
			}
		} else {
			partners = o.Partners[i]
		}
		for _, j := range partners {
			c.Partners = append(c.Partners, n.IDs[j].String())
		}
		if o.Reviewer != nil {
			c.Reviewer = n.IDs[*o.Reviewer].String()
		}
		for _, j := range o.Reviewers {
			c.Reviewers = append(c.Reviewers, n.IDs[j].String())
		}
		if o.Configure != nil {
			o.Configure(i, &c)
		}
		n.cfgs = append(n.cfgs, c)
	}
	for i := range o.N {
		if i == 1 && !o.NoBootstrap {
			boot := n.cfgs[0].Listen[0] + "/p2p/" + n.IDs[0].String()
			for j := 1; j < o.N; j++ {
				n.cfgs[j].Bootstrap = append(n.cfgs[j].Bootstrap, boot)
			}
		}
		if !slices.Contains(o.Later, i) {
			n.Restart(i)
		}
	}
	return n
}

// pin records the ports a node listens on, so a restart reuses them.
func (n *Net) pin(i int, nd *node.Node) {
	c := &n.cfgs[i]
	if strings.HasSuffix(c.Listen[0], "/tcp/0") {
		for _, a := range nd.Host().Addrs() {
			if port, err := a.ValueForProtocol(ma.P_TCP); err == nil {
				c.Listen = []string{"/ip4/127.0.0.1/tcp/" + port}
				break
			}
		}
	}
	if strings.HasSuffix(c.NATS.Listen, ":0") && c.NATS.URL == "" {
		if u, err := url.Parse(nd.NATSURL()); err == nil {
			c.NATS.Listen = u.Host
		}
	}
}

// At returns a pointer to i, for Options.Reviewer.
func At(i int) *int { return &i }

// Node returns node i (nil while stopped).
func (n *Net) Node(i int) *node.Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.nodes[i]
}

// Config returns node i's config.
func (n *Net) Config(i int) node.Config { return n.cfgs[i] }

// SetBootstrap makes node i's bootstrap the addresses of nodes to (their
// ports pinned once they started); it takes effect at i's next start.
func (n *Net) SetBootstrap(i int, to ...int) {
	n.cfgs[i].Bootstrap = nil
	for _, j := range to {
		n.cfgs[i].Bootstrap = append(n.cfgs[i].Bootstrap, n.cfgs[j].Listen[0]+"/p2p/"+n.IDs[j].String())
	}
}

// Stop closes node i, keeping its home.
func (n *Net) Stop(i int) {
	n.mu.Lock()
	nd := n.nodes[i]
	n.nodes[i] = nil
	n.mu.Unlock()
	if nd != nil {
		if err := nd.Close(); err != nil {
			n.t.Logf("close %s: %v", n.o.Names[i], err)
		}
		n.unlink(i)
	}
}

// Restart starts node i again from its home, on the same ports.
func (n *Net) Restart(i int) {
	n.t.Helper()
	n.RestartPaused(i)()
}

// RestartPaused builds node i again from its home, on the same ports, with
// its embedded NATS up, and returns the function that starts the rest (so a
// test can connect its apps first and miss no event).
func (n *Net) RestartPaused(i int) (start func()) {
	n.t.Helper()
	nd, err := n.build(i)
	if err != nil {
		n.t.Fatal(err)
	}
	return func() {
		n.t.Helper()
		if err := nd.Start(); err != nil {
			n.t.Fatalf("start node %s: %v", n.o.Names[i], err)
		}
	}
}

// build stops node i and builds it again from its home, on the same ports.
func (n *Net) build(i int) (*node.Node, error) {
	n.Stop(i)
	var nd *node.Node
	var err error
	// A port just released may be briefly busy; retry for a moment.
	for try := 0; try < 50; try++ {
		o := n.o.Node
		if n.mn != nil {
			if o.Host, err = n.mockHost(i); err != nil {
				return nil, fmt.Errorf("mocknet host of %s: %w", n.o.Names[i], err)
			}
		}
		if nd, err = node.New(n.cfgs[i], n.Homes[i], o); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("build node %s: %w", n.o.Names[i], err)
	}
	n.pin(i, nd)
	n.mu.Lock()
	n.nodes[i] = nd
	n.mu.Unlock()
	return nd, nil
}

// StartAll starts nodes from, from+1, ... to-1 with up to par at a time.
// It is for big networks (Start starts nodes one by one): a node that fails
// to build or start (a port just released, a moment without file
// descriptors) is stopped and tried again, up to five times; the error is
// the first node's that never started.
func (n *Net) StartAll(from, to, par int) error {
	sem := make(chan struct{}, max(par, 1))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for i := from; i < to; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			var err error
			for try := 0; try < 5; try++ {
				var nd *node.Node
				if nd, err = n.build(i); err == nil {
					if err = nd.Start(); err == nil {
						return
					}
					err = fmt.Errorf("start node %s: %w", n.o.Names[i], err)
				}
				// A retried node is a weaker witness (on a mocknet its
				// peer is added again): say so.
				n.t.Logf("start %s, try %d: %v", n.o.Names[i], try+1, err)
				n.Stop(i)
				time.Sleep(time.Duration(try+1) * 200 * time.Millisecond)
			}
			mu.Lock()
			if first == nil {
				first = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return first
}

// Prefix is node i's NATS subject prefix ("ferry", or its own under
// SharedNATS).
func (n *Net) Prefix(i int) string {
	if n.o.SharedNATS {
		return "ferry." + n.o.Names[i]
	}
	return "ferry"
}

// WANStats counts what the links of Options.WAN did (zero without it).
func (n *Net) WANStats() WANStats {
	if n.wan == nil {
		return WANStats{}
	}
	return n.wan.stats()
}

// Mocknet is the network's mocknet (nil unless Options.Mocknet).
func (n *Net) Mocknet() mocknet.Mocknet { return n.mn }

// Close stops every node.
func (n *Net) Close() {
	n.mu.Lock()
	n.closing = true
	n.mu.Unlock()
	var wg sync.WaitGroup
	for i := range n.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.Stop(i) }()
	}
	wg.Wait()
}

// NATS connects an app to node i's NATS server; closed at cleanup.
func (n *Net) NATS(i int) *nats.Conn {
	n.t.Helper()
	url := "nats://" + n.cfgs[i].NATS.Listen
	if n.nats != nil {
		url = n.nats.ClientURL()
	}
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.Timeout(10*time.Second))
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(nc.Close)
	return nc
}

// WaitMembers waits until every running node counts every other as a member.
func (n *Net) WaitMembers(timeout time.Duration) {
	n.t.Helper()
	WaitFor(n.t, timeout, "every node sees every other as a member and met it", func() bool {
		for i := range n.nodes {
			nd := n.Node(i)
			if nd == nil {
				continue
			}
			for j := range n.nodes {
				if i != j && n.Node(j) != nil && (!nd.IsMember(n.IDs[j]) || !nd.Met(n.IDs[j])) {
					return false
				}
			}
		}
		return true
	})
}

// WaitFor polls cond until it holds or the deadline passes (wait.For).
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	wait.For(t, timeout, what, cond)
}

// Request sends a JSON request and decodes the reply.
func Request(t testing.TB, nc *nats.Conn, subject string, body string, out any) {
	t.Helper()
	msg, err := nc.Request(subject, []byte(body), 10*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subject, err)
	}
	if err := json.Unmarshal(msg.Data, out); err != nil {
		t.Fatalf("reply of %s: %v: %s", subject, err, msg.Data)
	}
}

// ConnsPerNode counts each running node's open libp2p connections (to any
// peer, either direction), by node index; -1 for a node not running.
func (n *Net) ConnsPerNode() []int {
	out := make([]int, len(n.nodes))
	for i := range n.nodes {
		out[i] = -1
		if nd := n.Node(i); nd != nil {
			out[i] = len(nd.Host().Network().Conns())
		}
	}
	return out
}

// ConnStats is the largest and the mean of counts (ConnsPerNode), over the
// running nodes.
func ConnStats(counts []int) (most int, mean float64) {
	var sum, k int
	for _, c := range counts {
		if c < 0 {
			continue
		}
		most = max(most, c)
		sum += c
		k++
	}
	if k > 0 {
		mean = float64(sum) / float64(k)
	}
	return most, mean
}

// Membership counts, over every ordered pair of running nodes (i, j), those
// where i counts j as a member (node.IsMember; a live connection is not
// needed), and the pairs in all.
func (n *Net) Membership() (have, want int) {
	for i := range n.nodes {
		nd := n.Node(i)
		if nd == nil {
			continue
		}
		for j := range n.nodes {
			if i == j || n.Node(j) == nil {
				continue
			}
			want++
			if nd.IsMember(n.IDs[j]) {
				have++
			}
		}
	}
	return have, want
}

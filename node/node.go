// Package node assembles a Ferry node from its Config: the identity, the
// store, the libp2p host with its DHT, the peer book, the NATS bridge, the
// stream layer and the services, and runs them until Close. It is the only
// package that knows every other; nothing imports it but cmd and tests.
package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/gologshim"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ferrynet/ferry/admin"
	"github.com/ferrynet/ferry/catchup"
	"github.com/ferrynet/ferry/delivery"
	"github.com/ferrynet/ferry/eventstream"
	"github.com/ferrynet/ferry/internal/gossiptopic"
	"github.com/ferrynet/ferry/internal/inbound"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/internal/promreg"
	"github.com/ferrynet/ferry/membership"
	"github.com/ferrynet/ferry/natsbridge"
	"github.com/ferrynet/ferry/peers"
	"github.com/ferrynet/ferry/propagate"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/review"
	"github.com/ferrynet/ferry/reviewgroup"
	"github.com/ferrynet/ferry/search"
	"github.com/ferrynet/ferry/spread"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// Options adjust a node beyond its Config (tests, benchmarks, the demo).
type Options struct {
	// Logger; nil builds one from the config's log section on stderr.
	Logger *slog.Logger
	// Sender overrides the stream layer's timing (tests shorten it).
	Sender stream.SenderOptions
	// DiscoveryPeriod is the longest wait between discovery rounds.
	DiscoveryPeriod time.Duration
	// SyncPeriod is the anti-entropy period (default catchup.DefaultPeriod).
	SyncPeriod time.Duration
	// Retention overrides limits.ack_retention_hours (tests, soaks).
	Retention time.Duration
	// StallAfter is how long queued work may wait for a commit before the
	// store says it is stalled (default store.DefaultStallAfter).
	StallAfter time.Duration
	// StallExit is how long the store may stay stalled before the node
	// gives up (default DefaultStallExit; see health.go).
	StallExit time.Duration
	// StoreCloseTimeout bounds the store's close (default StoreCloseTimeout).
	StoreCloseTimeout time.Duration
	// OnFatal is called when the store's Pebble reports an error it cannot
	// go on from; it should not return (ferry run prints one line and
	// exits 1). nil: the store panics, as Pebble expects.
	OnFatal func(error)
	// DrainTimeout bounds how long Close waits for requests in flight
	// (default DefaultDrainTimeout).
	DrainTimeout time.Duration
	// SpreadHeadEvery is how often the reviewer gossips its last decision
	// sequence while no decision goes out (default spread.DefaultHeadEvery).
	SpreadHeadEvery time.Duration
	// ReviewGroupTiming overrides the review group's raft timeouts (tests);
	// zero fields take reviewgroup.DefaultTiming's.
	ReviewGroupTiming reviewgroup.Timing
	// ReviewGroupTune adjusts the review group's configuration before it is
	// built (tests: snapshot thresholds); nil: none.
	ReviewGroupTune func(*reviewgroup.Config)
	// MembersRepublish is the membership record republish period (and the
	// pull period when shorter than a minute)
	// (default membership.DefaultRepublish).
	MembersRepublish time.Duration
	// Host, when set, is the libp2p host to run on instead of one built
	// from the config (libp2p's mocknet in tests and the scale bench). The
	// node owns it from New on: Close closes it, and so does a failed New.
	// Its identity must be the home's key. The config's listen addresses,
	// private network key and transports are not used; the peer book still
	// gates who may connect (prebuilt.go), and the DHT and every service
	// run on it as on a built host.
	Host host.Host
	// HomeLock, when set, is the home's lock the caller took already
	// (ferry run takes it before it touches the home); the node owns it
	// from New on, as Host. nil: New takes it.
	HomeLock *HomeLock
}

// SegmentBytesEnv names the environment variable that sets the size at
// which the change log starts a new segment file (bytes; default 64 MiB).
// Tests set it small to get many segments.
const SegmentBytesEnv = "FERRY_SEGMENT_BYTES"

// Bounds of Close (the order is in docs/architecture.md).
const (
	// DefaultDrainTimeout bounds the wait for requests already taken.
	DefaultDrainTimeout = 10 * time.Second
	// StoreCloseTimeout bounds the store's close (a disk that hangs).
	StoreCloseTimeout = 10 * time.Second
	// DefaultDecisionFallback is how long a decision is left to gossip
	// (spread/) before the delivery stream carries it to a member that has
	// not reported it applied (stream.SenderOptions.DecisionFallback; a
	// negative Options.Sender.DecisionFallback turns the wait off).
	DefaultDecisionFallback = 10 * time.Second
)

// Node is one running Ferry process.
type Node struct {
	cfg  Config
	home Home
	opts Options
	log  *slog.Logger
	reg  *prometheus.Registry
	key  crypto.PrivKey
	id   peer.ID

	st     *store.Store
	host   host.Host
	dht    *dht.IpfsDHT
	gossip *pubsub.PubSub // one gossipsub router, shared by the services that gossip
	// The peer side (package peers): the peer book, the admission gate
	// (streams admitted at open; each connection's hello), hello, and the
	// keeper of bounded connections, which runs discovery.
	connectivity *peers.Keeper
	book         *peers.Book
	gate         *peers.Gate
	hello        *peers.Hello
	members      *membership.Service // signed membership records (peers.NewMembership)
	bridge       *natsbridge.Bridge
	verifier     *protocols.Verifier
	sender       *stream.Sender
	receiver     *stream.Receiver
	prop         *propagate.Service
	review       *review.Service
	group        *reviewgroup.Group // the review group's log, on a reviewer of a group of more than one
	catchup      *catchup.Service
	search       *search.Service
	spread       *spread.Service
	events       *eventstream.Publisher // the events stream (nil when nats.events is off)
	evtail       *eventstream.Tail      // the events propagate published, for events (nil when off)
	// Apps' delivery status: the Watch follows the sender's floors (its
	// Floors tracer); the service answers delivery.status and .wait.
	watch    *delivery.Watch
	delivery *delivery.Service

	ctx       context.Context
	cancel    context.CancelFunc
	g         lifecycle.Group // every goroutine the node starts, and the hello and trace handlers
	closeOnce sync.Once
	closeErr  error
	started   bool
	running   atomic.Bool // Start finished
	draining  atomic.Bool // Close began
	startedAt time.Time
	restore   *catchup.Restore // a store that may be an older copy: own writes, recovery, the decide gate

	// For operators: the event feed, the services' tracer (package admin),
	// the admin API (built last) and metrics (metrics.go).
	quitting  *atomic.Bool // set when Close begins (quiets the logs)
	feed      *admin.Feed
	admin     *admin.Server
	metrics   *nodeMetrics
	fatal     chan error
	fatalOnce sync.Once
	lock      *HomeLock // the home, held from New to the end of Close (homelock.go)
}

// New builds a node from a validated config and its home. Nothing listens
// until Start; a failure closes what was built.
func New(cfg Config, home Home, o Options) (_ *Node, err error) {
	if o.Host != nil {
		defer func() {
			if err != nil {
				_ = o.Host.Close() // the node owns it (Options.Host)
			}
		}()
	}
	if o.HomeLock != nil {
		defer func() {
			if err != nil {
				_ = o.HomeLock.Unlock() // the node owns it (Options.HomeLock)
			}
		}()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = NewLogger(cfg.Log, os.Stderr)
	}
	key, err := home.Identity()
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("peer id: %w", err)
	}
	quitting := &atomic.Bool{}
	log = slog.New(newQuietHandler(log.Handler(), quitting)).With("node", cfg.Name)
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{cfg: cfg, home: home, opts: o, log: log, key: key, id: id, reg: prometheus.NewRegistry(),
		verifier: protocols.NewVerifier(), ctx: ctx, cancel: cancel, fatal: make(chan error, 1), quitting: quitting}
	defer func() {
		if err != nil {
			_ = n.Close()
		}
	}()
	if n.lock = o.HomeLock; n.lock == nil {
		if n.lock, err = home.Lock(cfg.Name); err != nil {
			return nil, err
		}
	}
	if err := promreg.Register(n.reg, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, err
	}
	if n.metrics, err = newNodeMetrics(n.reg); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}

	so := store.Options{Signer: key, Logger: log.With("component", "store"), Registerer: n.reg,
		IdempotencyWindow: time.Duration(cfg.Limits.IdempotencyWindowSeconds) * time.Second,
		Health: store.HealthOptions{MinFreeBytes: uint64(cfg.Limits.MinFreeDiskMB) << 20, StallAfter: o.StallAfter, OnFatal: func(err error) {
			n.die(err)
			if o.OnFatal != nil {
				o.OnFatal(err)
			}
		}}}
	if v := os.Getenv(SegmentBytesEnv); v != "" {
		b, err := strconv.ParseInt(v, 10, 64)
		if err != nil || b < 4096 {
			return nil, fmt.Errorf("%s=%q: want a size in bytes of at least 4096", SegmentBytesEnv, v)
		}
		so.SegmentBytes = b
	}
	if n.st, err = store.Open(home.DataPath(), so); err != nil {
		return nil, err
	}
	pcfg := peersConfig(cfg)
	if n.book, err = peers.NewBook(peers.BookDeps{Config: pcfg, Self: id, Store: n.st, Logger: log.With("component", "peers")}); err != nil {
		return nil, err
	}
	n.gate = peers.NewGate(peers.GateDeps{Book: n.book, Stop: ctx.Done(), Logger: log})
	gater := peers.NewConnGater(n.book)
	if o.Host != nil {
		if o.Host.ID() != id {
			return nil, fmt.Errorf("options: host is %s, the home's identity %s", o.Host.ID(), id)
		}
		n.host, n.dht, err = adoptHost(ctx, cfg, o.Host, n.gate)
	} else {
		n.host, n.dht, err = buildHost(ctx, cfg, key, gater, n.reg, n.gate)
	}
	if err != nil {
		return nil, err
	}
	if n.gossip, err = pubsub.NewGossipSub(ctx, peers.BoundDials(n.host, n.gate, cfg.Connections.Max), gossiptopic.RouterOptions()...); err != nil {
		return nil, fmt.Errorf("gossipsub: %w", err)
	}
	// What operators see of the services comes from the tracer each is
	// given (admin/events.go), not from wrapping their calls.
	n.feed = admin.NewFeed(admin.FeedDeps{Store: n.st, Names: n.book, Decisions: n.metrics.decisions, OnAcked: o.Sender.OnAcked})
	bo := natsbridge.Options{URL: cfg.NATS.URL, Listen: cfg.NATS.Listen, Prefix: cfg.NATS.Prefix,
		Credentials: cfg.NATS.Credentials, Token: cfg.NATS.Token, MaxPayload: min(2*cfg.Limits.MaxMessageBytes+(64<<10), MaxMessageBytesCap),
		Logger: log.With("component", "nats"), Registerer: n.reg, Tracer: n.feed}
	if cfg.EventsOn() && cfg.NATS.URL == "" {
		bo.JetStreamDir = home.DataPath() // JetStream's store: <data>/jetstream
	}
	n.bridge, err = natsbridge.Start(bo)
	if err != nil {
		return nil, err
	}
	pub := n.bridge
	// Each component is built once, complete, after what it needs: the
	// services write to the log, and what delivers changes (the stream
	// sender, gossip of decisions) follows the log (store.Follow); review
	// and the restore guard ask catch-up for work through its queue
	// (catchup.Jobs).
	jobs := catchup.NewJobs()
	if n.restore, err = catchup.NewRestore(catchup.RestoreDeps{Store: n.st, Self: id, Roles: n.book, Jobs: jobs,
		TrustStore: cfg.TrustStore, Context: ctx, Group: &n.g, Logger: log}); err != nil {
		return nil, err
	}
	n.review = review.New(review.Deps{Store: n.st, Roles: n.book, Publisher: pub, CatchUp: jobs, Tracer: n.feed,
		MaxMessageBytes: cfg.Limits.MaxMessageBytes, Approvals: cfg.Review.Approvals, Logger: log.With("component", "review"), Ready: n.restore.Ready,
		Context: ctx})
	if err := n.buildReviewGroup(home); err != nil {
		return nil, err
	}
	holds, err := propagate.LoadPlannerHolds(n.st)
	if err != nil {
		return nil, err
	}
	if n.watch, err = delivery.NewWatch(delivery.WatchDeps{Publisher: pub, Names: n.book,
		Logger: log.With("component", "delivery"), Registerer: n.reg}); err != nil {
		return nil, err
	}
	sndo := o.Sender
	sndo.MaxMessageBytes = cfg.Limits.MaxMessageBytes
	sndo.Floors = n.watch
	sndo.Hold = func(p peer.ID, l stream.Lane) bool { return holds.Hold(p, l) || n.leftHold(p, l) }
	// A new connection of the sender's takes room under connections.max
	// (the keeper is built below, before Start runs the sender).
	sndo.Room = func(p peer.ID) bool { return n.connectivity.Room(p) }
	sndo.Dialed = func(p peer.ID) { n.connectivity.Dialed(p) }
	sndo.OnAhead = n.restore.Ahead
	sndo.DecisionHead = n.review.Applied
	sndo.OnAcked = n.feed.Acked
	sndo.Logger = log.With("component", "sender")
	switch {
	case sndo.DecisionFallback == 0:
		sndo.DecisionFallback = DefaultDecisionFallback
	case sndo.DecisionFallback < 0:
		sndo.DecisionFallback = 0
	}
	sndo.Registerer = n.reg
	if n.sender, err = stream.NewSender(n.host, n.st, n.book, sndo); err != nil {
		return nil, err
	}
	n.delivery = delivery.New(delivery.Deps{Store: n.st, Sender: n.sender, Roles: n.book, Watch: n.watch,
		Logger: log.With("component", "delivery")})
	n.search, err = search.New(search.Deps{Host: n.host, PubSub: n.gossip, DHT: n.dht, Store: n.st, Roles: n.book, PeerBook: n.book,
		Publisher: pub, MaxMessageBytes: cfg.Limits.MaxMessageBytes, Logger: log.With("component", "search"), Registerer: n.reg})
	if err != nil {
		return nil, err
	}
	var tail propagate.EventTail
	if cfg.EventsOn() {
		n.evtail = eventstream.NewTail(eventstream.DefaultTailEvents)
		tail = n.evtail
	}
	n.prop, err = propagate.New(propagate.Deps{Store: n.st, Roles: n.book, Streams: n.sender, Holds: holds, Publisher: pub, Events: tail,
		Searcher: n.search, Tracer: n.feed, Gate: n.restore.Writes(), MaxMessageBytes: cfg.Limits.MaxMessageBytes, Logger: log.With("component", "propagate")})
	if err != nil {
		return nil, err
	}
	n.catchup, err = catchup.New(catchup.Deps{Host: n.host, Store: n.st, Verifier: n.verifier, Signer: key, Roles: n.book,
		Resources: n.prop, Decisions: n.review, Own: n.restore, Jobs: jobs, MaxMessageBytes: cfg.Limits.MaxMessageBytes, Period: o.SyncPeriod,
		Logger: log.With("component", "sync"), Registerer: n.reg})
	if err != nil {
		return nil, err
	}
	n.spread, err = spread.New(spread.Deps{Host: n.host, PubSub: n.gossip, Network: cfg.Network, Store: n.st,
		Verifier: n.verifier, Roles: n.book, Decisions: n.review, Acker: n.sender, CatchUp: jobs, Tracer: n.feed,
		HeadEvery: o.SpreadHeadEvery, Logger: log.With("component", "spread"), Registerer: n.reg})
	if err != nil {
		return nil, err
	}
	kinds := stream.Kinds{}
	for _, k := range []pb.Kind{pb.Kind_KIND_RESOURCE_CREATE, pb.Kind_KIND_RESOURCE_UPDATE, pb.Kind_KIND_RESOURCE_DELETE, pb.Kind_KIND_CONSIDERS, pb.Kind_KIND_PLANNER} {
		kinds[k] = n.prop
	}
	kinds[pb.Kind_KIND_REVIEW_REQUEST], kinds[pb.Kind_KIND_REVIEW_DECISION] = n.review, n.review
	n.receiver, err = stream.NewReceiver(n.host, n.st, n.verifier, kinds, stream.ReceiverOptions{
		MaxMessageBytes: cfg.Limits.MaxMessageBytes, Logger: log.With("component", "receiver"), Registerer: n.reg,
		Snapshots: n.review, Tracer: n.feed, Admit: n.gate.AdmitDelivery})
	if err != nil {
		return nil, err
	}
	if cfg.EventsOn() {
		if n.events, err = n.newEvents(); err != nil {
			return nil, err
		}
	}
	if n.members, err = peers.NewMembership(peers.MembershipDeps{Config: pcfg, Host: n.host, PubSub: n.gossip, Key: key, Book: n.book,
		Republish: o.MembersRepublish, Logger: log.With("component", "members"), Registerer: n.reg}); err != nil {
		return nil, err
	}
	n.hello = peers.NewHello(peers.HelloDeps{Config: pcfg, Host: n.host, Book: n.book, Gate: n.gate, Members: n.members,
		Holds: n.restore.HoldsOf, OnHolds: n.peerHolds, OnMember: n.metMember, Group: &n.g, Logger: log.With("component", "hello")})
	if n.connectivity, err = peers.NewKeeper(peers.KeeperDeps{Config: pcfg, Host: n.host, DHT: n.dht, Book: n.book, Gate: n.gate,
		Hello: n.hello, Period: o.DiscoveryPeriod, Group: &n.g, Registerer: n.reg, Logger: log}); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	gater.SetKeeper(n.connectivity)
	// The operator's side, last: it reads every component.
	if n.admin, err = admin.New(admin.Deps{Node: n, Host: n.host, Store: n.st, Book: n.book, NATS: n.bridge, Sender: n.sender,
		Propagate: n.prop, Review: n.review, ReviewGroup: n.group, CatchUp: n.catchup, Search: n.search, Feed: n.feed, Registry: n.reg, Ctx: ctx,
		Group: &n.g, Logger: log, Name: cfg.Name, Network: cfg.Network, Version: Version, NATSPrefix: cfg.NATS.Prefix,
		Listen: cfg.Admin.Listen, Token: home.Token, Dir: home.Dir, DataPath: home.DataPath(),
		MaxMessageBytes: cfg.Limits.MaxMessageBytes}); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return n, nil
}

// NewLogger builds the slog logger a config asks for.
func NewLogger(c LogConfig, w io.Writer) *slog.Logger {
	lvl := slog.LevelInfo
	_ = lvl.UnmarshalText([]byte(c.Level))
	ho := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, ho))
	}
	return slog.New(slog.NewTextHandler(w, ho))
}

// RouteLibp2pLogs sends go-libp2p's own logs to h, tagged
// component=libp2p. It is process-wide: call it once, before the first
// node starts (cmd/ferry and internal/testnet do).
func RouteLibp2pLogs(h slog.Handler) {
	gologshim.SetDefaultHandler(identifyOptional{h.WithAttrs([]slog.Attr{slog.String("component", "libp2p")})})
}

// Start begins serving peers and apps, then joins the network.
func (n *Node) Start() error {
	if n.started {
		return errors.New("node already started")
	}
	n.started = true
	n.startedAt = time.Now().UTC()
	// Addresses learned before the restart: partners and the reviewer stay
	// reachable when no bootstrap peer is up.
	for _, e := range n.book.Entries() {
		var addrs []ma.Multiaddr
		for _, b := range e.Addrs {
			if a, err := ma.NewMultiaddrBytes(b); err == nil {
				addrs = append(addrs, a)
			}
		}
		if len(addrs) > 0 && e.Member {
			n.host.Peerstore().AddAddrs(peer.ID(e.Id), addrs, peerstore.AddressTTL)
		}
	}
	n.keepPartnerAddrs()
	// Hello is how a peer says who it is: anyone may.
	inbound.Handle(n.host, &n.g, protocols.Hello, protocols.ServiceHello, 8<<10, nil, n.log, n.hello.Serve)
	inbound.Handle(n.host, &n.g, protocols.Trace, protocols.ServiceTrace, 8<<10, n.book.IsMember, n.log, n.admin.ServeTrace)
	if n.group != nil {
		if err := n.group.Start(); err != nil {
			return err
		}
	}
	n.receiver.Start()
	if err := n.sender.Start(); err != nil {
		return err
	}
	n.host.Network().Notify(&network.NotifyBundle{ConnectedF: n.connected,
		DisconnectedF: func(_ network.Network, c network.Conn) {
			n.connectivity.Disconnected(c)
			n.admin.Disconnected(c.RemotePeer())
		}})
	// Connections made before the notifiee (the DHT dials its bootstrap
	// peers as it starts) are greeted here and by every discovery round.
	n.hello.GreetPending(n.ctx)
	if err := n.search.Start(); err != nil {
		return err
	}
	if err := n.members.Start(); err != nil {
		return err
	}
	if n.events != nil {
		n.events.Start()
	}
	n.watch.Start()
	if err := n.serveNATS(); err != nil {
		return err
	}
	n.catchup.Start()
	if err := n.spread.Start(); err != nil {
		return err
	}
	if err := n.admin.Start(); err != nil {
		return err
	}
	n.spawn(func() { n.connectivity.Run(n.ctx) })
	n.spawn(n.retain)
	n.spawn(n.watchHealth)
	n.spawn(n.expireIdempotencyKeys)
	n.running.Store(true)
	n.log.Info("ferry node started", "peer", n.id, "nats", n.bridge.ClientURL(), "listen", n.host.Addrs())
	return nil
}

// connected greets peers this node dialed and protects partners' connections.
func (n *Node) connected(_ network.Network, c network.Conn) { n.connectivity.Connected(n.ctx, c) }

// spawn runs fn on a goroutine the node owns; Close waits for it. After
// Close has begun it runs nothing.
func (n *Node) spawn(fn func()) { n.g.Go(fn) }

// serveNATS registers the app subjects: each service serves its own.
func (n *Node) serveNATS() error {
	if err := n.prop.ServeNATS(n.ctx, n.bridge); err != nil {
		return err
	}
	if err := n.review.ServeNATS(n.ctx, n.bridge, n.cfg.Review.NATSDecide); err != nil {
		return err
	}
	if err := n.delivery.ServeNATS(n.bridge); err != nil {
		return err
	}
	return n.bridge.Flush()
}

// Propagate runs an app's propagate request under the node's context (for
// programs that embed a node, and tests): the same call NATS and the admin
// API make.
func (n *Node) Propagate(req propagate.Request, done func(propagate.Result, error)) {
	n.prop.Propagate(n.ctx, req, done)
}

// Submit runs a review request under the node's context.
func (n *Node) Submit(req review.SubmitRequest, done func(review.Row, error)) {
	n.review.Submit(n.ctx, req, done)
}

// Decide runs a reviewer decision under the node's context.
func (n *Node) Decide(req review.DecideRequest, done func(review.Row, error)) {
	n.review.Decide(n.ctx, req, done)
}

// CatchUp is the catch-up service.
func (n *Node) CatchUp() *catchup.Service { return n.catchup }

// PropagateService is the owned-resource service.
func (n *Node) PropagateService() *propagate.Service { return n.prop }

// Review is the review service.
func (n *Node) Review() *review.Service { return n.review }

// Close stops the node, within bounds, in this order (docs/architecture.md):
//
//  1. drain: open delivery waits are answered (unavailable); the admin API
//     stops listening and the NATS subscriptions are drained (no new
//     request is taken; apps get no responders), while the requests already
//     taken are answered (at most DrainTimeout);
//  2. the node's context is cancelled, no goroutine starts any more, and
//     the peer side stops: receiver, sender, sync, search, propagate, DHT,
//     host; then the node's own goroutines are waited for;
//  3. the store closes: queued work commits (at most StoreCloseTimeout);
//  4. the NATS connection flushes the replies and closes, and the embedded
//     server stops: last, so nothing answered in 1-3 is lost.
//
// It is idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.quitting.Store(true)
		n.draining.Store(true)
		if n.restore != nil {
			n.restore.Writes().Close() // held writes are answered before the drain waits for them
		}
		if n.watch != nil {
			n.watch.Close() // so are open delivery waits (unavailable), and its goroutine stops
		}
		var errs []error
		if n.bridge != nil {
			errs = append(errs, n.drain())
		}
		n.g.Shut()
		if n.host != nil {
			// Streams that opened before are reset by the host's Close,
			// before n.g waits.
			n.host.RemoveStreamHandler(protocols.Hello)
			n.host.RemoveStreamHandler(protocols.Trace)
		}
		if n.spread != nil {
			n.spread.Close()
		}
		n.cancel()
		if n.receiver != nil {
			n.receiver.Close()
		}
		if n.sender != nil {
			n.sender.Close()
		}
		if n.catchup != nil {
			n.catchup.Close()
		}
		if n.search != nil {
			n.search.Close()
		}
		if n.members != nil {
			n.members.Close()
		}
		if n.prop != nil {
			n.prop.Close()
		}
		if n.group != nil {
			// Before the host (a leader hands its leadership over on it);
			// the decisions waiting on it end, then the review service's
			// goroutines are waited for.
			errs = append(errs, n.group.Close())
		}
		if n.review != nil {
			n.review.Close()
		}
		if n.dht != nil {
			errs = append(errs, n.dht.Close())
		}
		if n.host != nil {
			errs = append(errs, n.host.Close())
		}
		n.g.Close()
		if n.events != nil {
			n.events.Close() // before the store: its last cursor write is queued there
		}
		if n.st != nil {
			d := n.opts.StoreCloseTimeout
			if d <= 0 {
				d = StoreCloseTimeout
			}
			errs = append(errs, n.st.CloseWithin(d))
		}
		if n.bridge != nil {
			n.bridge.Close()
		}
		errs = append(errs, n.lock.Unlock()) // last: the home is free once everything is closed
		n.closeErr = errors.Join(errs...)
		if n.started {
			n.log.Info("ferry node stopped")
		}
	})
	return n.closeErr
}

// drain stops taking requests (admin API and NATS) and waits for the ones
// in flight to be answered, at most DrainTimeout.
func (n *Node) drain() error {
	d := n.opts.DrainTimeout
	if d <= 0 {
		d = DefaultDrainTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	adminDone := make(chan error, 1)
	go func() {
		if n.admin == nil {
			adminDone <- nil // New failed before building it
			return
		}
		adminDone <- n.admin.Stop(ctx)
	}()
	err := n.bridge.Drain(ctx)
	if aerr := <-adminDone; aerr != nil {
		err = errors.Join(err, aerr)
	}
	if err != nil {
		n.log.Warn("requests left unanswered at shutdown", "err", err.Error(), "waited", time.Since(start).Round(time.Millisecond))
		return nil // reported; the close goes on
	}
	n.log.Info("drained: every request taken was answered", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// ID is the node's peer id.
func (n *Node) ID() peer.ID { return n.id }

// Name is the node's label.
func (n *Node) Name() string { return n.cfg.Name }

// Config is the node's configuration.
func (n *Node) Config() Config { return n.cfg }

// Host is the libp2p host.
func (n *Node) Host() host.Host { return n.host }

// DHT is the node's Kademlia DHT.
func (n *Node) DHT() *dht.IpfsDHT { return n.dht }

// AdmitConnection reports whether the node takes a connection peer p
// opens to it within connections.max (peers.Keeper.Admit). A built host's
// connection gater asks it as each connection is secured; a prebuilt
// host's network (Options.Host, libp2p's mocknet) has no gater, and what
// dials over it asks first (the test network does).
func (n *Node) AdmitConnection(p peer.ID) bool {
	if n.connectivity == nil {
		return true
	}
	return n.connectivity.Admit(p)
}

// Store is the ledger.
func (n *Node) Store() *store.Store { return n.st }

// Sender is the delivery sender.
func (n *Node) Sender() *stream.Sender { return n.sender }

// ServedSubjects lists the NATS subjects this node answers for apps.
func (n *Node) ServedSubjects() []string { return n.bridge.Served() }

// NATSURL is where apps connect.
func (n *Node) NATSURL() string { return n.bridge.ClientURL() }

// Registry holds the node's metrics.
func (n *Node) Registry() *prometheus.Registry { return n.reg }

// Addrs are the node's dialable addresses with its peer id.
func (n *Node) Addrs() []ma.Multiaddr {
	p2p, _ := ma.NewComponent("p2p", n.id.String())
	var out []ma.Multiaddr
	for _, a := range n.host.Addrs() {
		out = append(out, a.Encapsulate(p2p))
	}
	return out
}

// Met reports whether p exchanged hello with the node since it started.
func (n *Node) Met(p peer.ID) bool { return n.hello.Met(p) }

// IsMember reports whether the node counts p as a member.
func (n *Node) IsMember(p peer.ID) bool { return n.book.IsMember(p) }

// Members lists the members the node knows.
func (n *Node) Members() []peer.ID { return n.book.Members() }

// Partners lists the node's partners.
func (n *Node) Partners() []peer.ID { return n.book.Partners() }

// SetPartner adds or removes a partner (persisted). Addresses given with an
// add are kept, in the peer book and in the peerstore for good
// (peers/partners.go); a remove forgets them.
func (n *Node) SetPartner(ctx context.Context, p peer.ID, on bool, addrs ...ma.Multiaddr) error {
	had := n.book.PartnerAddrs()[p]
	if err := n.book.SetPartner(ctx, p, on, addrs...); err != nil {
		return err
	}
	if !on && len(had) > 0 {
		n.host.Peerstore().SetAddrs(p, had, 0) // no longer kept
	}
	if on {
		n.keepPartnerAddrs()
		n.connectivity.Protect(p)
		n.sender.Kick(p)
	}
	return nil
}

// SetMember is the operator's `ferry members add|remove` (persisted,
// peers.Book.SetMember): a removed member's connections are closed (new
// ones are refused); a member added is owed its backlog at once.
func (n *Node) SetMember(ctx context.Context, p peer.ID, on bool) error {
	if err := n.book.SetMember(ctx, p, on); err != nil {
		return err
	}
	if on {
		n.sender.Kick(p)
		return nil
	}
	for _, c := range n.host.Network().ConnsToPeer(p) {
		_ = c.Close()
	}
	return nil
}

// leftHold holds what is addressed to a member that left (a rejection of
// its request: broadcast lanes leave it out already, the Audience): its
// row closes, and it gets it if it comes back (sender.Kick at its hello).
func (n *Node) leftHold(p peer.ID, l stream.Lane) bool {
	if l != stream.LaneRejection {
		return false
	}
	_, left := n.book.Left(p)
	return left
}

// CutLink closes every connection to p and refuses new ones until HealLink
// (fault injection for tests and drills).
func (n *Node) CutLink(p peer.ID) {
	n.book.Block(p, true)
	for _, c := range n.host.Network().ConnsToPeer(p) {
		_ = c.Close()
	}
}

// HealLink undoes CutLink.
func (n *Node) HealLink(p peer.ID) {
	n.book.Block(p, false)
	n.sender.Kick(p)
}

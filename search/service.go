package search

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/internal/gossiptopic"
	"github.com/ferrynet/ferry/internal/inbound"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/store"
)

// Limits and defaults of a search.
const (
	// DataTypePeer is the data type of peer searches.
	DataTypePeer = "peer"

	// Scopes of a resource search.
	ScopeAll     = "all"     // every member, through the gossipsub topic
	ScopeKnown   = "known"   // every member this node knows, directly
	ScopePartner = "partner" // this node's partners, directly

	DefaultLimit = 50
	MaxLimit     = 500
	DefaultWait  = 3 * time.Second
	MaxWait      = 30 * time.Second
	// MaxTextBytes bounds the search text.
	MaxTextBytes = 1024
	// MaxOpenQueries bounds the queries a node has open at once.
	MaxOpenQueries = 1024

	// QueryRate and QueryBurst bound the queries a node answers per peer
	// (gossip and direct together): a token bucket.
	QueryRate  = 5.0
	QueryBurst = 20

	// maxQueryBytes bounds an encoded SearchQuery (a gossip message or a
	// query frame).
	maxQueryBytes = 4096
	// streamTimeout bounds one search stream, dial to close.
	streamTimeout = 10 * time.Second
	// clockSkew is how far peers' clocks may disagree about a deadline.
	clockSkew = 5 * time.Second
	// answerWorkers answer incoming queries; answerQueue is how many may wait.
	answerWorkers = 4
	answerQueue   = 64
	// maxDials bounds the search streams this node opens at once.
	maxDials = 16
	// reserveBytes is reserved from the resource manager per inbound stream.
	reserveBytes = 64 << 10
	// maxLimiterPeers bounds the rate limiter's table.
	maxLimiterPeers = 4096
	// maxAnswered bounds the table of queries already answered.
	maxAnswered = 8192
	// maxCollect bounds the results Collect gathers.
	maxCollect = 10000
)

// Roles is what the service needs to know of the network (the node's peer book).
type Roles interface {
	Self() peer.ID
	SelfName() string
	Network() string
	IsMember(peer.ID) bool
	Members() []peer.ID
	Partners() []peer.ID
	IsPartner(peer.ID) bool
	Name(peer.ID) string
	Reviewer() peer.ID
}

// DHT resolves a peer id to its addresses; *dht.IpfsDHT satisfies it.
type DHT interface {
	FindPeer(ctx context.Context, id peer.ID) (peer.AddrInfo, error)
}

// PeerBook finds the peers the node knows whose name or peer id is text.
type PeerBook interface {
	Lookup(text string) []PeerRecord
}

// Publisher publishes events on the local NATS under the node's prefix
// (suffix "search.result.<query_id>").
type Publisher interface {
	Publish(suffix string, v any)
}

// PeerRecord is one result of a peer search.
type PeerRecord struct {
	PeerID string   `json:"peer_id"`
	Name   string   `json:"name"`
	Addrs  []string `json:"addrs"`
	Roles  []string `json:"roles"`
}

// RoleNames lists p's roles as a peer record shows them: partner, member,
// reviewer (never nil).
func RoleNames(r Roles, p peer.ID) []string {
	out := []string{}
	if r.IsPartner(p) {
		out = append(out, "partner")
	}
	if r.IsMember(p) {
		out = append(out, "member")
	}
	if p != "" && p == r.Reviewer() {
		out = append(out, "reviewer")
	}
	return out
}

// Deps are what New needs.
type Deps struct {
	Host host.Host
	// DHT resolves peer ids a peer search does not find in the book; nil:
	// the book only.
	DHT DHT
	// PubSub is the gossipsub instance to use (build it with
	// gossiptopic.RouterOptions); nil: Start builds one on Host and Close stops it.
	PubSub    *pubsub.PubSub
	Store     *store.Store
	Roles     Roles
	PeerBook  PeerBook
	Publisher Publisher
	// MaxMessageBytes bounds the results of one answer (limits.max_message_bytes).
	MaxMessageBytes int
	Logger          *slog.Logger
	// Registerer receives the service's metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

// Service runs searches for the local apps and answers other members'.
type Service struct {
	d       Deps
	log     *slog.Logger
	self    peer.ID
	max     int // largest results frame
	now     func() time.Time
	limiter *limiter
	m       *metrics

	ctx    context.Context
	cancel context.CancelFunc
	g      lifecycle.Group // every goroutine and stream handler the service runs

	mu       sync.Mutex // guards the fields below
	starting bool       // Start was called
	started  bool       // Start succeeded
	open     map[string]*openQuery
	answered map[answeredKey]time.Time // (asker, query id) -> forget after

	answers chan answerJob
	dials   chan struct{} // semaphore of outbound streams

	ps       *pubsub.PubSub
	psCancel context.CancelFunc // non-nil when the service built ps
	topic    *pubsub.Topic
	sub      *pubsub.Subscription

	closeOnce sync.Once
}

// New checks the deps and builds the service; Start makes it work.
func New(d Deps) (*Service, error) {
	switch {
	case d.Host == nil:
		return nil, errors.New("search: Deps.Host is nil")
	case d.Store == nil:
		return nil, errors.New("search: Deps.Store is nil")
	case d.Roles == nil:
		return nil, errors.New("search: Deps.Roles is nil")
	case d.Publisher == nil:
		return nil, errors.New("search: Deps.Publisher is nil")
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.MaxMessageBytes <= 0 {
		d.MaxMessageBytes = protocols.DefaultMaxMessageBytes
	}
	m, err := newMetrics(d.Registerer)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{d: d, log: d.Logger, self: d.Roles.Self(), max: d.MaxMessageBytes + protocols.FrameOverhead,
		now: time.Now, m: m, ctx: ctx, cancel: cancel,
		open: map[string]*openQuery{}, answered: map[answeredKey]time.Time{},
		answers: make(chan answerJob, answerQueue), dials: make(chan struct{}, maxDials)}
	s.limiter = newLimiter(QueryRate, QueryBurst, maxLimiterPeers, func() time.Time { return s.now() })
	return s, nil
}

// Topic is the gossipsub topic of the node's network.
func (s *Service) Topic() string { return protocols.SearchTopic(s.d.Roles.Network()) }

// Start joins the search topic, registers the /ferry/search/1.0.0 handler
// and starts the goroutines. A failure undoes what it did. Start and Close
// must not run at the same time.
func (s *Service) Start() (err error) {
	s.mu.Lock()
	if s.starting || s.g.Closed() {
		s.mu.Unlock()
		return errors.New("search: already started or closed")
	}
	s.starting = true
	s.mu.Unlock()
	defer func() {
		if err != nil {
			s.stopGossip()
		}
	}()
	s.ps = s.d.PubSub
	if s.ps == nil {
		psCtx, psCancel := context.WithCancel(context.Background())
		s.ps, err = pubsub.NewGossipSub(psCtx, s.d.Host, gossiptopic.RouterOptions()...)
		if err != nil {
			psCancel()
			return fmt.Errorf("search: start gossipsub: %w", err)
		}
		s.psCancel = psCancel
	}
	name := s.Topic()
	if err := s.ps.RegisterTopicValidator(name, s.validateGossip); err != nil {
		return fmt.Errorf("search: register validator on %s: %w", name, err)
	}
	topic, err := s.ps.Join(name)
	if err != nil {
		return fmt.Errorf("search: join %s: %w", name, err)
	}
	s.mu.Lock()
	s.topic = topic
	s.mu.Unlock()
	if s.sub, err = topic.Subscribe(); err != nil {
		return fmt.Errorf("search: subscribe to %s: %w", name, err)
	}
	inbound.Handle(s.d.Host, &s.g, protocols.Search, protocols.ServiceSearch, reserveBytes, s.admitStream, s.log, s.serve)
	for range answerWorkers {
		s.spawn(s.answerLoop)
	}
	s.spawn(s.gossipLoop)
	s.mu.Lock()
	s.started = true
	s.mu.Unlock()
	s.log.Debug("search started", "topic", name)
	return nil
}

// Close stops serving, stops every goroutine the service started and waits
// for them, then leaves the topic (and stops gossipsub if Start built it).
// It is idempotent.
func (s *Service) Close() {
	s.closeOnce.Do(func() {
		s.g.Shut()
		s.mu.Lock()
		starting := s.starting
		s.mu.Unlock()
		if starting {
			s.d.Host.RemoveStreamHandler(protocols.Search)
		}
		s.cancel()
		s.g.Close()
		s.stopGossip()
	})
}

// stopGossip leaves the topic and stops a gossipsub the service built.
func (s *Service) stopGossip() {
	if s.sub != nil {
		s.sub.Cancel()
		s.sub = nil
	}
	if s.ps != nil {
		if err := s.ps.UnregisterTopicValidator(s.Topic()); err != nil {
			s.log.Debug("unregister search validator", "err", err)
		}
	}
	s.mu.Lock()
	topic := s.topic
	s.topic = nil
	s.mu.Unlock()
	if topic != nil {
		if err := topic.Close(); err != nil {
			s.log.Debug("leave search topic", "err", err)
		}
	}
	if s.psCancel != nil {
		s.psCancel()
		s.psCancel = nil
		for _, id := range pubsub.GossipSubDefaultProtocols {
			s.d.Host.RemoveStreamHandler(id)
		}
	}
	s.ps = nil
}

// spawn runs fn on a goroutine the service owns; Close waits for it. Once
// Close has begun it runs nothing and returns false.
func (s *Service) spawn(fn func()) bool { return s.g.Go(fn) }

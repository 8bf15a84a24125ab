// Package admin is what a Ferry node shows its operator: the admin HTTP API
// and its console, the live event feed (`ferry watch`), the acknowledgement
// table of source 000 and the delivery state, the review queue's detail,
// the trace of one change across the network (/ferry/trace), delivery
// rates, health answers and the state gauges of /metrics.
//
// The node builds the Feed first (the services' tracer), then the Server
// last, from a complete Deps; what only the node knows (its health, when
// it started, partner changes) comes through the Node interface. This
// package does not import node.
package admin

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/catchup"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/natsbridge"
	"github.com/ferrynet/ferry/peers"
	"github.com/ferrynet/ferry/propagate"
	"github.com/ferrynet/ferry/review"
	"github.com/ferrynet/ferry/reviewgroup"
	"github.com/ferrynet/ferry/search"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// Node is what only the node knows.
type Node interface {
	// Health is what /healthz and /readyz report, and Status.Health.
	Health() HealthReport
	// StartedAt is when Start ran (zero before).
	StartedAt() time.Time
	// Addrs are the node's dialable addresses with its peer id.
	Addrs() []ma.Multiaddr
	// SetPartner adds or removes a partner (persisted, and the node
	// protects the connection and wakes the sender); addresses given with
	// an add are kept and dialed.
	SetPartner(ctx context.Context, p peer.ID, on bool, addrs ...ma.Multiaddr) error
	// SetMember adds or removes a member (persisted; a removed member's
	// connections are closed).
	SetMember(ctx context.Context, p peer.ID, on bool) error
}

// Deps is everything the Server uses, complete at construction.
type Deps struct {
	Node      Node
	Host      host.Host
	Store     *store.Store
	Book      *peers.Book
	NATS      *natsbridge.Bridge
	Sender    *stream.Sender
	Propagate *propagate.Service
	Review    *review.Service
	// ReviewGroup is the review group's log on a reviewer of a group of
	// more than one; nil elsewhere.
	ReviewGroup *reviewgroup.Group
	CatchUp     *catchup.Service
	Search      *search.Service
	// Feed is the services' tracer, built before them (NewFeed).
	Feed *Feed
	// Registry is served at /metrics; New registers the state gauges on it.
	Registry *prometheus.Registry
	// Ctx is the node's: the requests the API takes run under it.
	Ctx context.Context
	// Group counts the Server's goroutines (the node's lifecycle group).
	Group  *lifecycle.Group
	Logger *slog.Logger

	// From the node's config and home.
	Name       string // the node's label
	Network    string
	Version    string // Ferry's release
	NATSPrefix string // subjects' prefix (the trace names what apps heard)
	// Listen is admin.listen.
	Listen string
	// Token reads the bearer token (at Start).
	Token func() (string, error)
	// Dir is the home: AdminAddrFile is written there while the API runs.
	Dir string
	// DataPath is the store's directory (ferry_store_disk_bytes).
	DataPath        string
	MaxMessageBytes int
}

// Server is the admin side of one node.
type Server struct {
	node   Node
	host   host.Host
	id     peer.ID
	st     *store.Store
	book   *peers.Book
	nats   *natsbridge.Bridge
	sender *stream.Sender
	prop   *propagate.Service
	review *review.Service
	group  *reviewgroup.Group // nil unless a reviewer of a group
	// groupView is the group's status, cached (GroupStatus); nil unless
	// group is set.
	groupView *groupView
	catchup   *catchup.Service
	search    *search.Service
	hub       *eventHub
	reg       *prometheus.Registry
	ctx       context.Context
	g         *lifecycle.Group
	log       *slog.Logger

	name, network, version, natsPrefix string
	listen                             string
	token                              func() (string, error)
	dir, dataPath                      string
	maxMessageBytes                    int

	http  *http.Server
	addr  string
	quit  chan struct{} // closed when the API stops: ends event streams and the rate sampler
	rates rateBook      // delivery rates per receiver, for the console (rates.go)
	// lastGone holds when each peer's last connection closed (peer.ID ->
	// time.Time): its last seen time while it is away (PeerInfos).
	lastGone sync.Map
}

// New builds the Server and registers the state gauges on d.Registry.
// Nothing listens until Start.
func New(d Deps) (*Server, error) {
	srv := &Server{node: d.Node, host: d.Host, id: d.Host.ID(), st: d.Store, book: d.Book, nats: d.NATS, sender: d.Sender,
		prop: d.Propagate, review: d.Review, group: d.ReviewGroup, catchup: d.CatchUp, search: d.Search, hub: d.Feed.hub,
		reg: d.Registry, ctx: d.Ctx, g: d.Group, log: d.Logger, name: d.Name, network: d.Network, version: d.Version,
		natsPrefix: d.NATSPrefix, listen: d.Listen, token: d.Token, dir: d.Dir, dataPath: d.DataPath,
		maxMessageBytes: d.MaxMessageBytes, quit: make(chan struct{}), rates: rateBook{acks: d.Feed.acks}}
	if srv.group != nil {
		srv.groupView = newGroupView(srv.fetchGroupStatus, time.Now)
	}
	if err := srv.reg.Register(&stateCollector{srv: srv}); err != nil {
		return nil, err
	}
	return srv, nil
}

// Disconnected records when p's last connection closed (the node's
// notifiee calls it): p's last seen time while it is away.
func (srv *Server) Disconnected(p peer.ID) { srv.lastGone.Store(p, time.Now()) }

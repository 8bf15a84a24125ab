package reviewgroup

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
)

// Config is what a Group is built from. Host, Dir, FSM and Allowed are
// required.
type Config struct {
	// Host is the node's libp2p host; the group's streams run on it and
	// its peer id is this member's raft server id and address.
	Host host.Host
	// Dir holds the group's durable state: raft.db (log and stable store)
	// and snapshots/. The node gives <home>/data/raft/.
	Dir string
	// Self is this member; empty means Host.ID(), anything else must equal it.
	Self peer.ID
	// Bootstrap lists the initial voters. It is used once, by the Founder
	// alone: when its Dir holds no raft state yet, it bootstraps the group
	// with exactly these voters (or with itself alone, PriorState). A member
	// with state ignores it; any other member waits for the leader to
	// reach it (a listed one) or to add it (AddVoter).
	Bootstrap []peer.ID
	// Founder is the one member that bootstraps the group (empty:
	// Bootstrap[0]); every other member of Bootstrap with an empty Dir
	// waits for the group to reach it.
	Founder peer.ID
	// PriorState says the founder's state machine already holds state
	// made before the group existed (a lone reviewer's ledger). Such a
	// founder bootstraps a group of itself alone and then takes a snapshot
	// that compacts the whole log, so that every member added later
	// receives that state by InstallSnapshot; until that snapshot is
	// taken it refuses to add a voter. Without it, the founder bootstraps
	// every member of Bootstrap.
	PriorState bool
	// FSM is the state machine the log is applied to (see the package
	// documentation for what it must do).
	FSM raft.FSM
	// Allowed says whether a peer may talk to the group at all: a stream of
	// a peer it refuses is reset at open, and this member never dials one.
	// The node passes "is one of the configured reviewers".
	Allowed func(peer.ID) bool
	// Name renders a member in messages (the node's names from its peer
	// book); nil: the peer id.
	Name func(peer.ID) string
	// Logger receives the group's and raft's logs; nil: discarded.
	Logger *slog.Logger
	// Registry receives the group's metrics; nil: none are registered.
	Registry prometheus.Registerer
	// Timing holds raft's timeouts and the group's waits; zero fields take
	// DefaultTiming's.
	Timing Timing
	// MaxCommandBytes bounds a command (Apply refuses a larger one with
	// ferry.ErrTooLarge) and a forwarded request; 0: DefaultMaxCommandBytes.
	MaxCommandBytes int
	// SnapshotThreshold is how many log entries past the last snapshot make
	// raft take the next one, TrailingLogs how many it keeps after that;
	// 0: raft's defaults (8192 and 10240).
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// SnapshotInterval is how often raft checks SnapshotThreshold
	// (randomised up to twice); 0: raft's default (120 s).
	SnapshotInterval time.Duration
}

// Timing holds the group's timeouts. Raft's three must satisfy
// LeaderLeaseTimeout <= HeartbeatTimeout <= ElectionTimeout.
type Timing struct {
	// HeartbeatTimeout: a follower that has not heard from the leader for
	// this long (randomised up to twice) starts an election.
	HeartbeatTimeout time.Duration
	// ElectionTimeout: a candidate that has not won for this long
	// (randomised up to twice) starts another election.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout: a leader that has not heard from a quorum for
	// this long steps down (the fence of the package documentation).
	LeaderLeaseTimeout time.Duration
	// CommitTimeout: the longest a follower waits to hear that an entry
	// committed when nothing else is sent.
	CommitTimeout time.Duration
	// LeaderWait: how long Apply, Barrier and the membership changes look
	// for a reachable leader before they answer ferry.ErrUnavailable (or
	// less, by their context).
	LeaderWait time.Duration
	// RPCTimeout bounds one raft RPC on the wire (raft's transport timeout).
	RPCTimeout time.Duration
	// ForwardTimeout bounds one forwarded request, the leader's work
	// included.
	ForwardTimeout time.Duration
}

// Defaults. Raft's timeouts are raft's own defaults (suited to a LAN or a
// WAN of a few tens of ms); LeaderWait covers one lost leader noticed (a
// heartbeat timeout, randomised up to twice) and one election (an election
// timeout, up to twice).
const (
	DefaultHeartbeatTimeout   = time.Second
	DefaultElectionTimeout    = time.Second
	DefaultLeaderLeaseTimeout = 500 * time.Millisecond
	DefaultCommitTimeout      = 50 * time.Millisecond
	DefaultRPCTimeout         = 10 * time.Second
	DefaultForwardTimeout     = 10 * time.Second
	// DefaultMaxCommandBytes: a review decision carries the request's data
	// and the data applied, each at most half of limits.max_message_bytes
	// (1 MiB by default), plus its fields.
	DefaultMaxCommandBytes = 2 << 20
)

// DefaultTiming is the timing of a production group.
func DefaultTiming() Timing {
	t := Timing{
		HeartbeatTimeout:   DefaultHeartbeatTimeout,
		ElectionTimeout:    DefaultElectionTimeout,
		LeaderLeaseTimeout: DefaultLeaderLeaseTimeout,
		CommitTimeout:      DefaultCommitTimeout,
		RPCTimeout:         DefaultRPCTimeout,
		ForwardTimeout:     DefaultForwardTimeout,
	}
	t.LeaderWait = leaderWait(t)
	return t
}

// leaderWait is LeaderWait's default for raft's timeouts.
func leaderWait(t Timing) time.Duration { return 2*t.HeartbeatTimeout + 2*t.ElectionTimeout }

// withDefaults fills zero fields from DefaultTiming (LeaderWait from the
// filled raft timeouts).
func (t Timing) withDefaults() Timing {
	d := DefaultTiming()
	fill := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	fill(&t.HeartbeatTimeout, d.HeartbeatTimeout)
	fill(&t.ElectionTimeout, d.ElectionTimeout)
	fill(&t.LeaderLeaseTimeout, min(d.LeaderLeaseTimeout, t.HeartbeatTimeout))
	fill(&t.CommitTimeout, d.CommitTimeout)
	fill(&t.RPCTimeout, d.RPCTimeout)
	fill(&t.ForwardTimeout, d.ForwardTimeout)
	fill(&t.LeaderWait, leaderWait(t))
	return t
}

// withDefaults returns c with its defaults filled in, or the first field
// that is wrong, named.
func (c Config) withDefaults() (Config, error) {
	switch {
	case c.Host == nil:
		return c, errors.New("review group: Config.Host is required")
	case c.Dir == "":
		return c, errors.New("review group: Config.Dir is required")
	case c.FSM == nil:
		return c, errors.New("review group: Config.FSM is required")
	case c.Allowed == nil:
		return c, errors.New("review group: Config.Allowed is required (who may talk to the group)")
	}
	if c.Self == "" {
		c.Self = c.Host.ID()
	}
	if c.Self != c.Host.ID() {
		return c, fmt.Errorf("review group: Config.Self %s is not the host's peer id %s", c.Self, c.Host.ID())
	}
	for _, p := range c.Bootstrap {
		if _, err := peer.IDFromBytes([]byte(p)); err != nil {
			return c, fmt.Errorf("review group: Config.Bootstrap: %q is not a peer id: %w", p, err)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Name == nil {
		c.Name = func(p peer.ID) string { return p.String() }
	}
	if c.MaxCommandBytes == 0 {
		c.MaxCommandBytes = DefaultMaxCommandBytes
	}
	if c.MaxCommandBytes < 0 {
		return c, fmt.Errorf("review group: Config.MaxCommandBytes %d is negative", c.MaxCommandBytes)
	}
	c.Bootstrap = slices.Clone(c.Bootstrap)
	if c.Founder == "" && len(c.Bootstrap) > 0 {
		c.Founder = c.Bootstrap[0]
	}
	if c.Founder != "" && !slices.Contains(c.Bootstrap, c.Founder) {
		return c, fmt.Errorf("review group: Config.Founder %s is not in Config.Bootstrap", c.Founder)
	}
	c.Timing = c.Timing.withDefaults()
	if err := raft.ValidateConfig(c.raftConfig()); err != nil {
		return c, fmt.Errorf("review group: Config.Timing: %w", err)
	}
	return c, nil
}

// raftConfig is raft's configuration for c (its logger is set by New).
func (c Config) raftConfig() *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.Self.String())
	rc.HeartbeatTimeout = c.Timing.HeartbeatTimeout
	rc.ElectionTimeout = c.Timing.ElectionTimeout
	rc.LeaderLeaseTimeout = c.Timing.LeaderLeaseTimeout
	rc.CommitTimeout = c.Timing.CommitTimeout
	if c.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = c.SnapshotThreshold
	}
	if c.TrailingLogs > 0 {
		rc.TrailingLogs = c.TrailingLogs
	}
	if c.SnapshotInterval > 0 {
		rc.SnapshotInterval = c.SnapshotInterval
	}
	return rc
}

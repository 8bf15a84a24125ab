package catchup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/gate"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// A node restored from an older copy of its data directory must never
// hand out again a version, a request or a decision sequence its peers have
// seen, and must not lose what they hold of it. Versions are floored at the
// clock (store.Txn.NextVersion), requests travel under their version, and
// when a peer shows that it holds this node's changes beyond this node's
// log (in hello, or in a delivery stream's position report) the node says
// so in one line, raises its version counter past them and takes them back
// from that peer (sync, "own"). A reviewer decides only once it has
// compared its decisions with a member since it started.
//
// A store rebuilt after a corruption (store/repair.go) lost a range of
// keys, maybe in the middle of its log, which no peer's report shows: the
// node asks the first partner that says hello for its own changes after
// the last one read before the damage, and drops the repair mark once one
// partner's recovery succeeded.

// Own writes at start. A node cannot tell a restart from a restore: both
// open a store that was whole when it was written. A restored one lacks
// what it answered after the copy was made (changes, idempotency keys), and
// taking an app's retry of such a request would give it a second change
// under a new version. So a node whose partners acknowledged changes of
// it holds its own writes (creates, updates, deletes, considers, planner
// events) until a partner has said in hello what it holds of this node's
// changes, and this node holds as much or took the rest back from it. A write waits at most
// ownWritesWait, then is answered unavailable with the reason; trust_store
// lets them through at once.
const (
	ownWritesWait    = 4 * time.Second
	ownWritesWaitMax = 100000 // held at once; more are answered unavailable at once
)

// decideGrace is how long a reviewer that has members but has heard from
// none of them waits before it decides anyway.
const decideGrace = 15 * time.Second

// Retries of a failed recovery: it is asked again without waiting for the
// peer to report once more (a hello comes once per connection).
const (
	recoverRetryMin = time.Second
	recoverRetryMax = 30 * time.Second
)

// RestoreRoles is what Restore needs to know of the network.
type RestoreRoles interface {
	IsPartner(peer.ID) bool
	Partners() []peer.ID
	Members() []peer.ID
	Name(peer.ID) string
}

// RestoreDeps are what NewRestore needs.
type RestoreDeps struct {
	Store *store.Store
	Self  peer.ID
	Roles RestoreRoles
	// Jobs is catch-up's queue: recoveries are asked through it.
	Jobs *Jobs
	// TrustStore opens own writes at once (config trust_store).
	TrustStore bool
	// Context and Group own the waits before a failed recovery is asked
	// again (the node's).
	Context context.Context
	Group   *lifecycle.Group
	Logger  *slog.Logger
}

// Restore is what a node does about a store that may be an older copy, or
// was rebuilt: it is the catch-up service's Own (RecoverFrom, Recovered),
// the sender's OnAhead (Ahead), hello's Holds and OnHolds (HoldsOf,
// PeerHolds), the review service's Ready, and its Writes gate holds the
// propagate service's own writes. It is built right after the store and
// the peer book, before the services that use it.
type Restore struct {
	d      RestoreDeps
	log    *slog.Logger
	writes *gate.Gate
	start  time.Time

	mu       sync.Mutex
	compared bool             // a member told what it holds of this node since it started
	warned   map[peer.ID]bool // peers reported ahead (logged once each)
	from     uint64           // this node's version counter when its store opened
	// retry is the wait before asking a peer again after a recovery from
	// it failed (doubling, recoverRetryMax at most), by peer.
	retry map[peer.ID]time.Duration
	// repair: the store was rebuilt after a corruption (store/repair.go)
	// and the own changes it lost are not yet taken back; nil otherwise.
	repair *store.RepairMark
}

// NewRestore reads the store's version counter and repair mark, and builds
// the own-writes gate.
func NewRestore(d RestoreDeps) (*Restore, error) {
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.Context == nil || d.Group == nil || d.Jobs == nil {
		return nil, errors.New("restore: Context, Group and Jobs are required")
	}
	r := &Restore{d: d, log: d.Logger, start: time.Now(), from: d.Store.DurableVersion(), warned: map[peer.ID]bool{}}
	if m, ok, err := d.Store.Repair(); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	} else if ok {
		r.repair = &m
		r.log.Warn("the store was rebuilt after a corruption: taking this node's own changes back from the first partner that connects",
			"own_changes_after", m.OwnFrom, "damaged_copy", m.Damaged)
	}
	var err error
	if r.writes, err = r.newWritesGate(); err != nil {
		return nil, err
	}
	return r, nil
}

// Writes is the gate own writes wait at (propagate's Deps.Gate).
func (r *Restore) Writes() *gate.Gate { return r.writes }

// newOwnWritesGate is shut when a partner acknowledged changes of this
// node (so it may hold some the store lacks) and the config does not trust
// the store. A node whose partners never acknowledged anything (a new node,
// a partner not deployed yet) has nothing to lose and writes at once; should
// its store still be a copy from before a partner's first acknowledgement,
// what collides is refused by the partners and put back at the origin
// (propagate's collides and RecoverOwn).
func (r *Restore) newWritesGate() (*gate.Gate, error) {
	g := gate.New(ownWritesWait, ownWritesWaitMax, r.writesWhy)
	if r.d.TrustStore {
		g.Open()
		return g, nil
	}
	floors, err := r.d.Store.Floors()
	if err != nil {
		return nil, fmt.Errorf("read ack floors: %w", err)
	}
	var held []string
	for k, f := range floors {
		switch stream.Lane(k.Lane) {
		case stream.LaneResource, stream.LaneConsider, stream.LanePlanner:
			if f.Version > 0 && r.d.Roles.IsPartner(k.Receiver) && !slices.Contains(held, r.d.Roles.Name(k.Receiver)) {
				held = append(held, r.d.Roles.Name(k.Receiver))
			}
		}
	}
	if len(held) == 0 {
		g.Open()
		return g, nil
	}
	slices.Sort(held)
	r.log.Info("own writes wait until a partner says what it holds of this node's changes (a store restored from an older copy must not answer a retried request twice; trust_store: true skips this)",
		"partners_holding_changes", strings.Join(held, ","))
	return g, nil
}

// writesWhy is the answer to an own write that waited too long.
func (r *Restore) writesWhy() error {
	var names []string
	for _, p := range r.d.Roles.Partners() {
		names = append(names, r.d.Roles.Name(p))
	}
	return fmt.Errorf("%w: this node has not yet heard from a partner since it started (partners: %s); own writes wait until one says what it holds of this node's changes, so that a store restored from an older copy never answers a request twice; retry when a partner is connected, or set trust_store: true", ferry.ErrUnavailable, strings.Join(names, ", "))
}

// confirmedBy opens own writes: partner p holds no change of this node
// beyond this node's store, or this node took them back from it.
func (r *Restore) confirmedBy(p peer.ID) {
	if !r.d.Roles.IsPartner(p) || r.writes.IsOpen() || r.repairing() != nil {
		return // a rebuilt store waits until its lost range is back (Recovered)
	}
	r.log.Info("a partner confirmed this node's store: own writes go ahead", "partner", p, "held", r.writes.Waiting())
	r.writes.Open()
}

// repairing is the mark of a rebuilt store whose own changes are not yet
// taken back from a partner.
func (r *Restore) repairing() *store.RepairMark {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.repair
}

// HoldsOf is how far this node holds p's own changes (sent in hello).
func (r *Restore) HoldsOf(p peer.ID) uint64 {
	v, err := r.d.Store.LastOriginVersion(p)
	if err != nil {
		return 0
	}
	return v
}

// missingOwn reports whether this node lacks its own change at version v.
func (r *Restore) missingOwn(v uint64) bool {
	if v == 0 {
		return false
	}
	if v > r.d.Store.DurableVersion() {
		return true
	}
	_, err := r.d.Store.OriginEntry(r.d.Self, v)
	return errors.Is(err, store.ErrNotFound)
}

// PeerHolds hears, in hello, the highest of this node's versions p holds.
// It reports whether this node holds v too: then p's report stands for what
// p holds of this node (the caller tells the sender, which resends what p
// acknowledged and lacks now: Sender.HoldsAtMost).
func (r *Restore) PeerHolds(p peer.ID, v uint64) bool {
	// A store rebuilt after a corruption takes its own changes of the lost
	// range back from the first partner that says hello.
	if r.repairing() != nil && r.d.Roles.IsPartner(p) {
		r.d.Jobs.Recover(p)
	}
	if r.missingOwn(v) {
		r.Ahead(p, 0, v)
		return false
	}
	r.mu.Lock()
	r.compared = true
	r.mu.Unlock()
	r.confirmedBy(p)
	return true
}

// Ahead runs when p holds this node's changes up to v and this node lacks
// v: the data directory was restored from an older copy.
func (r *Restore) Ahead(p peer.ID, lane stream.Lane, v uint64) {
	if !r.missingOwn(v) {
		return
	}
	r.mu.Lock()
	first := !r.warned[p]
	r.warned[p] = true
	r.mu.Unlock()
	if first {
		r.log.Error("this node's store was restored from an older copy: a peer holds changes of this node that its store lost; raising the version counter past them and taking them back from the peer",
			"peer", p, "lane", lane, "peer_holds", v, "store_version", r.d.Store.DurableVersion())
	}
	if err := r.d.Store.Update(r.d.Context, func(tx *store.Txn) error { return tx.RaiseVersion(v) }); err != nil {
		r.log.Error("raise the version counter", "err", err)
		return
	}
	r.d.Jobs.Recover(p)
}

// RecoverFrom is the version after which this node asks for its own
// changes back: its counter when the store opened (every version it gave
// since then is above what an older run gave).
func (r *Restore) RecoverFrom() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.repair != nil {
		// Rebuilt: everything after the last change read before the damage.
		return r.repair.OwnFrom
	}
	v, err := r.d.Store.LastOriginVersionBelow(r.d.Self, r.from)
	if err != nil {
		return 0
	}
	return v
}

// Recovered ends a recovery from p.
func (r *Restore) Recovered(p peer.ID, count int, err error) {
	if err != nil {
		r.mu.Lock()
		if r.retry == nil {
			r.retry = map[peer.ID]time.Duration{}
		}
		wait := min(max(2*r.retry[p], recoverRetryMin), recoverRetryMax)
		r.retry[p] = wait
		r.mu.Unlock()
		r.log.Warn("taking back this node's changes from a peer failed; asking again", "peer", p, "in", wait, "err", err)
		r.d.Group.Go(func() {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-r.d.Context.Done():
			case <-t.C:
				r.d.Jobs.Recover(p)
			}
		})
		return
	}
	r.log.Info("took back this node's changes a peer held", "peer", p, "changes", count)
	if m := r.repairing(); m != nil && r.d.Roles.IsPartner(p) {
		if err := r.d.Store.Update(r.d.Context, func(tx *store.Txn) error { tx.RepairDone(); return nil }); err != nil {
			r.log.Error("store repaired, but the repair mark could not be dropped (the next start asks partners again)", "err", err)
		} else {
			r.log.Info("store repaired: this node took back its own changes of the range lost to the corruption from a partner",
				"peer", p, "changes", count, "after_version", m.OwnFrom, "damaged_copy", m.Damaged)
		}
		r.mu.Lock()
		r.repair = nil
		r.mu.Unlock()
	}
	r.mu.Lock()
	r.compared = true
	delete(r.retry, p)
	r.mu.Unlock()
	r.confirmedBy(p)
}

// Ready refuses a reviewer's decision until it has compared its
// decisions with a member since it started (or it has none, or waited
// decideGrace for one).
func (r *Restore) Ready() error {
	r.mu.Lock()
	compared := r.compared
	r.mu.Unlock()
	if compared || len(r.d.Roles.Members()) == 0 || time.Since(r.start) > decideGrace {
		return nil
	}
	return fmt.Errorf("%w: the reviewer has not yet heard from a member since it started (it compares its decisions with theirs so that a restored store never reuses a sequence); retry in a moment", ferry.ErrUnavailable)
}

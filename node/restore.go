package node

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/gate"
	"github.com/ferrynet/ferry/protocols/pb"
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

// newOwnWritesGate is shut when a partner acknowledged changes of this
// node (so it may hold some the store lacks) and the config does not trust
// the store. A node whose partners never acknowledged anything (a new node,
// a partner not deployed yet) has nothing to lose and writes at once; should
// its store still be a copy from before a partner's first acknowledgement,
// what collides is refused by the partners and put back at the origin
// (propagate's collides and RecoverOwn).
func (n *Node) newOwnWritesGate() (*gate.Gate, error) {
	g := gate.New(ownWritesWait, ownWritesWaitMax, n.ownWritesWhy)
	if n.cfg.TrustStore {
		g.Open()
		return g, nil
	}
	floors, err := n.st.Floors()
	if err != nil {
		return nil, fmt.Errorf("read ack floors: %w", err)
	}
	var held []string
	for k, f := range floors {
		switch stream.Lane(k.Lane) {
		case stream.LaneResource, stream.LaneConsider, stream.LanePlanner:
			if f.Version > 0 && n.book.IsPartner(k.Receiver) && !slices.Contains(held, n.book.Name(k.Receiver)) {
				held = append(held, n.book.Name(k.Receiver))
			}
		}
	}
	if len(held) == 0 {
		g.Open()
		return g, nil
	}
	slices.Sort(held)
	n.log.Info("own writes wait until a partner says what it holds of this node's changes (a store restored from an older copy must not answer a retried request twice; trust_store: true skips this)",
		"partners_holding_changes", strings.Join(held, ","))
	return g, nil
}

// ownWritesWhy is the answer to an own write that waited too long.
func (n *Node) ownWritesWhy() error {
	var names []string
	for _, p := range n.book.Partners() {
		names = append(names, n.book.Name(p))
	}
	return fmt.Errorf("%w: this node has not yet heard from a partner since it started (partners: %s); own writes wait until one says what it holds of this node's changes, so that a store restored from an older copy never answers a request twice; retry when a partner is connected, or set trust_store: true", ferry.ErrUnavailable, strings.Join(names, ", "))
}

// confirmedBy opens own writes: partner p holds no change of this node
// beyond this node's store, or this node took them back from it.
func (n *Node) confirmedBy(p peer.ID) {
	if !n.book.IsPartner(p) || n.ownWrites.IsOpen() || n.repairing() != nil {
		return // a rebuilt store waits until its lost range is back (Recovered)
	}
	n.log.Info("a partner confirmed this node's store: own writes go ahead", "partner", p, "held", n.ownWrites.Waiting())
	n.ownWrites.Open()
}

// decideGrace is how long a reviewer that has members but has heard from
// none of them waits before it decides anyway.
const decideGrace = 15 * time.Second

type restoreState struct {
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

// repairing is the mark of a rebuilt store whose own changes are not yet
// taken back from a partner.
func (n *Node) repairing() *store.RepairMark {
	n.restore.mu.Lock()
	defer n.restore.mu.Unlock()
	return n.restore.repair
}

// Retries of a failed recovery: it is asked again without waiting for the
// peer to report once more (a hello comes once per connection).
const (
	recoverRetryMin = time.Second
	recoverRetryMax = 30 * time.Second
)

// holdsOf is how far this node holds p's own changes (sent in hello).
func (n *Node) holdsOf(p peer.ID) uint64 {
	v, err := n.st.LastOriginVersion(p)
	if err != nil {
		return 0
	}
	return v
}

// missingOwn reports whether this node lacks its own change at version v.
func (n *Node) missingOwn(v uint64) bool {
	if v == 0 {
		return false
	}
	if v > n.st.DurableVersion() {
		return true
	}
	_, err := n.st.OriginEntry(n.id, v)
	return errors.Is(err, store.ErrNotFound)
}

// peerHolds hears, in hello, the highest of this node's versions p holds.
func (n *Node) peerHolds(p peer.ID, v uint64) {
	// A store rebuilt after a corruption takes its own changes of the lost
	// range back from the first partner that says hello.
	if n.repairing() != nil && n.book.IsPartner(p) {
		n.catchup.Recover(p)
	}
	if n.missingOwn(v) {
		n.ahead(p, 0, v)
		return
	}
	// A receiver that holds less than it acknowledged (its store was
	// restored or replaced) gets it again.
	n.sender.HoldsAtMost(p, v)
	n.restore.mu.Lock()
	n.restore.compared = true
	n.restore.mu.Unlock()
	n.confirmedBy(p)
}

// ahead runs when p holds this node's changes up to v and this node lacks
// v: the data directory was restored from an older copy.
func (n *Node) ahead(p peer.ID, lane stream.Lane, v uint64) {
	if !n.missingOwn(v) {
		return
	}
	n.restore.mu.Lock()
	first := !n.restore.warned[p]
	n.restore.warned[p] = true
	n.restore.mu.Unlock()
	if first {
		n.log.Error("this node's store was restored from an older copy: a peer holds changes of this node that its store lost; raising the version counter past them and taking them back from the peer",
			"peer", p, "lane", lane, "peer_holds", v, "store_version", n.st.DurableVersion())
	}
	if err := n.st.Update(n.ctx, func(tx *store.Txn) error { return tx.RaiseVersion(v) }); err != nil {
		n.log.Error("raise the version counter", "err", err)
		return
	}
	n.catchup.Recover(p)
}

// RecoverOwn puts back one of this node's own changes (sync, "own").
func (n *Node) RecoverOwn(tx *store.Txn, in *stream.Inbound) (bool, error) {
	switch in.Body.Kind {
	case pb.Kind_KIND_REVIEW_REQUEST, pb.Kind_KIND_REVIEW_DECISION:
		return n.review.RecoverOwn(tx, in)
	}
	return n.prop.RecoverOwn(tx, in)
}

// RecoverFrom is the version after which this node asks for its own
// changes back: its counter when the store opened (every version it gave
// since then is above what an older run gave).
func (n *Node) RecoverFrom() uint64 {
	n.restore.mu.Lock()
	defer n.restore.mu.Unlock()
	if n.restore.repair != nil {
		// Rebuilt: everything after the last change read before the damage.
		return n.restore.repair.OwnFrom
	}
	v, err := n.st.LastOriginVersionBelow(n.id, n.restore.from)
	if err != nil {
		return 0
	}
	return v
}

// Recovered ends a recovery from p.
func (n *Node) Recovered(p peer.ID, count int, err error) {
	if err != nil {
		n.restore.mu.Lock()
		if n.restore.retry == nil {
			n.restore.retry = map[peer.ID]time.Duration{}
		}
		wait := min(max(2*n.restore.retry[p], recoverRetryMin), recoverRetryMax)
		n.restore.retry[p] = wait
		n.restore.mu.Unlock()
		n.log.Warn("taking back this node's changes from a peer failed; asking again", "peer", p, "in", wait, "err", err)
		n.spawn(func() {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-n.ctx.Done():
			case <-t.C:
				n.catchup.Recover(p)
			}
		})
		return
	}
	n.log.Info("took back this node's changes a peer held", "peer", p, "changes", count)
	if m := n.repairing(); m != nil && n.book.IsPartner(p) {
		if err := n.st.Update(n.ctx, func(tx *store.Txn) error { tx.RepairDone(); return nil }); err != nil {
			n.log.Error("store repaired, but the repair mark could not be dropped (the next start asks partners again)", "err", err)
		} else {
			n.log.Info("store repaired: this node took back its own changes of the range lost to the corruption from a partner",
				"peer", p, "changes", count, "after_version", m.OwnFrom, "damaged_copy", m.Damaged)
		}
		n.restore.mu.Lock()
		n.restore.repair = nil
		n.restore.mu.Unlock()
	}
	n.restore.mu.Lock()
	n.restore.compared = true
	delete(n.restore.retry, p)
	n.restore.mu.Unlock()
	n.confirmedBy(p)
}

// decideReady refuses a reviewer's decision until it has compared its
// decisions with a member since it started (or it has none, or waited
// decideGrace for one).
func (n *Node) decideReady() error {
	n.restore.mu.Lock()
	compared := n.restore.compared
	n.restore.mu.Unlock()
	if compared || len(n.book.Members()) == 0 || time.Since(n.startedAt) > decideGrace {
		return nil
	}
	return fmt.Errorf("%w: the reviewer has not yet heard from a member since it started (it compares its decisions with theirs so that a restored store never reuses a sequence); retry in a moment", ferry.ErrUnavailable)
}

package peers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/store"
)

// Members that leave (issue 22). A member is known by its signed record,
// which has a lifetime (membership.Deps.Lifetime): the peer book keeps each
// member's record expiry (storepb.Peer.expires_at), and a member whose
// record expired is no longer one, even if it is a partner or in `members`
// (the reviewer stays one: every member must keep taking its decisions). It
// is one again when a newer record arrives.
//
// An operator removes a member with `ferry members remove ID`: the removal
// is kept in the store and honoured until `ferry members add ID` (a newer
// record does not undo it): the peer is then refused as a peer outside
// `members` is. A peer that was a member and is not in `members` of the
// config any more is recorded as removed by the config when the node
// starts, and the record goes when the config lists it again.
//
// A member that left is no longer addressed (the stream layer's Audience
// leaves it out; rejections addressed to it are held, node's Hold), and
// the acknowledgement rows of what was made while it was a member close
// with the reason (Departure) instead of staying pending for ever. What
// was made after it left is not addressed to it at all.

// Removal causes.
const (
	RemovedByOperator = "operator"
	RemovedByConfig   = "config"
)

// auxRemoved and auxAdded + peer id are where the store keeps removals
// (JSON removal) and the operator's adds of peers outside `members`.
const (
	auxRemoved = "peers/members_removed/"
	auxAdded   = "peers/members_added/"
)

// removal is a member removed, and since when.
type removal struct {
	At time.Time `json:"at"`
	By string    `json:"by"` // RemovedByOperator or RemovedByConfig
}

// Departure says that a peer was a member and is not one any more.
type Departure struct {
	Peer peer.ID
	// At is when it left: its record's expiry, or its removal.
	At time.Time
	// Why is RemovedByOperator, RemovedByConfig, or "expired".
	Why string
	// Reason is the operator's words, as acknowledgement rows show them.
	Reason string
}

// Why of a member whose record expired.
const LeftExpired = "expired"

func (r removal) departure(p peer.ID) Departure {
	d := Departure{Peer: p, At: r.At, Why: r.By}
	switch r.By {
	case RemovedByConfig:
		d.Reason = "member removed: not in `members` of the config since " + stamp(r.At)
	default:
		d.Reason = "member removed by the operator at " + stamp(r.At)
	}
	return d
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// loadRemovals reads the removals and adds kept in the store, and records
// as removed by the config the peers that were members and are outside
// `members` now (a removal by the config goes once the config lists the
// peer again). Runs in NewBook, before anyone else sees the book.
func (b *Book) loadRemovals(now time.Time) error {
	raw, err := b.st.AuxPrefix(auxRemoved)
	if err != nil {
		return fmt.Errorf("load member removals: %w", err)
	}
	for name, v := range raw {
		p, err := peer.Decode(name[len(auxRemoved):])
		if err != nil {
			continue
		}
		var r removal
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("member removal of %s: %w", p, err)
		}
		b.removed[p] = r
	}
	added, err := b.st.AuxPrefix(auxAdded)
	if err != nil {
		return fmt.Errorf("load member adds: %w", err)
	}
	for name := range added {
		if p, err := peer.Decode(name[len(auxAdded):]); err == nil {
			b.added[p] = true
		}
	}
	var put, drop []peer.ID
	for p, r := range b.removed {
		if r.By == RemovedByConfig && b.configAllows(p) {
			drop = append(drop, p)
		}
	}
	for id, e := range b.book {
		if _, gone := b.removed[id]; !gone && e.Member && !b.configAllows(id) && id != b.self {
			put = append(put, id)
		}
	}
	if len(put) == 0 && len(drop) == 0 {
		return nil
	}
	r := removal{At: now.UTC(), By: RemovedByConfig}
	v, _ := json.Marshal(r)
	err = b.st.Update(context.Background(), func(tx *store.Txn) error {
		for _, p := range put {
			tx.SetAux(auxRemoved+p.String(), v)
		}
		for _, p := range drop {
			tx.DeleteAux(auxRemoved + p.String())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record member removals: %w", err)
	}
	for _, p := range put {
		b.removed[p] = r
		b.log.Info("member removed: not in `members` of the config", "peer", p, "name", b.nameLocked(p))
	}
	for _, p := range drop {
		delete(b.removed, p)
	}
	return nil
}

// configAllows reports whether the config's `members` (with the
// operator's adds) lets p be a member; b.mu held or not yet shared.
func (b *Book) configAllows(p peer.ID) bool {
	return len(b.members) == 0 || b.members[p] || b.added[p]
}

// expiredLocked reports whether p's record expired at now; b.mu held.
func (b *Book) expiredLocked(p peer.ID, now time.Time) (time.Time, bool) {
	e := b.book[p]
	if e == nil || !e.Member || e.ExpiresAt == 0 || p == b.reviewer || p == b.self {
		return time.Time{}, false
	}
	at := time.Unix(0, e.ExpiresAt)
	return at, !now.Before(at)
}

// leftLocked says whether p was a member and left; b.mu held.
func (b *Book) leftLocked(p peer.ID, now time.Time) (Departure, bool) {
	if r, ok := b.removed[p]; ok {
		return r.departure(p), true
	}
	if at, ok := b.expiredLocked(p, now); ok {
		return Departure{Peer: p, At: at, Why: LeftExpired, Reason: "member left: its record expired at " + stamp(at)}, true
	}
	return Departure{}, false
}

// Left says whether p was a member of this node and left (its record
// expired, or it was removed), and why.
func (b *Book) Left(p peer.ID) (Departure, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.leftLocked(p, time.Now())
}

// Departed lists the peers that were members and left, by peer id.
func (b *Book) Departed() []Departure {
	now := time.Now()
	b.mu.RLock()
	var out []Departure
	seen := map[peer.ID]bool{}
	for p := range b.removed {
		seen[p] = true
		d, _ := b.leftLocked(p, now)
		out = append(out, d)
	}
	for p := range b.book {
		if seen[p] {
			continue
		}
		if d, ok := b.leftLocked(p, now); ok {
			out = append(out, d)
		}
	}
	b.mu.RUnlock()
	slices.SortFunc(out, func(x, y Departure) int { return compareStrings(string(x.Peer), string(y.Peer)) })
	return out
}

// MemberState is a row of `ferry members list`: a member, or a peer that
// was one.
type MemberState struct {
	Peer peer.ID
	// State is "member", "left" (its record expired) or "removed".
	State string
	// Expires is when its record expires (zero: no record known: a
	// partner, a `members` entry or the reviewer before its first record).
	Expires time.Time
	// Left is the departure of a peer that is not a member.
	Left Departure
}

// MemberStates lists the members and the peers that left, by peer id.
func (b *Book) MemberStates() []MemberState {
	var out []MemberState
	for _, p := range b.Members() {
		st := MemberState{Peer: p, State: "member"}
		b.mu.RLock()
		if e := b.book[p]; e != nil && e.Member && e.ExpiresAt != 0 {
			st.Expires = time.Unix(0, e.ExpiresAt)
		}
		b.mu.RUnlock()
		out = append(out, st)
	}
	for _, d := range b.Departed() {
		st := MemberState{Peer: d.Peer, State: "left", Left: d}
		if d.Why != LeftExpired {
			st.State = "removed"
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(x, y MemberState) int { return compareStrings(string(x.Peer), string(y.Peer)) })
	return out
}

// Errors of SetMember.
var (
	ErrMemberSelf     = errors.New("a node cannot remove itself")
	ErrMemberReviewer = errors.New("the reviewer cannot be removed")
	ErrMemberPartner  = errors.New("a partner cannot be removed as a member")
)

// SetMember is the operator's `ferry members add|remove ID`, kept in the
// store. A remove makes p no member of this node from now on (refused as
// a peer outside `members` is; not addressed; its pending rows close)
// until an add; an add undoes a removal and lets p be a member even if
// `members` is set and does not list it. The reviewer, a partner (remove
// it as a partner first) and the node itself cannot be removed.
func (b *Book) SetMember(ctx context.Context, p peer.ID, on bool) error {
	if !on {
		switch {
		case p == b.self:
			return ErrMemberSelf
		case p == b.reviewer:
			return fmt.Errorf("%w: %s is this network's reviewer", ErrMemberReviewer, p)
		case b.IsPartner(p):
			return fmt.Errorf("%w: %s is a partner of this node; remove it with `ferry partners remove %s` first", ErrMemberPartner, p, p)
		}
	}
	r := removal{At: time.Now().UTC(), By: RemovedByOperator}
	v, _ := json.Marshal(r)
	b.mu.RLock()
	add := on && len(b.members) > 0 && !b.members[p]
	b.mu.RUnlock()
	err := b.st.Update(ctx, func(tx *store.Txn) error {
		if on {
			tx.DeleteAux(auxRemoved + p.String())
			if add {
				tx.SetAux(auxAdded+p.String(), []byte{1})
			}
			return nil
		}
		tx.SetAux(auxRemoved+p.String(), v)
		tx.DeleteAux(auxAdded + p.String())
		return nil
	})
	if err != nil {
		return err
	}
	b.mu.Lock()
	if on {
		delete(b.removed, p)
		if add {
			b.added[p] = true
		}
	} else {
		b.removed[p] = r
		delete(b.added, p)
	}
	b.memberList = nil
	name := b.nameLocked(p)
	b.mu.Unlock()
	if on {
		b.log.Info("member added by the operator", "peer", p, "name", name)
	} else {
		b.log.Info("member removed by the operator", "peer", p, "name", name)
	}
	return nil
}

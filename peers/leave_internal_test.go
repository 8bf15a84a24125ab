package peers

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/membership"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// diskBook opens a peer book on a store in dir; both close at cleanup, or
// earlier through the returned close.
func diskBook(t *testing.T, dir string, c Config, self peer.ID) (*Book, func()) {
	t.Helper()
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	done := func() {
		if !closed {
			closed = true
			_ = st.Close()
		}
	}
	t.Cleanup(done)
	book, err := NewBook(BookDeps{Config: c, Self: self, Store: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return book, done
}

// A member whose record expires is no member any more (not a receiver of
// decisions, its departure says why and since when), even as a partner;
// a newer record makes it one again. The reviewer's expired record
// changes nothing.
func TestMemberWhoseRecordExpired(t *testing.T) {
	self, a, partner, reviewer := newID(t), newID(t), newID(t), newID(t)
	book := newBook(t, Config{Name: "self", Network: "net", Reviewer: self, Partners: []peer.ID{partner}}, self)
	soon := time.Now().Add(300 * time.Millisecond)
	book.learn(membership.Record{Peer: a, Network: "net", Name: "a", Expires: soon})
	book.learn(membership.Record{Peer: partner, Network: "net", Name: "p", Expires: soon})
	if !book.IsMember(a) || !book.Receives(a, stream.LaneDecision) || !slices.Contains(book.Members(), a) {
		t.Fatal("a is no member before its record expired")
	}
	wait.For(t, 10*time.Second, "a's record expires", func() bool { return !book.IsMember(a) })
	if slices.Contains(book.Members(), a) || slices.Contains(book.Members(), partner) || book.Receives(a, stream.LaneDecision) {
		t.Fatalf("members %v after a's and the partner's records expired", book.Members())
	}
	if !book.IsPartner(partner) || !book.Receives(partner, stream.LaneResource) {
		t.Fatal("a partner whose record expired is no partner: partners are the operator's word")
	}
	d, ok := book.Left(a)
	if !ok || d.Why != LeftExpired || !d.At.Equal(time.Unix(0, soon.UnixNano())) ||
		d.Reason != "member left: its record expired at "+soon.UTC().Format(time.RFC3339) {
		t.Fatalf("Left(a) = %+v, %v", d, ok)
	}
	if got := book.Departed(); len(got) != 2 {
		t.Fatalf("departed %v, want a and the partner", got)
	}
	book.learn(membership.Record{Peer: a, Network: "net", Name: "a", Expires: time.Now().Add(time.Hour)})
	if !book.IsMember(a) || !slices.Contains(book.Members(), a) {
		t.Fatal("a is no member after a new record")
	}
	if _, ok := book.Left(a); ok {
		t.Fatal("a still counts as left after a new record")
	}

	// At a member: the reviewer's record expiring changes nothing.
	m := newBook(t, Config{Name: "m", Network: "net", Reviewer: reviewer}, newID(t))
	m.learn(membership.Record{Peer: reviewer, Network: "net", Name: "r", Expires: time.Now().Add(-time.Second)})
	if !m.IsMember(reviewer) {
		t.Fatal("the reviewer is no member once its record expired")
	}
	if _, ok := m.Left(reviewer); ok {
		t.Fatal("the reviewer counts as left")
	}
}

// An operator's removal is kept in the store (a restart honours it), a
// newer record does not undo it, `members add` does; the node itself, the
// reviewer and a partner cannot be removed.
func TestMemberRemovedByTheOperator(t *testing.T) {
	dir := t.TempDir()
	self, a, b, partner := newID(t), newID(t), newID(t), newID(t)
	cfg := Config{Name: "self", Network: "net", Reviewer: self, Partners: []peer.ID{partner}}
	book, done := diskBook(t, dir, cfg, self)
	later := time.Now().Add(time.Hour)
	book.learn(membership.Record{Peer: a, Network: "net", Name: "a", Expires: later})
	book.learn(membership.Record{Peer: b, Network: "net", Name: "b", Expires: later})
	ctx := context.Background()
	for _, c := range []struct {
		p    peer.ID
		want error
	}{{self, ErrMemberSelf}, {partner, ErrMemberPartner}} {
		if err := book.SetMember(ctx, c.p, false); !errors.Is(err, c.want) {
			t.Fatalf("remove %s: %v, want %v", book.Name(c.p), err, c.want)
		}
	}
	if err := book.SetMember(ctx, a, false); err != nil {
		t.Fatal(err)
	}
	check := func(book *Book, when string) {
		t.Helper()
		if book.IsMember(a) || slices.Contains(book.Members(), a) || book.Receives(a, stream.LaneDecision) || !book.refused(a) {
			t.Fatalf("%s: a removed is still a member (or not refused)", when)
		}
		d, ok := book.Left(a)
		if !ok || d.Why != RemovedByOperator || !strings.HasPrefix(d.Reason, "member removed by the operator at ") {
			t.Fatalf("%s: Left(a) = %+v, %v", when, d, ok)
		}
		if !book.IsMember(b) {
			t.Fatalf("%s: b is no member", when)
		}
	}
	check(book, "removed")
	done()
	book, done = diskBook(t, dir, cfg, self)
	check(book, "after a restart")
	book.learn(membership.Record{Peer: a, Network: "net", Name: "a", Expires: later.Add(time.Hour)})
	check(book, "after a newer record")
	if err := book.SetMember(ctx, a, true); err != nil {
		t.Fatal(err)
	}
	book.learn(membership.Record{Peer: a, Network: "net", Name: "a", Expires: later.Add(2 * time.Hour)})
	if !book.IsMember(a) || book.refused(a) {
		t.Fatal("a added again is no member")
	}
	done()
	book, _ = diskBook(t, dir, cfg, self)
	if !book.IsMember(a) {
		t.Fatal("a added again is no member after a restart")
	}
	states := book.MemberStates()
	if len(states) != 3 || states[slices.IndexFunc(states, func(s MemberState) bool { return s.Peer == a })].State != "member" {
		t.Fatalf("member states %+v", states)
	}
	if rv := newBook(t, Config{Name: "m", Network: "net", Reviewer: b}, self); !errors.Is(rv.SetMember(ctx, b, false), ErrMemberReviewer) {
		t.Fatal("the reviewer was removed")
	}
}

// A member that the config's `members` stops listing is recorded as
// removed by the config at the next start (its rows close with that
// reason); listed again, it is a member again. `members add` lets in a
// peer the list does not name.
func TestMemberRemovedFromTheConfig(t *testing.T) {
	dir := t.TempDir()
	self, a, b, c := newID(t), newID(t), newID(t), newID(t)
	cfg := Config{Name: "self", Network: "net", Reviewer: self, Members: []peer.ID{a, b}}
	book, done := diskBook(t, dir, cfg, self)
	later := time.Now().Add(time.Hour)
	book.learn(membership.Record{Peer: a, Network: "net", Name: "a", Expires: later})
	book.learn(membership.Record{Peer: b, Network: "net", Name: "b", Expires: later})
	// The peer book is written lazily: wait for b's entry on disk.
	wait.For(t, 10*time.Second, "the peer book on disk", func() bool {
		e, err := book.st.Peer(b)
		return err == nil && e.Member
	})
	done()
	cfg.Members = []peer.ID{a}
	book, done = diskBook(t, dir, cfg, self)
	d, ok := book.Left(b)
	if book.IsMember(b) || !ok || d.Why != RemovedByConfig || !strings.HasPrefix(d.Reason, "member removed: not in `members` of the config since ") {
		t.Fatalf("b outside members: member %v, Left %+v %v", book.IsMember(b), d, ok)
	}
	if err := book.SetMember(context.Background(), c, true); err != nil {
		t.Fatal(err)
	}
	book.learn(membership.Record{Peer: c, Network: "net", Name: "c", Expires: later})
	if !book.IsMember(c) {
		t.Fatal("c, added by the operator, is no member")
	}
	done()
	cfg.Members = []peer.ID{a, b}
	book, _ = diskBook(t, dir, cfg, self)
	if !book.IsMember(b) || !book.IsMember(c) {
		t.Fatalf("listed again: b member %v; added: c member %v", book.IsMember(b), book.IsMember(c))
	}
	if _, ok := book.Left(b); ok {
		t.Fatal("b listed again still counts as removed")
	}
}

// Members met before records had a lifetime get one from the start that
// finds them undated, kept in the store.
func TestUndatedMembersGetALifetime(t *testing.T) {
	dir := t.TempDir()
	self, a := newID(t), newID(t)
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(context.Background(), func(tx *store.Txn) error {
		tx.PutPeer(&storepb.Peer{Id: []byte(a), Name: "a", Network: "net", Member: true})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	start := time.Now()
	book, _ := diskBook(t, dir, Config{Name: "self", Network: "net", Lifetime: time.Hour}, self)
	e, ok := book.Entry(a)
	if !ok || e.ExpiresAt < start.Add(time.Hour).UnixNano() || e.ExpiresAt > time.Now().Add(time.Hour).UnixNano() || !book.IsMember(a) {
		t.Fatalf("entry %+v, member %v: want an expiry an hour after the start", e, book.IsMember(a))
	}
	if d, err := book.st.Peer(a); err != nil || d.ExpiresAt != e.ExpiresAt {
		t.Fatalf("on disk %+v, %v", d, err)
	}
}

package peers

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/ferrynet/ferry/membership"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

func newID(t *testing.T) peer.ID {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	return id
}

func newBook(t *testing.T, c Config, self peer.ID) *Book {
	t.Helper()
	st, err := store.Open("mem", store.Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	book, err := NewBook(BookDeps{Config: c, Self: self, Store: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return book
}

// The member list is kept between calls (trim and discovery ask for it
// often) and made again when a record makes or unmakes a member, or a
// partner is added or removed.
func TestMemberListFollowsRecordsAndPartners(t *testing.T) {
	self, a, b, c := newID(t), newID(t), newID(t), newID(t)
	book := newBook(t, Config{Name: "self", Network: "net"}, self)
	want := func(ids ...peer.ID) {
		t.Helper()
		slices.Sort(ids)
		if got := book.Members(); !slices.Equal(got, ids) || book.MemberCount() != len(ids) {
			t.Fatalf("members %v (count %d), want %v", got, book.MemberCount(), ids)
		}
	}
	want()
	book.learn(membership.Record{Peer: a, Network: "net", Name: "a"})
	want(a)
	book.learn(membership.Record{Peer: b, Network: "other", Name: "b"}) // not of this network
	want(a)
	book.learn(membership.Record{Peer: b, Network: "net", Name: "b"})
	want(a, b)
	book.Members()[0] = c // a caller's copy: the list stays
	want(a, b)
	if err := book.SetPartner(context.Background(), c, true); err != nil {
		t.Fatal(err)
	}
	want(a, b, c)
	book.learn(membership.Record{Peer: a, Network: "other", Name: "a"}) // a left for another network
	want(b, c)
	if err := book.SetPartner(context.Background(), c, false); err != nil {
		t.Fatal(err)
	}
	want(b)
}

// Who may open a delivery stream, and who receives a lane's broadcast
// entries, follow the roles: resources, considers and planner entries
// between partners; review requests and decisions between members; the
// decision lane only from the reviewer.
func TestRolesAdmitAndReceive(t *testing.T) {
	self, partner, member, stranger := newID(t), newID(t), newID(t), newID(t)
	book := newBook(t, Config{Name: "self", Network: "net", Reviewer: self, Partners: []peer.ID{partner}}, self)
	book.learn(membership.Record{Peer: member, Network: "net", Name: "m"})
	gate := NewGate(GateDeps{Book: book})
	for _, c := range []struct {
		p    peer.ID
		id   protocol.ID
		want bool
	}{
		{partner, protocols.ResourceCreate, true},
		{partner, protocols.ResourceConsider, true},
		{partner, protocols.Planner, true},
		{member, protocols.ResourceCreate, true}, // the service checks the kind (kindMux.Admit)
		{member, protocols.ResourceConsider, false},
		{member, protocols.Planner, false},
		{stranger, protocols.ResourceCreate, false},
	} {
		if got := gate.AdmitDelivery(c.p, c.id); got != c.want {
			t.Errorf("AdmitDelivery(%s, %s) = %v, want %v", book.Name(c.p), c.id, got, c.want)
		}
	}
	if !book.Receives(partner, stream.LaneResource) || book.Receives(member, stream.LaneResource) {
		t.Errorf("resource lane: partner %v, member %v", book.Receives(partner, stream.LaneResource), book.Receives(member, stream.LaneResource))
	}
	if got := book.Receivers(stream.LaneDecision); !slices.Equal(got, book.Members()) || len(got) != 2 {
		t.Errorf("decision lane receivers %v, want the members %v", got, book.Members())
	}
	if book.Receives(self, stream.LaneDecision) || book.Receives(stranger, stream.LaneDecision) {
		t.Error("the reviewer itself or a stranger receives decisions")
	}
}

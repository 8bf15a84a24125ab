package node

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/membership"
	"github.com/ferrynet/ferry/store"
)

// The member list is kept between calls (trim and discovery ask for it
// often) and made again when a record makes or unmakes a member, or a
// partner is added or removed.
func TestMemberListFollowsRecordsAndPartners(t *testing.T) {
	key := func() peer.ID {
		k, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := peer.IDFromPrivateKey(k)
		return id
	}
	self, a, b, c := key(), key(), key(), key()
	st, err := store.Open("mem", store.Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	cfg := Default()
	cfg.Name, cfg.Network = "self", "net"
	book, err := newPeerBook(cfg, self, st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
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

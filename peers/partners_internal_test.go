package peers

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ferrynet/ferry/store"
)

// A partners entry or `ferry partners add` argument is a peer id or a
// multiaddr ending in /p2p/<peer id>; anything else is refused, naming both
// forms.
func TestParsePartner(t *testing.T) {
	id := newID(t)
	for _, c := range []struct {
		in    string
		addrs int
		bad   bool
	}{
		{in: id.String()},
		{in: " " + id.String() + " "},
		{in: "/ip4/127.0.0.1/tcp/4101/p2p/" + id.String(), addrs: 1},
		{in: "/p2p/" + id.String()},
		{in: "/ip4/127.0.0.1/tcp/4101", bad: true}, // no peer id
		{in: "/ip4/127.0.0.1/tcp/4101/p2p/12D3KooWbad", bad: true},
		{in: "12D3KooWbad", bad: true},
		{in: "", bad: true},
	} {
		ai, err := ParsePartner(c.in)
		if c.bad {
			if err == nil || !strings.Contains(err.Error(), "neither a peer id nor a multiaddr ending in /p2p/<peer id>") {
				t.Errorf("ParsePartner(%q) = %v, %v; want the error naming both forms", c.in, ai, err)
			}
			continue
		}
		if err != nil || ai.ID != id || len(ai.Addrs) != c.addrs {
			t.Errorf("ParsePartner(%q) = %v, %v; want %s with %d address(es)", c.in, ai, err, id, c.addrs)
		}
	}
}

// Addresses given with partners (config, operator) are kept across
// restarts; a partner removed forgets the operator's.
func TestPartnerAddrsKept(t *testing.T) {
	self, a, b := newID(t), newID(t), newID(t)
	st, err := store.Open("mem", store.Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	aAddr := ma.StringCast("/ip4/127.0.0.1/tcp/4101")
	bAddr := ma.StringCast("/ip4/127.0.0.1/tcp/4102")
	bAddr2 := ma.StringCast("/dns4/b.example/tcp/4102")
	cfg := Config{Name: "self", Network: "net", Partners: []peer.ID{a}, PartnerAddrs: map[peer.ID][]ma.Multiaddr{a: {aAddr}}}
	open := func() *Book {
		t.Helper()
		book, err := NewBook(BookDeps{Config: cfg, Self: self, Store: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return book
	}
	book := open()
	ctx := context.Background()
	if err := book.SetPartner(ctx, b, true, bAddr); err != nil {
		t.Fatal(err)
	}
	if err := book.SetPartner(ctx, b, true); err != nil { // again, without an address: the kept one stays
		t.Fatal(err)
	}
	if err := book.SetPartner(ctx, b, true, bAddr2, bAddr); err != nil { // a second address joins the first
		t.Fatal(err)
	}
	got := open().PartnerAddrs() // as after a restart
	if len(got) != 2 || len(got[a]) != 1 || !got[a][0].Equal(aAddr) || len(got[b]) != 2 || !got[b][0].Equal(bAddr) || !got[b][1].Equal(bAddr2) {
		t.Fatalf("partner addresses after a restart: %v; want %s: [%s], %s: [%s %s]", got, a, aAddr, b, bAddr, bAddr2)
	}
	if err := book.SetPartner(ctx, b, false); err != nil {
		t.Fatal(err)
	}
	if err := book.SetPartner(ctx, a, false); err != nil {
		t.Fatal(err)
	}
	if got := open().PartnerAddrs(); len(got) != 0 {
		t.Fatalf("removed partners keep addresses: %v", got)
	}
}

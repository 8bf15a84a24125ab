package admin

import (
	"context"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

type oneName struct{ p peer.ID }

func (n oneName) Name(p peer.ID) string {
	if p == n.p {
		return "partner-b"
	}
	return ""
}

// TestAppliedIsNamedWhenRead: an applied change's event names its sender
// and origin, filled in when a watcher reads the kept events (not when it
// is applied, unwatched), with the resource's id.
func TestAppliedIsNamedWhenRead(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	from := peer.ID("\x00\x05hello") // an identity multihash: prints as base58
	f := NewFeed(FeedDeps{Store: st, Names: oneName{from}})
	in := &stream.Inbound{From: from, Origin: from, Body: &pb.Body{Origin: []byte(from), OriginVersion: 7,
		Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "doc", Payload: []byte(`{"id":"r1"}`)}}
	if err := st.Update(context.Background(), func(tx *store.Txn) error { f.Applied(tx, in); return nil }); err != nil {
		t.Fatal(err)
	}
	w, recent := f.hub.watch()
	defer f.hub.unwatch(w)
	if len(recent) != 1 {
		t.Fatalf("%d events kept, want 1", len(recent))
	}
	e := recent[0]
	if e.Type != EventApplied || e.Peer != "partner-b" || e.PeerID != from.String() || e.Origin != from.String() ||
		e.OriginVersion != 7 || e.Detail != "create doc r1" {
		t.Fatalf("applied event %+v", e)
	}
}

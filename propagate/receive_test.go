package propagate

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// testService is a Service on a store in t.TempDir() (closed at the end),
// this node holding key 1 and its partner key 2.
func testService(t *testing.T) (*Service, *store.Store, peer.ID) {
	t.Helper()
	key, self := fixedKey(t, 1)
	_, partner := fixedKey(t, 2)
	quiet := slog.New(slog.DiscardHandler)
	st, err := store.Open(t.TempDir(), store.Options{Signer: key, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	svc, err := New(Deps{Store: st, Roles: fuzzRoles{self: self, partner: partner}, Streams: &fuzzSender{},
		Publisher: &fuzzPublisher{}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return svc, st, partner
}

// A partner's second create of one resource is refused at once, from the
// filter of held resources (no restart to load it from the rows), while a
// create of a new id needs no read.
func TestAPartnersSecondCreateIsRefused(t *testing.T) {
	svc, st, partner := testService(t)
	t.Cleanup(svc.Close)
	creator := partner.String()
	var prev uint64
	apply := func(ver uint64, id string) error {
		body := &pb.Body{Origin: []byte(partner), OriginVersion: ver, PrevVersion: prev, Kind: pb.Kind_KIND_RESOURCE_CREATE,
			DataType: "vm", Payload: []byte(`{"id":"` + id + `","creator_id":"` + creator + `"}`)}
		prev = ver
		return st.Update(context.Background(), func(tx *store.Txn) error {
			_, err := svc.Apply(tx, &stream.Inbound{From: partner, Origin: partner, Body: body, Raw: []byte("envelope"), Hash: ver})
			return err
		})
	}
	if err := apply(10, "vm1"); err != nil {
		t.Fatal(err)
	}
	var rej *stream.RejectError
	if err := apply(20, "vm1"); !errors.As(err, &rej) {
		t.Fatalf("a second create of vm1 was answered %v, want a refusal", err)
	}
	if err := apply(30, "vm2"); err != nil {
		t.Fatalf("a create of a new id: %v", err)
	}
	r, err := st.Resource("vm", partner, "vm1")
	if err != nil || r.OriginVersion != 10 {
		t.Fatalf("vm1's row: %+v %v, want the first create's", r, err)
	}
}

package store

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/cockroachdb/pebble"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store/storepb"
)

// TestMigrateSchema1: a store written by schema 1 (a delivery row per change
// and receiver, link sequence numbers) opens as schema 2 with the same
// deliveries owed: delivery records, ack floors, refusals, positions and
// hashes, and no schema-1 keys left.
func TestMigrateSchema1(t *testing.T) {
	selfKey, self := newKey(t)
	_, b := newKey(t)
	_, r := newKey(t)
	senderKey, sender := newKey(t)
	dir := t.TempDir()
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	set := func(key, v []byte) {
		t.Helper()
		if err := db.Set(key, v, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	set([]byte(keySchema), u64Value(1))
	set([]byte(keyEpoch), u64Value(77))
	rr, _ := proto.Marshal(&pb.ReviewRequest{RequestId: 9, TableId: 1, TableName: "tb", Type: "insert", Data: []byte(`{}`)})
	own := []*pb.Body{
		{Origin: []byte(self), OriginVersion: 1, Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "vm", Payload: []byte(`{"id":"a"}`)},
		{Origin: []byte(self), OriginVersion: 2, Kind: pb.Kind_KIND_RESOURCE_UPDATE, DataType: "vm", Payload: []byte(`{"id":"a","v":2}`)},
		{Origin: []byte(self), OriginVersion: 3, Kind: pb.Kind_KIND_CONSIDERS, DataType: "vm", Payload: []byte(`{}`)},
		{Origin: []byte(self), OriginVersion: 4, Kind: pb.Kind_KIND_REVIEW_REQUEST, DataType: "tb", Payload: rr, To: []byte(r)},
	}
	var raw [][]byte
	for _, body := range own {
		bb, _ := proto.Marshal(body)
		raw = append(raw, bb)
	}
	envs, err := protocols.Seal(selfKey, raw)
	if err != nil {
		t.Fatal(err)
	}
	for i, env := range envs {
		v := uint64(i + 1)
		eb, _ := proto.Marshal(env)
		set(k(pChange).u64(v), eb)
		set(k(pOrigin).bytes([]byte(self)).u64(v), append(u64Value(v), byte(own[i].Kind)))
	}
	// A change received from another origin: its version 7, here at 5.
	sb, _ := proto.Marshal(&pb.Body{Origin: []byte(sender), OriginVersion: 7, Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "vm",
		Payload: []byte(`{"id":"s"}`)})
	senv, _ := protocols.Seal(senderKey, [][]byte{sb})
	seb, _ := proto.Marshal(senv[0])
	set(k(pChange).u64(5), seb)
	set(k(pOrigin).bytes([]byte(sender)).u64(7), append(u64Value(5), byte(pb.Kind_KIND_RESOURCE_CREATE)))
	set(k(keyCtrPrefix).str(CtrVersion), u64Value(5))
	rows := []*storepb.Delivery{
		{Id: 1, Receiver: []byte(b), Lane: laneResource, ChangeVersion: 1, State: storepb.Delivery_STATE_SENDED, AckedAt: 11},
		{Id: 2, Receiver: []byte(b), Lane: laneResource, ChangeVersion: 2, State: storepb.Delivery_STATE_PENDING},
		{Id: 3, Receiver: []byte(b), Lane: laneConsider, ChangeVersion: 3, State: storepb.Delivery_STATE_REJECTED, Error: "no"},
		{Id: 4, Receiver: []byte(r), Lane: laneRequest, ChangeVersion: 4, State: storepb.Delivery_STATE_SENDED, RequestId: 9},
	}
	for _, d := range rows {
		set(k(pDeliveryV1).u64(d.Id), marshal(d))
		set(k(pPendingV1).bytes(d.Receiver).u8(byte(d.Lane)).u64(d.Id), u64Value(d.Id))
	}
	set(k(pLinkOutV1).bytes([]byte(b)).u8(laneResource), u64Value(2))
	set(k(pLinkInV1).str(string(sender)).u8(laneResource), marshal(&storepb.LinkState{Epoch: 5, LastSeq: 3}))
	set(k(pDecision).u64(1), u64Value(2))
	// Resource a's current row is its update (version 2).
	set(resourceKey("vm", []byte(self), "a"), marshal(&storepb.Resource{DataType: "vm", Id: "a", Creator: []byte(self), OriginVersion: 2, Version: 2}))
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := open(t, dir, selfKey)
	if v, _ := s.getRaw([]byte(keySchema)); parseU64(v) != SchemaVersion || s.Epoch() != 77 {
		t.Fatalf("schema %d, epoch %d", parseU64(v), s.Epoch())
	}
	fs, _ := s.Floors()
	want := map[FloorKey]uint64{{b, laneResource}: 1, {b, laneConsider}: 3, {r, laneRequest}: 4}
	if len(fs) != len(want) {
		t.Fatalf("floors %v", fs)
	}
	for k, v := range want {
		if fs[k] == nil || fs[k].Version != v {
			t.Fatalf("floor of %v: %v, want %d", k, fs[k], v)
		}
	}
	if ref, _ := s.Refusals(b); ref[3] != "no" {
		t.Fatalf("refusals %v", ref)
	}
	es, err := s.Backlog(b, laneResource, true, fs[FloorKey{b, laneResource}].Version, 10, 1<<20)
	if err != nil || len(es) != 1 || es[0].Version != 2 || es[0].Protocol != protocols.ResourceUpdate {
		t.Fatalf("B's resource backlog %+v %v", es, err)
	}
	if e, err := s.OwnEntry(3); err != nil || len(e.To) != 1 || e.To[0] != b || e.Lane != laneConsider {
		t.Fatalf("considers record %+v %v", e, err)
	}
	if e, err := s.OwnEntry(4); err != nil || len(e.To) != 1 || e.To[0] != r || e.RequestID != 9 || e.Protocol != protocols.ResourceCreate {
		t.Fatalf("request record %+v %v", e, err)
	}
	superseded := map[uint64]bool{}
	if err := s.OwnEntriesFrom(0, func(e OwnEntry) bool { superseded[e.Version] = e.Superseded; return true }); err != nil {
		t.Fatal(err)
	}
	if !superseded[1] || superseded[2] || superseded[3] || superseded[4] {
		t.Fatalf("superseded marks %v: want only the create that the update replaced", superseded)
	}
	if _, err := s.OwnEntry(5); err == nil {
		t.Fatal("a received change got a delivery record")
	}
	if p, _ := s.Position(sender, laneResource); p.Epoch != 5 || p.Version != 7 {
		t.Fatalf("position of the sender's resource lane: %v", p)
	}
	if e, err := s.OriginEntry(self, 2); err != nil || e.Hash != BodyHash(envs[1].Body) || e.LocalVersion != 2 {
		t.Fatalf("origin entry %+v %v", e, err)
	}
	v, _ := s.getRaw(k(pDecision).u64(1))
	if len(v) != 16 || binary.BigEndian.Uint64(v[8:]) != BodyHash(envs[1].Body) {
		t.Fatalf("decision record %x", v)
	}
	for _, p := range []string{pDeliveryV1, pPendingV1, pLinkOutV1, pLinkInV1} {
		_ = s.scan([]byte(p), prefixEnd([]byte(p)), false, func(key, _ []byte) (bool, error) {
			if bytes.HasPrefix(key, []byte(p)) {
				t.Fatalf("schema-1 key %q left", key)
			}
			return true, nil
		})
	}
}

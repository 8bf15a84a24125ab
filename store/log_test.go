package store

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store/storepb"
)

// A store copied back from an older backup gives versions above every
// version it gave before, because versions never fall below the clock.
func TestVersionsNeverRepeatAfterARestore(t *testing.T) {
	key, id := newKey(t)
	clock := time.Unix(1_800_000_000, 0)
	s, err := Open(t.TempDir(), Options{Signer: key, InMemory: true, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendOne := func() uint64 {
		var ver uint64
		if err := s.Update(context.Background(), func(tx *Txn) error {
			var err error
			ver, _, err = tx.AppendOwn(&pb.Body{Origin: []byte(id), Kind: pb.Kind_KIND_RESOURCE_CREATE})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return ver
	}
	v1 := appendOne()
	if want := uint64(clock.UnixMicro()); v1 != want {
		t.Fatalf("first version %d, want the clock %d", v1, want)
	}
	v2 := appendOne() // same clock reading: one more
	if v2 != v1+1 {
		t.Fatalf("second version %d after %d", v2, v1)
	}
	// "Restore" the counter to before v1 (as an older copy would hold it),
	// a second later: the next version is above both.
	if err := s.Update(context.Background(), func(tx *Txn) error { tx.SetCounter(CtrVersion, 0); return nil }); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(time.Second)
	if v3 := appendOne(); v3 <= v2 {
		t.Fatalf("version %d after a restore repeats one given before (%d)", v3, v2)
	}
	// A peer that holds more raises the counter.
	if err := s.Update(context.Background(), func(tx *Txn) error { return tx.RaiseVersion(v2 + 10_000_000) }); err != nil {
		t.Fatal(err)
	}
	if v4 := appendOne(); v4 != v2+10_000_001 {
		t.Fatalf("version after RaiseVersion: %d", v4)
	}
}

func TestBacklogMergesBroadcastAndAddressedEntries(t *testing.T) {
	key, self := newKey(t)
	_, a := newKey(t)
	_, b := newKey(t)
	s, err := Open("mem", Options{Signer: key, InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const laneR, laneC = 1, 2
	var vers []uint64
	add := func(lane uint8, kind pb.Kind, proto string, to ...peer.ID) {
		t.Helper()
		if err := s.Update(context.Background(), func(tx *Txn) error {
			ver, _, err := tx.AppendOwn(&pb.Body{Origin: []byte(self), Kind: kind, Payload: []byte(`{}`)})
			if err != nil {
				return err
			}
			tx.AddOwnEntry(OwnEntry{Version: ver, Lane: lane, Kind: kind, Protocol: protocols.DeliveryProtocols[0], RequestID: 7, To: to}, nil)
			vers = append(vers, ver)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	add(laneR, pb.Kind_KIND_RESOURCE_CREATE, "") // 0: broadcast
	add(laneC, pb.Kind_KIND_CONSIDERS, "", a)    // 1: to a
	add(laneR, pb.Kind_KIND_RESOURCE_CREATE, "") // 2: broadcast
	add(laneC, pb.Kind_KIND_CONSIDERS, "", a, b) // 3: to a and b
	add(laneC, pb.Kind_KIND_CONSIDERS, "", b)    // 4: to b
	add(laneR, pb.Kind_KIND_RESOURCE_CREATE, "") // 5: broadcast
	versions := func(es []Entry) []uint64 {
		var out []uint64
		for _, e := range es {
			if len(e.Env) == 0 {
				t.Fatalf("entry %d without its envelope", e.Version)
			}
			out = append(out, e.Version)
		}
		return out
	}
	eq := func(what string, got []uint64, want ...uint64) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: got %v, want %v", what, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: got %v, want %v", what, got, want)
			}
		}
	}
	es, err := s.Backlog(a, laneR, true, 0, 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	eq("resource lane of a partner", versions(es), vers[0], vers[2], vers[5])
	es, _ = s.Backlog(a, laneR, true, vers[2], 100, 1<<20)
	eq("resource lane after the second", versions(es), vers[5])
	es, _ = s.Backlog(a, laneR, false, 0, 100, 1<<20)
	eq("resource lane of a non-partner", versions(es))
	es, _ = s.Backlog(a, laneC, false, 0, 100, 1<<20)
	eq("considers of a", versions(es), vers[1], vers[3])
	es, _ = s.Backlog(b, laneC, false, vers[3], 100, 1<<20)
	eq("considers of b after the shared one", versions(es), vers[4])
	es, _ = s.Backlog(a, laneR, true, 0, 2, 1<<20)
	eq("two at most", versions(es), vers[0], vers[2])
	es, _ = s.Backlog(a, laneR, true, 0, 100, 1)
	eq("one entry at least, whatever the bytes", versions(es), vers[0])
	if n, first, _ := s.BacklogCount(b, laneC, false, 0, 100); n != 2 || first != vers[3] {
		t.Fatalf("count of b's considers: %d from %d", n, first)
	}
	if h, _ := s.LaneHead(a, laneR, true); h != vers[5] {
		t.Fatalf("resource head %d", h)
	}
	if h, _ := s.LaneHead(a, laneC, false); h != vers[3] {
		t.Fatalf("a's considers head %d", h)
	}
	if rs, _ := s.AddressedReceivers(); len(rs) != 2 {
		t.Fatalf("addressed receivers %v", rs)
	}
	var listed []uint64
	_ = s.OwnEntries(0, func(e OwnEntry) bool {
		listed = append(listed, e.Version)
		if e.RequestID != 7 || e.Protocol != protocols.DeliveryProtocols[0] || e.CreatedAt == 0 {
			t.Fatalf("entry %+v", e)
		}
		return true
	})
	eq("own entries newest first", listed, vers[5], vers[4], vers[3], vers[2], vers[1], vers[0])
	listed = nil
	_ = s.OwnEntries(vers[3], func(e OwnEntry) bool { listed = append(listed, e.Version); return true })
	eq("own entries before the fourth", listed, vers[2], vers[1], vers[0])
	if e, _ := s.OwnEntry(vers[3]); len(e.To) != 2 || e.To[0] != a || e.To[1] != b {
		t.Fatalf("addressees %v", e.To)
	}

	// Floors, refusals and positions round-trip.
	err = s.Update(context.Background(), func(tx *Txn) error {
		tx.SetFloor(a, laneR, &storepb.Floor{Version: vers[2], AckedAt: 5})
		tx.SetRefused(a, vers[1], "no")
		tx.SetPosition(b, laneC, &storepb.Position{Epoch: 9, Version: 42})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fs, _ := s.Floors()
	if f := fs[FloorKey{Receiver: a, Lane: laneR}]; len(fs) != 1 || f.Version != vers[2] || f.AckedAt != 5 {
		t.Fatalf("floors %v", fs)
	}
	if r, _ := s.Refusals(a); r[vers[1]] != "no" {
		t.Fatalf("refusals %v", r)
	}
	if p, _ := s.Position(b, laneC); p.Epoch != 9 || p.Version != 42 {
		t.Fatalf("position %v", p)
	}
	if p, _ := s.Position(a, laneC); p.Version != 0 {
		t.Fatalf("unknown position %v", p)
	}
}

// TestFollowHearsCommittedOwnEntries: followers hear each own entry once its
// commit is on disk, in commit order, with its sealed envelope; an entry
// rolled back to a savepoint or in a failed transaction is never heard of.
func TestFollowHearsCommittedOwnEntries(t *testing.T) {
	key, self := newKey(t)
	s, err := Open("mem", Options{Signer: key, InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var mu sync.Mutex
	var heard [2][]OwnEntry
	for i := range heard {
		s.Follow(func(e OwnEntry) {
			if durable := s.DurableVersion(); e.Version > durable {
				t.Errorf("follower %d heard of %d before it was durable (%d)", i, e.Version, durable)
			}
			mu.Lock()
			heard[i] = append(heard[i], e)
			mu.Unlock()
		})
	}
	add := func(tx *Txn, sealedEnv bool) (uint64, error) {
		ver, sealed, err := tx.AppendOwn(&pb.Body{Origin: []byte(self), Kind: pb.Kind_KIND_RESOURCE_CREATE, Payload: []byte(`{}`)})
		if err != nil {
			return 0, err
		}
		if !sealedEnv {
			sealed = nil
		}
		tx.AddOwnEntry(OwnEntry{Version: ver, Lane: 1, Kind: pb.Kind_KIND_RESOURCE_CREATE, Protocol: protocols.DeliveryProtocols[0]}, sealed)
		return ver, nil
	}
	var want []uint64
	if err := s.Update(context.Background(), func(tx *Txn) error {
		v, err := add(tx, true)
		want = append(want, v)
		sp := tx.Savepoint()
		if _, err := add(tx, true); err != nil {
			return err
		}
		tx.RollbackTo(sp) // forgotten with its announcement
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(context.Background(), func(tx *Txn) error {
		if _, err := add(tx, true); err != nil {
			return err
		}
		return errors.New("refused") // nothing of it is written or heard
	}); err == nil {
		t.Fatal("a failed transaction committed")
	}
	if err := s.Update(context.Background(), func(tx *Txn) error {
		for _, sealed := range []bool{true, false} {
			v, err := add(tx, sealed)
			if err != nil {
				return err
			}
			want = append(want, v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, es := range heard {
		var got []uint64
		for _, e := range es {
			got = append(got, e.Version)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("follower %d heard %v, want %v", i, got, want)
		}
		for j, e := range es[:2] {
			env, err := s.ChangeEnvelope(e.Version)
			if err != nil || !bytes.Equal(e.Envelope(), env) || e.EnvelopeSize() != len(env) {
				t.Fatalf("follower %d: entry %d's envelope is not the stored one (err %v)", i, j, err)
			}
		}
		if es[2].Envelope() != nil {
			t.Fatalf("follower %d: an entry added without its seal came with an envelope", i)
		}
	}
}

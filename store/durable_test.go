package store

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ferrynet/ferry/protocols/pb"
)

// TestLogBodies: the bodies after a version, in order, up to the durable
// end; an own change whose kind skipOwn skips comes with a nil body, its
// kind read from the record (stored whole or stripped) without decoding.
func TestLogBodies(t *testing.T) {
	key, self := newKey(t)
	s, err := Open(filepath.Join(t.TempDir(), "data"), Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	kinds := []pb.Kind{pb.Kind_KIND_RESOURCE_CREATE, pb.Kind_KIND_CONSIDERS, pb.Kind_KIND_REVIEW_DECISION, pb.Kind_KIND_PLANNER}
	var vers []uint64
	if err := s.Update(context.Background(), func(tx *Txn) error {
		for i := range 40 {
			v, _, err := tx.AppendOwn(&pb.Body{Origin: []byte(self), Kind: kinds[i%len(kinds)], DataType: "t",
				Payload: fmt.Appendf(nil, `{"i":%d}`, i), To: []byte("x")})
			if err != nil {
				return err
			}
			vers = append(vers, v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Every record's kind, read without decoding, is the body's.
	var got []uint64
	skipped := 0
	if err := s.LogBodies(vers[4], 100, nil, func(k pb.Kind) bool { return k != pb.Kind_KIND_REVIEW_DECISION },
		func(v uint64, b *pb.Body) bool {
			got = append(got, v)
			i := len(got) + 4
			want := kinds[i%len(kinds)]
			switch {
			case b == nil && want == pb.Kind_KIND_REVIEW_DECISION:
				t.Fatalf("change %d (%s) skipped", v, want)
			case b == nil:
				skipped++
			case b.Kind != want || want != pb.Kind_KIND_REVIEW_DECISION:
				t.Fatalf("change %d: body of kind %s given, want %s (and only decisions decoded)", v, b.Kind, want)
			}
			return true
		}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 35 || got[0] != vers[5] || got[34] != vers[39] || skipped != 26 {
		t.Fatalf("read %d changes (%v..), %d skipped; want 35 from %d, 26 skipped", len(got), got[:1], skipped, vers[5])
	}
	// A version the caller knows comes without its body, whatever its kind.
	var known, decoded []uint64
	if err := s.LogBodies(vers[9], 6, func(v uint64) bool { return v == vers[10] || v == vers[14] }, nil,
		func(v uint64, b *pb.Body) bool {
			if b == nil {
				known = append(known, v)
			} else {
				decoded = append(decoded, v)
			}
			return true
		}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(known, []uint64{vers[10], vers[14]}) || !slices.Equal(decoded, []uint64{vers[11], vers[12], vers[13], vers[15]}) {
		t.Fatalf("known %v, decoded %v; want %v and %v", known, decoded, []uint64{vers[10], vers[14]}, []uint64{vers[11], vers[12], vers[13], vers[15]})
	}
	// max bounds what is read; nothing after the durable end.
	n := 0
	if err := s.LogBodies(0, 7, nil, nil, func(uint64, *pb.Body) bool { n++; return true }); err != nil || n != 7 {
		t.Fatalf("max 7: read %d (%v)", n, err)
	}
	if err := s.LogBodies(vers[39], 10, nil, nil, func(uint64, *pb.Body) bool { t.Fatal("read past the end"); return true }); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		d    []byte
		kind pb.Kind
		ok   bool
	}{
		{s.ownRecord(7, 7, 0, 1, nil, []byte{0x0a, 1, 'a', 0x10, 7, 0x18, 5}), 5, true}, // stored whole
		{[]byte{0, 0, 0, 1, 0, 0x18, 9}, 9, true},                                       // stripped: the kind first
		{[]byte{0, 0, 0, 1, 0, 0x22, 1, 't'}, 0, false},                                 // no kind
		{[]byte{0, 0, 0, 1, 9}, 0, false},                                               // a signature past the end
	} {
		if k, ok := ownRecordKind(r.d); k != r.kind || ok != r.ok {
			t.Errorf("ownRecordKind(%x) = %v %v, want %v %v", r.d, k, ok, r.kind, r.ok)
		}
	}
}

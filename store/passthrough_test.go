package store

import (
	"context"
	"testing"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// partOf is the part of a tree (its self-contained envelopes envs) that
// holds leaves idx, opened, as a receiver has it from a batch.
func partOf(t *testing.T, envs [][]byte, idx ...int) (*protocols.Part, *protocols.OpenedPart) {
	t.Helper()
	es := make([]*pb.Envelope, len(idx))
	p := &protocols.Part{}
	for i, x := range idx {
		es[i] = &pb.Envelope{}
		if err := unmarshal(envs[x], es[i]); err != nil {
			t.Fatal(err)
		}
		p.Size, p.Sig = es[i].TreeSize, es[i].RootSignature
		p.Index = append(p.Index, es[i].LeafIndex)
		p.Bodies = append(p.Bodies, es[i].Body)
	}
	proof, err := protocols.PartProofOf(p.Size, p.Index, func(i int) [][]byte { return es[i].Path })
	if err != nil {
		t.Fatal(err)
	}
	p.Proof = proof
	o, err := protocols.NewVerifier().OpenPart(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, o
}

// TestReceivedPartsPassedThrough: changes logged as leaves of the parts
// they came in (AppendReceivedPart) are stored as the part when every leaf
// of it is logged in the round (its proof as it came), as a part with a
// proof of its own when only some are (the others held already), and as
// their envelopes when a part has one leaf; each reads back as the
// envelope the origin sealed, byte for byte, before and after a reopen;
// the transaction that logged them reads their bodies.
func TestReceivedPartsPassedThrough(t *testing.T) {
	key, _ := newKey(t)
	okey, other := newKey(t)
	dir := t.TempDir()
	s, err := Open(dir, Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	a := receivedTree(t, okey, other, 100, 20, 256)
	b := receivedTree(t, okey, other, 200, 16, 256)
	c := receivedTree(t, okey, other, 300, 9, 256)
	pa, oa := partOf(t, a, span(3, 13, 1)...)  // logged whole
	pb_, ob := partOf(t, b, span(0, 16, 2)...) // the 1st, 3rd, ... logged: a part of its own
	pc, oc := partOf(t, c, 4)                  // one leaf
	got := map[uint64][]byte{}
	var byVer []uint64
	logPart := func(tx *Txn, p *protocols.Part, o *protocols.OpenedPart, i int, sealed []byte) error {
		v, err := tx.AppendReceivedPart(o.Bodies[i], HashOfLeaf(o.Leaves[i]), PartLeaf{Part: p, Opened: o, I: i})
		if err != nil {
			return err
		}
		got[v] = sealed
		byVer = append(byVer, v)
		return nil
	}
	if err := s.Update(context.Background(), func(tx *Txn) error {
		for i := range pa.Index {
			if err := logPart(tx, pa, oa, i, a[3+i]); err != nil {
				return err
			}
		}
		for i := 0; i < len(pb_.Index); i += 2 {
			if err := logPart(tx, pb_, ob, i, b[2*i]); err != nil {
				return err
			}
		}
		if err := logPart(tx, pc, oc, 0, c[4]); err != nil {
			return err
		}
		// The transaction reads the bodies of what it logged.
		for i, want := range map[int]uint64{0: 103, len(pa.Index): 200, len(byVer) - 1: 304} {
			body, err := tx.ChangeBody(byVer[i])
			if err != nil {
				return err
			}
			if body.OriginVersion != want {
				t.Errorf("body of change %d logged in the transaction: origin version %d, want %d", i, body.OriginVersion, want)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		types := logTypes(t, s)
		// a: 10 leaves as a part; b: 4 leaves, a part; c's lone leaf: an
		// envelope.
		if types[recPart] != 14 || types[recEnvelope] != 1 {
			t.Fatalf("%s: records by type %v; want 14 part records, 1 envelope", when, types)
		}
		readsBack(t, s, got, other, when)
	}
	check("open")
	_ = s.Close()
	if s, err = Open(dir, Options{Signer: key}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check("reopened")
}

package stream

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/internal/wiretest"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// TestCompactBatchesKeepSelfContainedEnvelopes: a tree cut across batches
// (250 leaves, 100 entries a batch) arrives compact, in parts; every change
// B keeps is the envelope A sealed, verifiable alone.
func TestCompactBatchesKeepSelfContainedEnvelopes(t *testing.T) {
	p := newPair(t, &recorder{})
	vers := p.commit(250, 250)
	wait.For(t, waitTimeout, "B applied 250", func() bool { return len(p.rec.versions()) >= len(vers) })
	exactlyOnce(t, p.rec.versions(), vers)
	v := protocols.NewVerifier()
	changes, err := p.b.st.Changes(0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != len(vers) {
		t.Fatalf("B holds %d changes, want %d", len(changes), len(vers))
	}
	for _, c := range changes {
		if _, origin, err := v.Open(c.Envelope); err != nil || origin != p.a.id {
			t.Fatalf("B's change %d: %v (origin %s)", c.Version, err, origin)
		}
		mine, err := p.a.st.ChangeEnvelope(c.Body.OriginVersion)
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := p.b.st.ChangeEnvelope(c.Version)
		if err != nil {
			t.Fatal(err)
		}
		if string(mine) != string(theirs) {
			t.Fatalf("B's change %d is not the envelope A sealed", c.Version)
		}
	}
}

// TestBadTreeProofsResetTheStream: every way a compact batch's proofs can
// fail resets the stream and applies nothing; the good batch is applied.
func TestBadTreeProofsResetTheStream(t *testing.T) {
	rec := &recorder{}
	p := newPair(t, rec)
	p.snd.Close() // the test speaks for A by hand
	bodies := make([][]byte, 10)
	for i := range bodies {
		b, err := proto.Marshal(&pb.Body{Origin: []byte(p.a.id), OriginVersion: uint64(i + 1), Kind: pb.Kind_KIND_RESOURCE_CREATE,
			DataType: "vm", Payload: []byte(fmt.Sprintf(`{"id":"r%d"}`, i))})
		if err != nil {
			t.Fatal(err)
		}
		bodies[i] = b
	}
	envs, err := protocols.Seal(p.a.key, bodies)
	if err != nil {
		t.Fatal(err)
	}
	raws := make([][]byte, 0, 6)
	for _, i := range []int{1, 2, 3, 6, 7, 9} { // a part of the tree: proofs needed
		raws = append(raws, protocols.MarshalEnvelope(envs[i]))
	}
	good := func() *pb.Batch {
		b := &pb.Batch{}
		if err := proto.Unmarshal(protocols.AppendCompact(nil, raws), b); err != nil {
			t.Fatal(err)
		}
		b.Epoch, b.Lane = p.a.st.Epoch(), uint32(LaneResource)
		return b
	}
	for name, spoil := range map[string]func(b *pb.Batch){
		"a proof hash changed":       func(b *pb.Batch) { b.Trees[0].Hashes[0][3] ^= 1 },
		"a proof hash missing":       func(b *pb.Batch) { b.Trees[0].Hashes = b.Trees[0].Hashes[1:] },
		"a proof hash too many":      func(b *pb.Batch) { b.Trees[0].Hashes = append(b.Trees[0].Hashes, make([]byte, 32)) },
		"a body changed":             func(b *pb.Batch) { b.Envelopes[2].Body = bodies[4] },
		"a tree that is not there":   func(b *pb.Batch) { b.Envelopes[0].Tree = 2 },
		"a tree proof nobody names":  func(b *pb.Batch) { b.Trees = append(b.Trees, b.Trees[0]) },
		"leaves out of order":        func(b *pb.Batch) { b.Envelopes[0], b.Envelopes[1] = b.Envelopes[1], b.Envelopes[0] },
		"compact and self-contained": func(b *pb.Batch) { b.Envelopes[0].RootSignature = b.Trees[0].RootSignature },
		"compact with a path":        func(b *pb.Batch) { b.Envelopes[1].Path = b.Trees[0].Hashes[:1] },
		"another tree size":          func(b *pb.Batch) { b.Trees[0].TreeSize = 11 },
		"a signature changed":        func(b *pb.Batch) { b.Trees[0].RootSignature[5] ^= 1 },
	} {
		b := good()
		spoil(b)
		frame, err := proto.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := wiretest.Send(p.a.host, p.b.id, protocols.ResourceCreate, frame); !errors.Is(err, wiretest.ErrReset) {
			t.Errorf("%s: %v, want the stream reset", name, err)
		}
	}
	if got := rec.versions(); len(got) != 0 {
		t.Fatalf("bad batches applied %v", got)
	}
	frame, err := proto.Marshal(good())
	if err != nil {
		t.Fatal(err)
	}
	_, answer, err := wiretest.Send(p.a.host, p.b.id, protocols.ResourceCreate, frame)
	if err != nil {
		t.Fatal(err)
	}
	if answer.Through != 10 {
		t.Fatalf("the good batch was answered through %d, want 10", answer.Through)
	}
	exactlyOnce(t, rec.versions(), []uint64{2, 3, 4, 7, 8, 10})
}

package protocols

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

// subsets yields the parts a test tries of a tree of n leaves: the whole
// tree, each single leaf of a few, ranges, and random sets.
func subsets(r *rand.Rand, n int) [][]uint32 {
	var out [][]uint32
	all := make([]uint32, n)
	for i := range all {
		all[i] = uint32(i)
	}
	out = append(out, all, []uint32{0}, []uint32{uint32(n - 1)}, all[n/2:], all[:max(1, n/3)])
	for range 6 {
		var s []uint32
		for i := range n {
			if r.IntN(3) == 0 {
				s = append(s, uint32(i))
			}
		}
		if len(s) == 0 {
			s = []uint32{uint32(r.IntN(n))}
		}
		out = append(out, s)
	}
	return out
}

func TestPartProofGivesTheRootAndThePaths(t *testing.T) {
	key, id := testKey(t)
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 31, 32, 33, 100, 511, 700, MaxTreeLeaves} {
		bs := bodies(t, id, n)
		envs, err := Seal(key, bs)
		if err != nil {
			t.Fatal(err)
		}
		for _, idx := range subsets(r, n) {
			paths := make([][][]byte, len(idx))
			leaves := make([][32]byte, len(idx))
			for i, x := range idx {
				paths[i] = envs[x].Path
				leaves[i] = LeafHash(bs[x])
			}
			proof, err := PartProof(uint32(n), idx, paths)
			if err != nil {
				t.Fatalf("n=%d %d leaves: %v", n, len(idx), err)
			}
			if len(idx) == n && len(proof) != 0 {
				t.Fatalf("n=%d: the whole tree needs %d proof hashes", n, len(proof))
			}
			_, got, err := PartRoot(uint32(n), idx, leaves, proof, true)
			if err != nil {
				t.Fatalf("n=%d %d leaves: %v", n, len(idx), err)
			}
			part := &Part{Size: uint32(n), Sig: envs[0].RootSignature, Proof: proof, Index: idx}
			for _, x := range idx {
				part.Bodies = append(part.Bodies, bs[x])
			}
			o, err := NewVerifier().OpenPart(part)
			if err != nil {
				t.Fatalf("n=%d %d leaves: %v", n, len(idx), err)
			}
			for i, x := range idx {
				if len(got[i]) != len(envs[x].Path) {
					t.Fatalf("n=%d leaf %d: path of %d, want %d", n, x, len(got[i]), len(envs[x].Path))
				}
				for j := range got[i] {
					if !bytes.Equal(got[i][j], envs[x].Path[j]) {
						t.Fatalf("n=%d leaf %d: path entry %d differs", n, x, j)
					}
				}
				if !bytes.Equal(MarshalEnvelope(part.Envelope(o, i)), MarshalEnvelope(envs[x])) {
					t.Fatalf("n=%d leaf %d: the rebuilt envelope differs from the sealed one", n, x)
				}
			}
		}
	}
}

func TestPartRefusesWhatDoesNotHold(t *testing.T) {
	key, id := testKey(t)
	other, _ := testKey(t)
	bs := bodies(t, id, 10)
	envs, err := Seal(key, bs)
	if err != nil {
		t.Fatal(err)
	}
	idx := []uint32{2, 3, 7}
	paths := [][][]byte{envs[2].Path, envs[3].Path, envs[7].Path}
	proof, err := PartProof(10, idx, paths)
	if err != nil {
		t.Fatal(err)
	}
	good := func() *Part {
		p := &Part{Size: 10, Sig: envs[0].RootSignature, Index: append([]uint32(nil), idx...)}
		for _, h := range proof {
			p.Proof = append(p.Proof, append([]byte(nil), h...))
		}
		for _, x := range idx {
			p.Bodies = append(p.Bodies, bs[x])
		}
		return p
	}
	if _, err := NewVerifier().OpenPart(good()); err != nil {
		t.Fatal(err)
	}
	otherSig, err := Seal(other, bodies(t, id, 10))
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]func(p *Part){
		"a body changed":        func(p *Part) { p.Bodies[1] = bs[4] },
		"a proof hash changed":  func(p *Part) { p.Proof[0][0] ^= 1 },
		"a proof hash missing":  func(p *Part) { p.Proof = p.Proof[1:] },
		"a proof hash too many": func(p *Part) { p.Proof = append(p.Proof, make([]byte, 32)) },
		"a short proof hash":    func(p *Part) { p.Proof[0] = p.Proof[0][:31] },
		"leaves out of order":   func(p *Part) { p.Index[0], p.Index[1] = p.Index[1], p.Index[0] },
		"a leaf twice":          func(p *Part) { p.Index[1] = p.Index[0] },
		"a leaf past the tree":  func(p *Part) { p.Index[2] = 10 },
		"another tree size":     func(p *Part) { p.Size = 11 },
		"a tree too large":      func(p *Part) { p.Size = MaxTreeLeaves + 1 },
		"another signer":        func(p *Part) { p.Sig = otherSig[0].RootSignature },
		"no leaves":             func(p *Part) { p.Index, p.Bodies = nil, nil },
		"two origins": func(p *Part) {
			_, id2 := testKey(t)
			p.Bodies[2] = bodies(t, id2, 1)[0]
		},
	} {
		p := good()
		bad(p)
		if _, err := NewVerifier().OpenPart(p); err == nil {
			t.Errorf("%s: opened", name)
		} else if !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrMalformedEnvelope) {
			t.Errorf("%s: %v is neither a bad signature nor a malformed envelope", name, err)
		}
	}
}

// TestAppendCompactRoundTrip encodes envelopes of several trees compact and
// reads them back as a receiver does: the same envelopes, byte for byte.
func TestAppendCompactRoundTrip(t *testing.T) {
	key, id := testKey(t)
	var envs [][]byte
	for _, n := range []int{5, 1, 1024, 3} {
		sealed, err := Seal(key, bodies(t, id, n))
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range sealed {
			if n == 1024 && i%3 == 1 {
				continue // part of a tree
			}
			envs = append(envs, MarshalEnvelope(e))
		}
	}
	frame := AppendCompact(nil, envs)
	shapes := make([]*EnvelopeShape, len(envs))
	for i, raw := range envs {
		if i%2 == 0 { // some parsed by the caller, some not
			s, _ := ParseEnvelope(raw, false)
			shapes[i] = &s
		}
	}
	if !bytes.Equal(AppendCompactShapes(nil, envs, shapes), frame) {
		t.Fatal("the frame built from parsed shapes differs from the one built from the bytes")
	}
	batch := &pb.Batch{}
	if err := proto.Unmarshal(frame, batch); err != nil {
		t.Fatal(err)
	}
	if len(batch.Trees) != 4 {
		t.Fatalf("%d tree proofs, want 4", len(batch.Trees))
	}
	parts := make([]*Part, len(batch.Trees))
	for i, tp := range batch.Trees {
		parts[i] = &Part{Size: tp.TreeSize, Sig: tp.RootSignature, Proof: tp.Hashes}
	}
	type at struct{ part, i int }
	var order []at
	for _, e := range batch.Envelopes {
		if e.Tree == 0 || len(e.Path) > 0 || e.TreeSize != 0 || len(e.RootSignature) > 0 {
			t.Fatalf("an envelope not compact: %v", e)
		}
		p := parts[e.Tree-1]
		order = append(order, at{int(e.Tree - 1), len(p.Index)})
		p.Index = append(p.Index, e.LeafIndex)
		p.Bodies = append(p.Bodies, e.Body)
	}
	v := NewVerifier()
	opened := make([]*OpenedPart, len(parts))
	for i, p := range parts {
		o, err := v.OpenPart(p)
		if err != nil {
			t.Fatalf("tree %d: %v", i, err)
		}
		opened[i] = o
	}
	for j, a := range order {
		if got := MarshalEnvelope(parts[a.part].Envelope(opened[a.part], a.i)); !bytes.Equal(got, envs[j]) {
			t.Fatalf("envelope %d differs after the round trip", j)
		}
	}
	if len(frame) >= len(bytes.Join(envs, nil)) {
		t.Fatalf("the compact frame (%d bytes) is not smaller than its envelopes (%d)", len(frame), len(bytes.Join(envs, nil)))
	}
}

// TestShapeOfNeedsNoBytes: a sealer's shapes (ShapeOf, no encoding) give
// the same compact frame as the encoded envelopes, encode to the same
// bytes, and an envelope that goes self-contained is encoded from its
// shape.
func TestShapeOfNeedsNoBytes(t *testing.T) {
	key, id := testKey(t)
	var envs [][]byte
	var shapes []*EnvelopeShape
	for _, n := range []int{1, 7, 300} {
		sealed, err := Seal(key, bodies(t, id, n))
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range sealed {
			if n == 300 && i%4 != 0 {
				continue // part of a tree: the proof comes from the shapes' paths
			}
			raw, s := MarshalEnvelope(e), ShapeOf(e)
			if !bytes.Equal(s.Marshal(), raw) || s.EncodedSize() != len(raw) {
				t.Fatalf("the shape of envelope %d of %d does not encode to its bytes", i, n)
			}
			if p, ok := ParseEnvelope(raw, true); !ok || p.PathLen != s.PathLen || p.Leaf != s.Leaf || p.Size != s.Size || len(p.Path) != len(s.Path) {
				t.Fatalf("the shape of envelope %d of %d is not what ParseEnvelope reads", i, n)
			}
			envs, shapes = append(envs, raw), append(shapes, s)
		}
	}
	// One envelope whose tree the frame cannot prove (a leaf outside its
	// tree) goes self-contained, encoded from its shape.
	bad := *shapes[1]
	bad.Leaf = bad.Size + 3
	envs = append(envs, bad.Marshal())
	shapes = append(shapes, &bad)
	want := AppendCompactShapes(nil, envs, nil)
	got := AppendCompactShapes(nil, make([][]byte, len(envs)), shapes)
	if !bytes.Equal(got, want) {
		t.Fatal("the frame built from shapes alone differs from the one built from the bytes")
	}
	if !bytes.Contains(got, envs[len(envs)-1]) {
		t.Fatal("the envelope that cannot be compact is not in the frame self-contained")
	}
}

// FuzzPartRoot: whatever the shape, PartRoot answers or errs, never panics,
// and a part that verifies gives paths that verify alone.
func FuzzPartRoot(f *testing.F) {
	f.Add(uint32(10), []byte{2, 3, 7}, uint8(4))
	f.Add(uint32(1), []byte{0}, uint8(0))
	f.Add(uint32(1024), []byte{0, 255}, uint8(20))
	f.Fuzz(func(t *testing.T, size uint32, idxb []byte, nproof uint8) {
		idx := make([]uint32, len(idxb))
		leaves := make([][32]byte, len(idxb))
		for i, b := range idxb {
			idx[i] = uint32(b) * 4
			leaves[i][0] = b
		}
		proof := make([][]byte, nproof)
		for i := range proof {
			proof[i] = make([]byte, 32)
			proof[i][1] = byte(i)
		}
		root, paths, err := PartRoot(size, idx, leaves, proof, true)
		if err != nil {
			return
		}
		for i := range idx {
			got, ok := rootFromPath(leaves[i], idx[i], size, paths[i])
			if !ok || got != root {
				t.Fatalf("leaf %d: its path does not give the part's root", idx[i])
			}
		}
	})
}

// TestParseEnvelopeKnowsCanonical: what AppendEnvelope writes is canonical;
// the same fields written otherwise are not.
func TestParseEnvelopeKnowsCanonical(t *testing.T) {
	key, id := testKey(t)
	envs, err := Seal(key, bodies(t, id, 5))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range envs {
		if s, ok := ParseEnvelope(MarshalEnvelope(e), true); !ok || !s.Canonical {
			t.Fatalf("leaf %d: AppendEnvelope's encoding is not canonical", e.LeafIndex)
		}
	}
	raw := MarshalEnvelope(envs[3])
	for name, b := range map[string][]byte{
		"an unknown field":     append(append([]byte(nil), raw...), 0x78, 0x01),
		"a field twice":        append(append([]byte(nil), raw...), 0x10, 0x03),
		"fields out of order":  append([]byte{0x18, 0x05}, raw...),
		"a zero value written": append([]byte{0x10, 0x00}, raw...),
	} {
		if s, ok := ParseEnvelope(b, true); ok && s.Canonical {
			t.Errorf("%s: taken as canonical", name)
		}
	}
}

// A kept part's opened bodies are the same as a copied one's, their bytes
// fields point into the raw bodies, and appending to one does not write
// into the raw bytes after it.
func TestKeptPartPointsIntoItsBodies(t *testing.T) {
	key, id := testKey(t)
	bs := bodies(t, id, 9)
	envs, err := Seal(key, bs)
	if err != nil {
		t.Fatal(err)
	}
	open := func(kept bool) *OpenedPart {
		raw := make([][]byte, len(bs))
		for i, b := range bs {
			raw[i] = bytes.Clone(b)
		}
		p := &Part{Size: uint32(len(bs)), Sig: envs[0].RootSignature, Index: []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8}, Bodies: raw, Kept: kept}
		o, err := NewVerifier().OpenPart(p)
		if err != nil {
			t.Fatal(err)
		}
		for i, b := range o.Bodies {
			in := func(x []byte) bool {
				return len(x) > 0 && &x[0] == &raw[i][bytes.Index(raw[i], x)]
			}
			if len(b.Payload) == 0 || in(b.Payload) != kept {
				t.Fatalf("kept %v: body %d's payload in its raw body: %v", kept, i, in(b.Payload))
			}
			before := bytes.Clone(raw[i])
			_ = append(b.Payload, 'x')
			_ = append(b.Origin, 'x')
			if !bytes.Equal(raw[i], before) {
				t.Fatalf("kept %v: appending to body %d's fields wrote into its raw bytes", kept, i)
			}
		}
		return o
	}
	copied, kept := open(false), open(true)
	for i := range copied.Bodies {
		if !proto.Equal(copied.Bodies[i], kept.Bodies[i]) {
			t.Fatalf("body %d: kept %v, copied %v", i, kept.Bodies[i], copied.Bodies[i])
		}
	}
}

package protocols

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/bits"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

// Parts of a tree. A delivery batch carries its envelopes compact: each is
// its body and leaf index, and the proof of the tree they come from travels
// once per batch (pb.TreeProof): the tree's size, the root signature, and
// the hashes of the subtrees that hold none of the batch's leaves of it, in
// the order a left-to-right walk of the tree meets them. With the leaves'
// own hashes they give the root, so a receiver checks one root and one
// signature per tree, and hashes about two nodes per envelope instead of an
// audit path of ten.
//
// The walk (both ends): a range [lo, hi) of leaves that holds none of the
// part's leaves is one proof hash; a range of one leaf is that leaf's hash;
// any other range splits at the largest power of two below its size (RFC
// 9162 section 2.1.1), the left half walked first.

// checkPart validates a part's shape: a tree of 1..MaxTreeLeaves leaves and
// strictly increasing leaf indices below its size.
func checkPart(size uint32, idx []uint32) error {
	if size == 0 || size > MaxTreeLeaves {
		return fmt.Errorf("%w: tree size %d", ErrBadSignature, size)
	}
	if len(idx) == 0 {
		return fmt.Errorf("%w: a tree proof no envelope refers to", ErrMalformedEnvelope)
	}
	for i, x := range idx {
		if x >= size {
			return fmt.Errorf("%w: leaf %d of a tree of %d", ErrBadSignature, x, size)
		}
		if i > 0 && x <= idx[i-1] {
			return fmt.Errorf("%w: leaf %d after leaf %d of the same tree", ErrMalformedEnvelope, x, idx[i-1])
		}
	}
	return nil
}

// split is where the walk splits [lo, hi) (hi-lo > 1), and how many of
// idx[from:to] fall left of it.
func split(lo, hi uint32, idx []uint32, from, to int) (uint32, int) {
	k := lo + uint32(splitPoint(int(hi-lo)))
	m := from
	for m < to && idx[m] < k {
		m++
	}
	return k, m
}

// PartProof returns the proof hashes of the leaves idx (strictly
// increasing) of a tree of size leaves, from their audit paths (paths[i] is
// leaf idx[i]'s, as in its self-contained envelope). None when idx is the
// whole tree. The hashes are slices of the paths.
func PartProof(size uint32, idx []uint32, paths [][][]byte) ([][]byte, error) {
	if len(paths) != len(idx) {
		return nil, fmt.Errorf("part proof: %d leaves, %d paths", len(idx), len(paths))
	}
	return PartProofOf(size, idx, func(i int) [][]byte { return paths[i] })
}

// PartProofOf is PartProof reading the paths it needs through pathOf (the
// walk needs only the paths of leaves beside a subtree without leaves:
// for a run of consecutive leaves, its first and last).
func PartProofOf(size uint32, idx []uint32, pathOf func(i int) [][]byte) ([][]byte, error) {
	if err := checkPart(size, idx); err != nil {
		return nil, err
	}
	var out [][]byte
	// sibling is the hash beside the child at depth d+1 that holds leaf
	// idx[i]: its path's entry for that level, in a path as deep as the
	// leaf (checked once the walk reaches it).
	sibling := func(i, d int) ([]byte, error) {
		p := pathOf(i)
		if len(p) <= d || len(p[len(p)-1-d]) != sha256.Size {
			return nil, fmt.Errorf("%w: the audit path of leaf %d is too short for its tree", ErrBadSignature, idx[i])
		}
		if depth := leafDepth(size, idx[i]); len(p) != depth {
			return nil, fmt.Errorf("%w: leaf %d has a path of %d hashes, its depth is %d", ErrBadSignature, idx[i], len(p), depth)
		}
		return p[len(p)-1-d], nil
	}
	var walk func(lo, hi uint32, d, from, to int) error
	walk = func(lo, hi uint32, d, from, to int) error {
		if hi-lo == 1 {
			return nil
		}
		k, m := split(lo, hi, idx, from, to)
		switch {
		case m == from: // the left half holds none: its hash, then the right
			h, err := sibling(from, d)
			if err != nil {
				return err
			}
			out = append(out, h)
			return walk(k, hi, d+1, from, to)
		case m == to: // the right half holds none: the left, then its hash
			if err := walk(lo, k, d+1, from, to); err != nil {
				return err
			}
			h, err := sibling(from, d)
			if err != nil {
				return err
			}
			out = append(out, h)
			return nil
		default:
			if err := walk(lo, k, d+1, from, m); err != nil {
				return err
			}
			return walk(k, hi, d+1, m, to)
		}
	}
	if err := walk(0, size, 0, 0, len(idx)); err != nil {
		return nil, err
	}
	return out, nil
}

// leafDepth is how many splits lie above leaf i of a tree of size leaves
// (the length of its audit path).
func leafDepth(size, i uint32) int {
	d := 0
	for lo, hi := uint32(0), size; hi-lo > 1; d++ {
		if k := lo + uint32(splitPoint(int(hi-lo))); i < k {
			hi = k
		} else {
			lo = k
		}
	}
	return d
}

// PartRoot computes the root of a tree of size leaves from the leaf hashes
// of its leaves idx (strictly increasing) and the proof hashes, and with
// wantPaths each leaf's audit path (slices of one buffer and of proof).
// Every proof hash must be used.
func PartRoot(size uint32, idx []uint32, leaves [][32]byte, proof [][]byte, wantPaths bool) ([32]byte, [][][]byte, error) {
	var root [32]byte
	if err := checkPart(size, idx); err != nil {
		return root, nil, err
	}
	if len(leaves) != len(idx) {
		return root, nil, fmt.Errorf("part root: %d leaves, %d hashes", len(idx), len(leaves))
	}
	var paths [][][]byte
	if wantPaths {
		depth := bits.Len(uint(size - 1))
		headers := make([][]byte, len(idx)*depth)
		paths = make([][][]byte, len(idx))
		for i := range paths {
			paths[i] = headers[i*depth : i*depth : (i+1)*depth]
		}
	}
	next := 0
	var walk func(lo, hi uint32, from, to int) ([32]byte, error)
	walk = func(lo, hi uint32, from, to int) ([32]byte, error) {
		var h [32]byte
		if from == to {
			if next >= len(proof) {
				return h, fmt.Errorf("%w: the tree proof has too few hashes (%d)", ErrBadSignature, len(proof))
			}
			p := proof[next]
			next++
			if len(p) != sha256.Size {
				return h, fmt.Errorf("%w: a proof hash of %d bytes", ErrBadSignature, len(p))
			}
			copy(h[:], p)
			return h, nil
		}
		if hi-lo == 1 {
			return leaves[from], nil
		}
		k, m := split(lo, hi, idx, from, to)
		l, err := walk(lo, k, from, m)
		if err != nil {
			return h, err
		}
		r, err := walk(k, hi, m, to)
		if err != nil {
			return h, err
		}
		if wantPaths && to-from > 0 {
			shared := make([]byte, 64)
			copy(shared, r[:])
			copy(shared[32:], l[:])
			for i := from; i < m; i++ {
				paths[i] = append(paths[i], shared[:32:32])
			}
			for i := m; i < to; i++ {
				paths[i] = append(paths[i], shared[32:64:64])
			}
		}
		return nodeHash(l[:], r[:]), nil
	}
	root, err := walk(0, size, 0, len(idx))
	if err != nil {
		return root, nil, err
	}
	if next != len(proof) {
		return root, nil, fmt.Errorf("%w: the tree proof has %d hashes, %d used", ErrBadSignature, len(proof), next)
	}
	return root, paths, nil
}

// VerifyRoot checks that sig is origin's signature of a tree of size
// leaves with this root (cached: a root verified once is not checked
// again).
func (v *Verifier) VerifyRoot(origin peer.ID, size uint32, root [32]byte, sig []byte) error {
	return v.verifyRoot(verifiedKey{origin: origin, size: size, root: root}, sig)
}

// Part is the leaves of one signed tree that a batch carries: what its
// TreeProof says and, in leaf order, the bodies and their leaf indices.
type Part struct {
	Size   uint32
	Sig    []byte
	Proof  [][]byte
	Index  []uint32
	Bodies [][]byte
	// Kept: the caller never changes Bodies' bytes (a frame copied for
	// the batch), so the opened bodies' bytes fields point into them
	// instead of being copied once more.
	Kept bool
}

// OpenedPart is a verified Part: its origin, the decoded bodies, their leaf
// hashes, and each leaf's audit path (so each can be stored and served as
// a self-contained envelope).
type OpenedPart struct {
	Origin peer.ID
	Bodies []*pb.Body
	Leaves [][32]byte
	// Paths are walked again on the first Envelope (a receiver that stores
	// the part as it came needs none).
	Paths [][][]byte
	paths sync.Once
}

// OpenPart decodes and verifies a part: every body from one origin, whose
// signature the root computed from the leaves and the proof carries.
func (v *Verifier) OpenPart(p *Part) (*OpenedPart, error) {
	if len(p.Bodies) != len(p.Index) {
		return nil, fmt.Errorf("%w: %d bodies, %d leaf indices", ErrMalformedEnvelope, len(p.Bodies), len(p.Index))
	}
	o := &OpenedPart{Bodies: make([]*pb.Body, len(p.Bodies)), Leaves: make([][32]byte, len(p.Bodies))}
	slab := make([]pb.Body, len(p.Bodies)) // one allocation for the part's bodies (they live as long as it)
	total := 0
	for _, raw := range p.Bodies {
		total += len(raw)
	}
	dec := &bodyDecoder{kept: p.Kept}
	if !p.Kept {
		dec = newBodyDecoder(total)
	}
	var originBytes []byte
	for i, raw := range p.Bodies {
		if len(raw) == 0 {
			return nil, fmt.Errorf("%w: empty body", ErrMalformedEnvelope)
		}
		body := &slab[i]
		if err := dec.decode(raw, body); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformedEnvelope, err)
		}
		if i == 0 {
			originBytes = body.Origin
			id, err := peer.IDFromBytes(body.Origin)
			if err != nil {
				return nil, fmt.Errorf("%w: origin: %w", ErrMalformedEnvelope, err)
			}
			o.Origin = id
		} else if !bytes.Equal(body.Origin, originBytes) {
			return nil, fmt.Errorf("%w: one tree proof for changes of two origins", ErrBadSignature)
		}
		o.Bodies[i] = body
		o.Leaves[i] = leafHash(raw)
	}
	root, _, err := PartRoot(p.Size, p.Index, o.Leaves, p.Proof, false)
	if err != nil {
		return nil, err
	}
	if err := v.VerifyRoot(o.Origin, p.Size, root, p.Sig); err != nil {
		return nil, err
	}
	return o, nil
}

// Envelope is leaf i of an opened part as a self-contained envelope.
// o must be p opened (OpenPart); it may be called from several goroutines.
func (p *Part) Envelope(o *OpenedPart, i int) *pb.Envelope {
	o.paths.Do(func() {
		// The walk OpenPart made, with the paths kept (it held then).
		_, o.Paths, _ = PartRoot(p.Size, p.Index, o.Leaves, p.Proof, true)
	})
	return &pb.Envelope{Body: p.Bodies[i], LeafIndex: p.Index[i], TreeSize: p.Size, Path: o.Paths[i], RootSignature: p.Sig}
}

// EnvelopeShape is what a self-contained envelope's encoding holds, read
// without decoding it into a message (slices of the encoding).
type EnvelopeShape struct {
	Body       []byte
	Leaf, Size uint32
	Path       [][]byte
	Sig        []byte
	Tree       uint32 // compact form: the batch's tree it refers to
	PathLen    int    // how many path hashes it holds (counted with or without withPath)
	// Canonical: the encoding is the one AppendEnvelope writes for these
	// fields (known fields once each, in order, zero values left out,
	// lengths and varints minimal), so it can be rebuilt byte for byte.
	Canonical bool
}

// ShapeOf is a self-contained envelope's shape with its path, as
// ParseEnvelope(MarshalEnvelope(e), true) would give it, without encoding
// it (the slices are e's): a sealer hands it to a sender that writes
// compact batches and needs the encoding only for an envelope that goes
// self-contained (Marshal).
func ShapeOf(e *pb.Envelope) *EnvelopeShape {
	path := e.Path
	if path == nil {
		path = [][]byte{}
	}
	return &EnvelopeShape{Body: e.Body, Leaf: e.LeafIndex, Size: e.TreeSize, Path: path, Sig: e.RootSignature,
		PathLen: len(e.Path), Canonical: true}
}

// Marshal encodes the self-contained envelope a shape with its path (from
// ShapeOf) describes, byte for byte MarshalEnvelope's.
func (s *EnvelopeShape) Marshal() []byte {
	return MarshalEnvelope(&pb.Envelope{Body: s.Body, LeafIndex: s.Leaf, TreeSize: s.Size, Path: s.Path, RootSignature: s.Sig})
}

// EncodedSize is the length of the self-contained encoding of a shape with
// its path (Marshal's), without encoding it.
func (s *EnvelopeShape) EncodedSize() int {
	return EnvelopeSize(&pb.Envelope{Body: s.Body, LeafIndex: s.Leaf, TreeSize: s.Size, Path: s.Path, RootSignature: s.Sig})
}

// ParseEnvelope reads an encoded envelope's fields. ok is false for bytes
// that are not a protobuf message or an envelope without a body.
func ParseEnvelope(raw []byte, withPath bool) (e EnvelopeShape, ok bool) {
	e.Canonical = true
	last := protowire.Number(0)
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return e, false
		}
		if n != protowire.SizeTag(num) || num < last || (num == last && num != 4) || num > 6 {
			e.Canonical = false
		}
		last = num
		raw = raw[n:]
		switch typ {
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(raw)
			if n < 0 {
				return e, false
			}
			if n != protowire.SizeBytes(len(v)) || (len(v) == 0 && num != 4) || (num != 1 && num != 4 && num != 5) {
				e.Canonical = false
			}
			switch num {
			case 1:
				e.Body = v
			case 4:
				e.PathLen++
				if withPath {
					if e.Path == nil {
						e.Path = make([][]byte, 0, 10) // a path has at most ten
					}
					e.Path = append(e.Path, v)
				}
			case 5:
				e.Sig = v
			}
			raw = raw[n:]
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(raw)
			if n < 0 {
				return e, false
			}
			if n != protowire.SizeVarint(v) || v == 0 || (num != 2 && num != 3 && num != 6) {
				e.Canonical = false
			}
			switch num {
			case 2:
				e.Leaf = uint32(v)
			case 3:
				e.Size = uint32(v)
			case 6:
				e.Tree = uint32(v)
			}
			if v > 1<<32-1 && (num == 2 || num == 3 || num == 6) {
				return e, false
			}
			raw = raw[n:]
		default:
			e.Canonical = false
			n := protowire.ConsumeFieldValue(num, typ, raw)
			if n < 0 {
				return e, false
			}
			raw = raw[n:]
		}
	}
	return e, len(e.Body) > 0
}

// AppendCompact appends to a Batch being encoded the envelopes envs
// (self-contained, encoded, in the batch's order) as Batch field 4, compact,
// and their trees' proofs as field 6: consecutive envelopes under one
// signature and tree size are one part. An envelope whose proof cannot be
// made compact (its path does not fit its tree) goes self-contained, as it
// is.
func AppendCompact(b []byte, envs [][]byte) []byte { return AppendCompactShapes(b, envs, nil) }

// AppendCompactShapes is AppendCompact for a caller that parsed the
// envelopes already (ParseEnvelope, with or without their paths): shapes[i]
// is envs[i]'s, or nil. Paths are read only for parts of a tree. envs[i]
// may be nil when shapes[i] holds the path (ShapeOf): it is encoded only
// if the envelope goes self-contained.
func AppendCompactShapes(b []byte, envs [][]byte, shapes []*EnvelopeShape) []byte {
	type part struct {
		size  uint32
		sig   []byte
		at    []int // in envs
		idx   []uint32
		proof [][]byte
		ok    bool
	}
	shape := make([]*EnvelopeShape, len(envs))
	var parts []*part
	partOf := make([]*part, len(envs))
	var cur *part
	for i, raw := range envs {
		var sh *EnvelopeShape
		if shapes != nil {
			sh = shapes[i]
		}
		if sh == nil {
			s, ok := ParseEnvelope(raw, false)
			if !ok {
				cur = nil
				continue
			}
			sh = &s
		}
		shape[i] = sh
		if sh.Size == 0 || len(sh.Sig) == 0 || sh.Tree != 0 || len(sh.Body) == 0 {
			cur = nil
			continue
		}
		if cur == nil || cur.size != sh.Size || !bytes.Equal(cur.sig, sh.Sig) || sh.Leaf <= cur.idx[len(cur.idx)-1] {
			// At most the envelopes left, and the leaves left in its tree.
			n := min(len(envs)-i, int(sh.Size-min(sh.Leaf, sh.Size)))
			cur = &part{size: sh.Size, sig: sh.Sig, ok: true, at: make([]int, 0, n), idx: make([]uint32, 0, n)}
			parts = append(parts, cur)
		}
		cur.at = append(cur.at, i)
		cur.idx = append(cur.idx, sh.Leaf)
		partOf[i] = cur
	}
	for _, p := range parts {
		if len(p.idx) == int(p.size) {
			continue // the whole tree: no hash needed
		}
		h, err := PartProofOf(p.size, p.idx, func(j int) [][]byte {
			i := p.at[j]
			if shape[i].Path == nil && envs[i] != nil {
				if s, ok := ParseEnvelope(envs[i], true); ok {
					shape[i] = &s
				}
			}
			return shape[i].Path
		})
		if err != nil {
			p.ok = false
			continue
		}
		p.proof = h
	}
	var ordered []*part
	number := map[*part]uint32{}
	for i, raw := range envs {
		p := partOf[i]
		if p == nil || !p.ok {
			if raw == nil && shape[i] != nil {
				raw = shape[i].Marshal()
			}
			b = protowire.AppendTag(b, 4, protowire.BytesType)
			b = protowire.AppendBytes(b, raw)
			continue
		}
		n, seen := number[p]
		if !seen {
			ordered = append(ordered, p)
			n = uint32(len(ordered))
			number[p] = n
		}
		s := shape[i]
		size := sizeBytes(1, len(s.Body)) + sizeVarint(2, uint64(s.Leaf)) + sizeVarint(6, uint64(n))
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(size))
		b = appendBytes(b, 1, s.Body)
		b = appendVarint(b, 2, uint64(s.Leaf))
		b = appendVarint(b, 6, uint64(n))
	}
	// The proofs, in the order the envelopes numbered them.
	for _, p := range ordered {
		size := sizeVarint(1, uint64(p.size)) + sizeBytes(2, len(p.sig))
		for _, h := range p.proof {
			size += protowire.SizeTag(3) + protowire.SizeBytes(len(h))
		}
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(size))
		b = appendVarint(b, 1, uint64(p.size))
		b = appendBytes(b, 2, p.sig)
		for _, h := range p.proof {
			b = protowire.AppendTag(b, 3, protowire.BytesType)
			b = protowire.AppendBytes(b, h)
		}
	}
	return b
}

// CompactCost bounds what an envelope adds to a compact batch after an
// envelope signed with prevSig: its body and leaf index, and the proof of
// its tree when it starts one. It returns its own signature, for the next.
// shape is raw's when the caller parsed it (nil: raw is parsed).
func CompactCost(raw []byte, shape *EnvelopeShape, prevSig []byte) (int, []byte) {
	if shape == nil {
		s, ok := ParseEnvelope(raw, false)
		if !ok {
			return len(raw) + 8, nil
		}
		shape = &s
	}
	cost := len(shape.Body) + 16
	if !bytes.Equal(shape.Sig, prevSig) {
		cost += len(shape.Sig) + 16 + 10*(sha256.Size+2)
	}
	return cost, shape.Sig
}

// ParseTreeProof reads a TreeProof's encoding (slices of it).
func ParseTreeProof(raw []byte) (size uint32, sig []byte, hashes [][]byte, err error) {
	t := &pb.TreeProof{}
	if err := proto.Unmarshal(raw, t); err != nil {
		return 0, nil, nil, fmt.Errorf("%w: tree proof: %w", ErrMalformedEnvelope, err)
	}
	return t.TreeSize, t.RootSignature, t.Hashes, nil
}

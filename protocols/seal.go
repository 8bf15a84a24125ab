package protocols

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math/bits"
	"sync"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

// Envelopes are signed in batches: the origin builds a Merkle tree (RFC 9162
// section 2.1.1) over the bodies it commits together and signs its root once.
// Each envelope carries its audit path, so it can be verified alone, relayed
// by any peer, and served again by sync. A receiver verifies the root
// signature once per batch and only hashes for the rest.

// MaxTreeLeaves bounds one signed tree, and so the audit path to 10 hashes.
const MaxTreeLeaves = 1024

const rootDomain = "ferry/envelope-root/1\n"

var (
	// ErrBadSignature is returned for an envelope whose proof does not hold.
	ErrBadSignature = errors.New("envelope signature does not verify")
	// ErrMalformedEnvelope is returned for an envelope that cannot be decoded.
	ErrMalformedEnvelope = errors.New("malformed envelope")
)

// hashers are reused: a fresh sha256 digest per leaf was an allocation per
// envelope on both ends.
var hashers = sync.Pool{New: func() any { return sha256.New() }}

func leafHash(body []byte) [32]byte {
	h := hashers.Get().(hash.Hash)
	h.Reset()
	h.Write([]byte{0})
	h.Write(body)
	var out [32]byte
	h.Sum(out[:0])
	hashers.Put(h)
	return out
}

// LeafHash is the Merkle leaf hash of a body (RFC 9162: SHA-256 of 0x00 and
// the body).
func LeafHash(body []byte) [32]byte { return leafHash(body) }

func nodeHash(l, r []byte) [32]byte {
	var buf [65]byte
	buf[0] = 1
	copy(buf[1:33], l)
	copy(buf[33:], r)
	return sha256.Sum256(buf[:])
}

// splitPoint is the largest power of two smaller than n (n > 1).
func splitPoint(n int) int {
	k := 1
	for k<<1 < n {
		k <<= 1
	}
	return k
}

// treeRoot computes MTH over leaf hashes and appends, for every leaf, the
// audit path (PATH in RFC 9162). Each path's hashes are slices of the
// buffer nodes (64 bytes for each node above the leaves, len(leaves)-1 in
// all), each node's pair shared by the leaves under it.
func treeRoot(leaves [][32]byte, paths [][][]byte, nodes []byte) [32]byte {
	if len(leaves) == 1 {
		return leaves[0]
	}
	k := splitPoint(len(leaves))
	// This node's pair first, then the left subtree's k-1 nodes, then the
	// right's.
	shared := nodes[:64:64]
	l := treeRoot(leaves[:k], paths[:k], nodes[64:64*k])
	r := treeRoot(leaves[k:], paths[k:], nodes[64*k:])
	copy(shared[:32], r[:])
	copy(shared[32:], l[:])
	for i := range paths[:k] {
		paths[i] = append(paths[i], shared[:32:32])
	}
	for i := range paths[k:] {
		paths[k+i] = append(paths[k+i], shared[32:64:64])
	}
	return nodeHash(l[:], r[:])
}

func signedRoot(size uint32, root []byte) []byte {
	msg := make([]byte, 0, len(rootDomain)+4+len(root))
	msg = append(msg, rootDomain...)
	msg = binary.BigEndian.AppendUint32(msg, size)
	return append(msg, root...)
}

// Seal signs bodies with key, one signature per tree of up to MaxTreeLeaves,
// and returns one envelope per body in the same order.
func Seal(key crypto.PrivKey, bodies [][]byte) ([]*pb.Envelope, error) {
	return SealLeaves(key, bodies, nil)
}

// SealLeaves is Seal for a caller that has the bodies' leaf hashes at hand
// (LeafHash); nil computes them.
func SealLeaves(key crypto.PrivKey, bodies [][]byte, leafHashes [][32]byte) ([]*pb.Envelope, error) {
	out := make([]*pb.Envelope, 0, len(bodies))
	for start := 0; start < len(bodies); start += MaxTreeLeaves {
		end := min(start+MaxTreeLeaves, len(bodies))
		var leaves [][32]byte
		if leafHashes != nil {
			leaves = leafHashes[start:end]
		}
		root, paths := proofs(bodies[start:end], leaves)
		sig, err := key.Sign(signedRoot(uint32(end-start), root[:]))
		if err != nil {
			return nil, fmt.Errorf("sign envelope batch: %w", err)
		}
		out = appendEnvelopes(out, bodies[start:end], paths, sig)
	}
	return out, nil
}

// TreeEnvelopes rebuilds the envelopes of one signed tree from its bodies,
// in leaf order, and the root signature its origin made (a store keeps the
// signature once per tree and the bodies alone). leaves may be nil. The
// caller vouches that sig signs this tree: nothing is verified here.
func TreeEnvelopes(bodies [][]byte, leaves [][32]byte, sig []byte) ([]*pb.Envelope, error) {
	if len(bodies) == 0 || len(bodies) > MaxTreeLeaves || (leaves != nil && len(leaves) != len(bodies)) {
		return nil, fmt.Errorf("rebuild envelopes: a tree of %d bodies (%d leaf hashes)", len(bodies), len(leaves))
	}
	_, paths := proofs(bodies, leaves)
	return appendEnvelopes(make([]*pb.Envelope, 0, len(bodies)), bodies, paths, sig), nil
}

// proofs computes a tree's root and each leaf's audit path.
func proofs(bodies [][]byte, leaves [][32]byte) ([32]byte, [][][]byte) {
	if leaves == nil {
		leaves = make([][32]byte, len(bodies))
		for i, b := range bodies {
			leaves[i] = leafHash(b)
		}
	}
	paths := make([][][]byte, len(bodies))
	depth := bits.Len(uint(len(bodies) - 1))
	headers := make([][]byte, len(bodies)*depth)
	for i := range paths {
		paths[i] = headers[i*depth : i*depth : (i+1)*depth]
	}
	return treeRoot(leaves, paths, make([]byte, 64*max(len(leaves)-1, 0))), paths
}

func appendEnvelopes(out []*pb.Envelope, bodies [][]byte, paths [][][]byte, sig []byte) []*pb.Envelope {
	slab := make([]pb.Envelope, len(bodies)) // one allocation for the tree's envelopes
	for i, b := range bodies {
		e := &slab[i]
		e.Body, e.LeafIndex, e.TreeSize, e.Path, e.RootSignature = b, uint32(i), uint32(len(bodies)), paths[i], sig
		out = append(out, e)
	}
	return out
}

// rootFromPath recomputes the tree root from a leaf and its audit path
// (RFC 9162 section 2.1.3.2).
func rootFromPath(leaf [32]byte, index, size uint32, path [][]byte) ([32]byte, bool) {
	if index >= size || size > MaxTreeLeaves || len(path) > 10 {
		return leaf, false
	}
	fn, sn := index, size-1
	r := leaf
	for _, p := range path {
		if len(p) != sha256.Size || sn == 0 {
			return r, false
		}
		if fn&1 == 1 || fn == sn {
			r = nodeHash(p, r[:])
			if fn&1 == 0 {
				for fn&1 == 0 && fn != 0 {
					fn >>= 1
					sn >>= 1
				}
			}
		} else {
			r = nodeHash(r[:], p)
		}
		fn >>= 1
		sn >>= 1
	}
	return r, sn == 0
}

// Verifier checks envelope proofs and remembers the roots it has verified,
// so a batch costs one signature check however many envelopes it holds.
type Verifier struct {
	mu sync.Mutex
	// cur and prev map a verified root to its signature: a root comes
	// with the signature verified over it, or is checked again (so no
	// envelope is kept with a signature that does not verify).
	cur  map[verifiedKey][]byte
	prev map[verifiedKey][]byte
	keys map[peer.ID]crypto.PubKey
}

type verifiedKey struct {
	origin peer.ID
	size   uint32
	root   [32]byte
}

const verifierGeneration = 4096

// NewVerifier returns an empty verifier.
func NewVerifier() *Verifier {
	return &Verifier{cur: map[verifiedKey][]byte{}, keys: map[peer.ID]crypto.PubKey{}}
}

// Open verifies env and returns its decoded body. The origin is taken from the
// body and must be a peer id whose public key it embeds (ed25519 ids do).
func (v *Verifier) Open(env *pb.Envelope) (*pb.Body, peer.ID, error) {
	body, origin, _, err := v.OpenLeaf(env)
	return body, origin, err
}

// OpenLeaf is Open that also returns the body's leaf hash (LeafHash).
func (v *Verifier) OpenLeaf(env *pb.Envelope) (*pb.Body, peer.ID, [32]byte, error) {
	var leaf [32]byte
	if env == nil || len(env.Body) == 0 {
		return nil, "", leaf, fmt.Errorf("%w: empty body", ErrMalformedEnvelope)
	}
	body := &pb.Body{}
	if err := proto.Unmarshal(env.Body, body); err != nil {
		return nil, "", leaf, fmt.Errorf("%w: %w", ErrMalformedEnvelope, err)
	}
	origin, err := peer.IDFromBytes(body.Origin)
	if err != nil {
		return nil, "", leaf, fmt.Errorf("%w: origin: %w", ErrMalformedEnvelope, err)
	}
	leaf = leafHash(env.Body)
	if err := v.verify(origin, env, leaf); err != nil {
		return nil, "", leaf, err
	}
	return body, origin, leaf, nil
}

// Verify checks that env was signed by origin.
func (v *Verifier) Verify(origin peer.ID, env *pb.Envelope) error {
	return v.verify(origin, env, leafHash(env.Body))
}

func (v *Verifier) verify(origin peer.ID, env *pb.Envelope, leaf [32]byte) error {
	root, ok := rootFromPath(leaf, env.LeafIndex, env.TreeSize, env.Path)
	if !ok {
		return fmt.Errorf("%w: bad audit path", ErrBadSignature)
	}
	return v.verifyRoot(verifiedKey{origin: origin, size: env.TreeSize, root: root}, env.RootSignature)
}

// verifyRoot checks sig over the root k names, unless that root was
// verified before.
func (v *Verifier) verifyRoot(k verifiedKey, sig []byte) error {
	v.mu.Lock()
	known, hit := v.cur[k]
	if !hit {
		if known, hit = v.prev[k]; hit {
			v.remember(k, known)
		}
	}
	hit = hit && bytes.Equal(known, sig)
	pub := v.keys[k.origin]
	v.mu.Unlock()
	if hit {
		return nil
	}
	if pub == nil {
		var err error
		if pub, err = k.origin.ExtractPublicKey(); err != nil {
			return fmt.Errorf("%w: no public key in origin %s: %w", ErrBadSignature, k.origin, err)
		}
	}
	ok, err := pub.Verify(signedRoot(k.size, k.root[:]), sig)
	if err != nil || !ok {
		return fmt.Errorf("%w (origin %s)", ErrBadSignature, k.origin)
	}
	v.mu.Lock()
	v.remember(k, bytes.Clone(sig))
	if len(v.keys) < verifierGeneration {
		v.keys[k.origin] = pub
	}
	v.mu.Unlock()
	return nil
}

// remember adds k to the current generation; callers hold v.mu.
func (v *Verifier) remember(k verifiedKey, sig []byte) {
	if len(v.cur) >= verifierGeneration {
		v.prev, v.cur = v.cur, make(map[verifiedKey][]byte, verifierGeneration)
	}
	v.cur[k] = sig
}

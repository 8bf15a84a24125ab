package protocols

import (
	"crypto/rand"
	"errors"
	"fmt"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

func testKey(t testing.TB) (crypto.PrivKey, peer.ID) {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return priv, id
}

func bodies(t testing.TB, origin peer.ID, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		b, err := proto.Marshal(&pb.Body{Origin: []byte(origin), OriginVersion: uint64(i + 1), Kind: pb.Kind_KIND_RESOURCE_CREATE, Payload: []byte(fmt.Sprintf(`{"id":"%d"}`, i))})
		if err != nil {
			t.Fatal(err)
		}
		out[i] = b
	}
	return out
}

func TestSealVerifyEveryTreeShape(t *testing.T) {
	key, id := testKey(t)
	for _, n := range []int{1, 2, 3, 4, 5, 7, 8, 9, 31, 33, 100, MaxTreeLeaves, MaxTreeLeaves + 3} {
		envs, err := Seal(key, bodies(t, id, n))
		if err != nil {
			t.Fatal(err)
		}
		if len(envs) != n {
			t.Fatalf("n=%d: got %d envelopes", n, len(envs))
		}
		v := NewVerifier()
		for i, env := range envs {
			body, origin, err := v.Open(env)
			if err != nil {
				t.Fatalf("n=%d leaf %d: %v", n, i, err)
			}
			if origin != id || body.OriginVersion != uint64(i+1) {
				t.Fatalf("n=%d leaf %d: wrong body", n, i)
			}
		}
	}
}

func TestVerifyRefusesForgeries(t *testing.T) {
	key, id := testKey(t)
	other, _ := testKey(t)
	envs, err := Seal(key, bodies(t, id, 5))
	if err != nil {
		t.Fatal(err)
	}
	// Bodies claiming id's origin but signed by another key.
	fake := bodies(t, id, 6)[1:]
	forged, err := Seal(other, fake)
	if err != nil {
		t.Fatal(err)
	}
	tampered := proto.Clone(envs[2]).(*pb.Envelope)
	tampered.Body = append([]byte(nil), tampered.Body...)
	tampered.Body[len(tampered.Body)-2] ^= 1
	swapped := proto.Clone(envs[1]).(*pb.Envelope)
	swapped.LeafIndex = 2
	shortPath := proto.Clone(envs[3]).(*pb.Envelope)
	shortPath.Path = shortPath.Path[:1]
	badSize := proto.Clone(envs[0]).(*pb.Envelope)
	badSize.TreeSize = 4
	v := NewVerifier()
	// Prime the cache with the genuine batch: forgeries must still fail.
	if _, _, err := v.Open(envs[0]); err != nil {
		t.Fatal(err)
	}
	for name, env := range map[string]*pb.Envelope{
		"other key": forged[0], "tampered body": tampered, "moved leaf": swapped,
		"short path": shortPath, "wrong size": badSize,
	} {
		if _, _, err := v.Open(env); !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrMalformedEnvelope) {
			t.Errorf("%s: got %v, want a signature error", name, err)
		}
	}
}

func BenchmarkSealAndVerify1000(b *testing.B) {
	key, id := testKey(b)
	bs := bodies(b, id, 1000)
	for b.Loop() {
		envs, err := Seal(key, bs)
		if err != nil {
			b.Fatal(err)
		}
		v := NewVerifier()
		for _, env := range envs {
			if _, _, err := v.Open(env); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkAppendCompactShapes encodes a sender's batch: 256 envelopes of
// trees of 100 changes, starting mid-tree, as shapes (what a sealer hands
// the sender).
func BenchmarkAppendCompactShapes(b *testing.B) {
	key, id := testKey(b)
	bs := bodies(b, id, 400)
	var envs []*pb.Envelope
	for i := 0; i < len(bs); i += 100 {
		e, err := Seal(key, bs[i:i+100])
		if err != nil {
			b.Fatal(err)
		}
		envs = append(envs, e...)
	}
	envs = envs[50:306]
	shapes := make([]*EnvelopeShape, len(envs))
	for i, e := range envs {
		shapes[i] = ShapeOf(e)
	}
	raw := make([][]byte, len(envs))
	buf := make([]byte, 0, 64<<10)
	for b.Loop() {
		buf = AppendCompactShapes(buf[:0], raw, shapes)
	}
}

package protocols

import (
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

// The worked example of docs/protocols.md ("Batch signatures"): a fixed
// Ed25519 key (seed 32 bytes of 0x01), three resource creates sealed in one
// tree, every byte a peer in another language must reproduce. Ed25519
// signatures are deterministic, so the whole example is fixed; the test
// fails if sealing, hashing or the signed message change, and the doc must
// change with it (its values are printed on failure).
var exampleWant = map[string]string{
	"peer":   "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5",
	"origin": "0024080112208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
	"body0": "0a260024080112208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c10e80718012202766d2a4e" +
		"7b226964223a2261222c2263726561746f725f6964223a22313244334b6f6f574b3939566f56784e4537587a79427758457a573778" +
		"684b37477076383572394633563366794b53554b504835227d308080a8b1e39fe7cb17",
	"leaf0":  "ad9447e794ac58441a87cc32e8c77025908f9e7a74b559732f5c4dcac37f77cb",
	"leaf1":  "29a9504d596a8b64746ac5c4e5f4a2687aed034df686c2e703acfaeafd87c344",
	"leaf2":  "90876abf6dd65a53b3bca6a7e6c37142530eec8829a11ad2d2641254350c63c4",
	"node01": "c1c32e378f375dab7e1412cd303041422504d702615ec597eb320b0646456547",
	"root":   "49bb3d5e14671f246bd63ab6884bb1abf5ac469109346ca062ffaaa34431fa0a",
	"signed": "66657272792f656e76656c6f70652d726f6f742f310a0000000349bb3d5e14671f246bd63ab6884bb1abf5ac469109346ca062ffaaa34431fa0a",
	"sig": "86456fdbf894397da89b106c188fe7db20f3e1de6df90b3d12497ae1780caa2d" +
		"0d97d6fd5e446bdcddae8837195b7a6f41b7edd1fdc2d8f62d07181c067fd508",
}

func exampleKey(t *testing.T) (crypto.PrivKey, peer.ID) {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = 0x01
	}
	key, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, id
}

func exampleBodies(t *testing.T, id peer.ID) [][]byte {
	t.Helper()
	var out [][]byte
	for i, rid := range []string{"a", "b", "c"} {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.Body{
			Origin: []byte(id), OriginVersion: uint64(1000 + i), Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "vm",
			Payload:           []byte(fmt.Sprintf(`{"id":%q,"creator_id":%q}`, rid, id)),
			CreatedAtUnixNano: 1700000000000000000, PrevVersion: uint64(max(0, 1000+i-1)) * uint64(min(i, 1)),
		})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func TestWorkedExample(t *testing.T) {
	key, id := exampleKey(t)
	bodies := exampleBodies(t, id)
	envs, err := Seal(key, bodies)
	if err != nil {
		t.Fatal(err)
	}
	h := func(b []byte) string { return hex.EncodeToString(b) }
	l0, l1, l2 := LeafHash(bodies[0]), LeafHash(bodies[1]), LeafHash(bodies[2])
	n01 := nodeHash(l0[:], l1[:])
	root := nodeHash(n01[:], l2[:])
	got := map[string]string{
		"peer": id.String(), "origin": h([]byte(id)), "body0": h(bodies[0]),
		"leaf0": h(l0[:]), "leaf1": h(l1[:]), "leaf2": h(l2[:]), "node01": h(n01[:]), "root": h(root[:]),
		"signed": h(signedRoot(3, root[:])), "sig": h(envs[0].RootSignature),
	}
	var b strings.Builder
	for _, k := range []string{"peer", "origin", "body0", "leaf0", "leaf1", "leaf2", "node01", "root", "signed", "sig"} {
		fmt.Fprintf(&b, "%s = %s\n", k, got[k])
	}
	for k, want := range exampleWant {
		if got[k] != want {
			t.Fatalf("the worked example changed (%s); docs/protocols.md must change with it:\n%s", k, b.String())
		}
	}
	// Each self-contained envelope's audit path, and the TreeProof hashes
	// of two parts of the tree, as the doc lists them.
	paths := [][]string{{got["leaf1"], got["leaf2"]}, {got["leaf0"], got["leaf2"]}, {got["node01"]}}
	v := NewVerifier()
	for i, e := range envs {
		if e.LeafIndex != uint32(i) || e.TreeSize != 3 || len(e.Path) != len(paths[i]) {
			t.Fatalf("envelope %d: leaf %d of %d, path of %d", i, e.LeafIndex, e.TreeSize, len(e.Path))
		}
		for j, p := range e.Path {
			if h(p) != paths[i][j] {
				t.Fatalf("envelope %d path[%d] = %s, want %s", i, j, h(p), paths[i][j])
			}
		}
		if _, origin, err := v.Open(e); err != nil || origin != id {
			t.Fatalf("envelope %d does not open: %v", i, err)
		}
	}
	for _, c := range []struct {
		idx  []uint32
		want []string
	}{{[]uint32{2}, []string{got["node01"]}}, {[]uint32{0, 2}, []string{got["leaf1"]}}, {[]uint32{0, 1, 2}, nil}} {
		var ps [][][]byte
		for _, i := range c.idx {
			ps = append(ps, envs[i].Path)
		}
		hs, err := PartProof(3, c.idx, ps)
		if err != nil || len(hs) != len(c.want) {
			t.Fatalf("part %v: %d hashes (%v), want %d", c.idx, len(hs), err, len(c.want))
		}
		for j := range hs {
			if h(hs[j]) != c.want[j] {
				t.Fatalf("part %v hash %d = %s, want %s", c.idx, j, h(hs[j]), c.want[j])
			}
		}
	}
}

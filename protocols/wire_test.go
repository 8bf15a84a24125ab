package protocols

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

func randBytes(r *rand.Rand, max int) []byte {
	if r.IntN(4) == 0 {
		return nil
	}
	b := make([]byte, r.IntN(max+1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// randName is a data type as Ferry takes them: letters, digits, '_', '-'.
func randName(r *rand.Rand) string {
	const chars = "abcXYZ019_-"
	b := make([]byte, r.IntN(20))
	for i := range b {
		b[i] = chars[r.IntN(len(chars))]
	}
	return string(b)
}

func randU64(r *rand.Rand) uint64 {
	switch r.IntN(4) {
	case 0:
		return 0
	case 1:
		return uint64(r.IntN(200))
	default:
		return r.Uint64() >> r.IntN(64)
	}
}

// TestHandEncodingIsProtoMarshal: AppendBody and AppendEnvelope write the
// bytes proto.Marshal writes, for every kind of field value, and decode back.
func TestHandEncodingIsProtoMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20_000 {
		b := &pb.Body{Origin: randBytes(r, 40), OriginVersion: randU64(r), Kind: pb.Kind(r.IntN(9)), DataType: randName(r),
			Payload: randBytes(r, 300), CreatedAtUnixNano: int64(randU64(r)), To: randBytes(r, 40), PrevVersion: randU64(r)}
		if i%7 == 0 {
			b.CreatedAtUnixNano = -b.CreatedAtUnixNano
		}
		want, err := proto.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		got := AppendBody(nil, b)
		if !bytes.Equal(got, want) || BodySize(b) != len(want) {
			t.Fatalf("body %v:\nhand  %x (size %d)\nproto %x", b, got, BodySize(b), want)
		}
		e := &pb.Envelope{Body: got, LeafIndex: uint32(randU64(r)), TreeSize: uint32(randU64(r)), RootSignature: randBytes(r, 64)}
		for range r.IntN(12) {
			e.Path = append(e.Path, randBytes(r, 32))
		}
		want, err = proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		got = MarshalEnvelope(e)
		if !bytes.Equal(got, want) || EnvelopeSize(e) != len(want) {
			t.Fatalf("envelope:\nhand  %x\nproto %x", got, want)
		}
		back := &pb.Envelope{}
		if err := proto.Unmarshal(got, back); err != nil || len(back.Path) != len(e.Path) || !bytes.Equal(back.Body, e.Body) {
			t.Fatalf("decode: %v %v", err, back)
		}
	}
}

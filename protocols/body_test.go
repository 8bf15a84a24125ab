package protocols

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

// bodySeeds are encodings the body decoder must read as proto.Unmarshal
// does: ordinary bodies, empty and repeated fields, an unknown field, a
// known field in another wire type, invalid UTF-8 in the data type,
// negative numbers, truncated input.
func bodySeeds(t testing.TB) [][]byte {
	t.Helper()
	full := &pb.Body{Origin: []byte("origin-peer-id-bytes"), OriginVersion: 42, Kind: pb.Kind_KIND_RESOURCE_CREATE,
		DataType: "orders", Payload: []byte(`{"id":"o-1","n":1}`), CreatedAtUnixNano: 1_700_000_000_000_000_000,
		To: []byte("to"), PrevVersion: 41}
	enc, err := proto.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	var seeds [][]byte
	seeds = append(seeds, enc, nil, enc[:len(enc)-3])
	// The same field twice: the last one wins.
	twice := protowire.AppendTag(append([]byte(nil), enc...), 4, protowire.BytesType)
	twice = protowire.AppendString(twice, "other")
	twice = protowire.AppendTag(twice, 2, protowire.VarintType)
	seeds = append(seeds, protowire.AppendVarint(twice, 7))
	// An unknown field (kept by proto.Unmarshal among its unknown fields).
	unknown := protowire.AppendTag(append([]byte(nil), enc...), 99, protowire.BytesType)
	seeds = append(seeds, protowire.AppendBytes(unknown, []byte("later")))
	// A known field in another wire type.
	wrong := protowire.AppendTag(nil, 2, protowire.BytesType)
	seeds = append(seeds, protowire.AppendBytes(wrong, []byte("x")))
	// Invalid UTF-8 in the data type.
	bad := protowire.AppendTag(nil, 4, protowire.BytesType)
	seeds = append(seeds, protowire.AppendBytes(bad, []byte{0xff, 0xfe}))
	// Negative kind and time (ten-byte varints), empty bytes fields.
	neg := protowire.AppendTag(nil, 3, protowire.VarintType)
	neg = protowire.AppendVarint(neg, uint64(0xffffffffffffffff))
	neg = protowire.AppendTag(neg, 6, protowire.VarintType)
	neg = protowire.AppendVarint(neg, uint64(1<<63))
	neg = protowire.AppendTag(neg, 5, protowire.BytesType)
	seeds = append(seeds, protowire.AppendBytes(neg, nil))
	return seeds
}

// sameAsProto checks that the body decoder reads raw as proto.Unmarshal
// does: both fail, or both give equal bodies (unknown fields included).
func sameAsProto(t *testing.T, raw []byte) {
	t.Helper()
	want := &pb.Body{}
	werr := proto.Unmarshal(raw, want)
	got := &pb.Body{}
	gerr := newBodyDecoder(len(raw)).decode(raw, got)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("%x: proto.Unmarshal says %v, the body decoder %v", raw, werr, gerr)
	}
	if werr == nil && !proto.Equal(want, got) {
		t.Fatalf("%x: proto.Unmarshal gives %v, the body decoder %v", raw, want, got)
	}
}

func TestBodyDecoderReadsAsProtoUnmarshal(t *testing.T) {
	for _, raw := range bodySeeds(t) {
		sameAsProto(t, raw)
	}
}

// TestBodyDecoderSharesAPartsOrigin: bodies of one part decoded with one
// decoder share their origin and data type, and do not alias the input.
func TestBodyDecoderSharesAPartsOrigin(t *testing.T) {
	raw, err := proto.Marshal(&pb.Body{Origin: []byte("o"), DataType: "t", Payload: []byte("p1")})
	if err != nil {
		t.Fatal(err)
	}
	d := newBodyDecoder(2 * len(raw))
	var a, b pb.Body
	if err := d.decode(raw, &a); err != nil {
		t.Fatal(err)
	}
	if err := d.decode(raw, &b); err != nil {
		t.Fatal(err)
	}
	if &a.Origin[0] != &b.Origin[0] {
		t.Fatal("two bodies of one origin hold two copies of it")
	}
	for i := range raw {
		raw[i] = 0
	}
	if string(a.Payload) != "p1" || string(a.Origin) != "o" || a.DataType != "t" {
		t.Fatalf("the decoded body changed with its input: %v", &a)
	}
}

func FuzzBodyDecoder(f *testing.F) {
	for _, s := range bodySeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw []byte) { sameAsProto(t, raw) })
}

// BenchmarkDecodeBody: a part's 256 bodies of 256-byte payloads decoded
// by proto.Unmarshal and by the body decoder, side by side.
//
//	go test ./protocols/ -run '^$' -bench DecodeBody -benchmem
func BenchmarkDecodeBody(b *testing.B) {
	var raws [][]byte
	total := 0
	for i := range 256 {
		raw, err := proto.Marshal(&pb.Body{Origin: make([]byte, 38), OriginVersion: uint64(i + 1), Kind: pb.Kind_KIND_RESOURCE_CREATE,
			DataType: "orders", Payload: make([]byte, 256), CreatedAtUnixNano: 1_700_000_000_000_000_000, PrevVersion: uint64(i)})
		if err != nil {
			b.Fatal(err)
		}
		raws = append(raws, raw)
		total += len(raw)
	}
	b.Run("proto", func(b *testing.B) {
		for b.Loop() {
			slab := make([]pb.Body, len(raws))
			for i, raw := range raws {
				if err := proto.Unmarshal(raw, &slab[i]); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("decoder", func(b *testing.B) {
		for b.Loop() {
			slab := make([]pb.Body, len(raws))
			d := newBodyDecoder(total)
			for i, raw := range raws {
				if err := d.decode(raw, &slab[i]); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

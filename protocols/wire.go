package protocols

import (
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ferrynet/ferry/protocols/pb"
)

// Bodies and envelopes are encoded on every change a node makes, so they
// are written field by field here rather than through proto.Marshal's
// reflection. The bytes are the ones proto.Marshal writes (known fields in
// field-number order, proto3 zero values left out); wire_test.go holds the
// two to each other.

// AppendBody appends the protobuf encoding of b to buf.
func AppendBody(buf []byte, b *pb.Body) []byte {
	buf = appendBytes(buf, 1, b.Origin)
	buf = appendVarint(buf, 2, b.OriginVersion)
	buf = appendVarint(buf, 3, uint64(b.Kind))
	buf = appendBytes(buf, 4, []byte(b.DataType))
	buf = appendBytes(buf, 5, b.Payload)
	buf = appendVarint(buf, 6, uint64(b.CreatedAtUnixNano))
	buf = appendBytes(buf, 7, b.To)
	buf = appendVarint(buf, 8, b.PrevVersion)
	return buf
}

// BodySize is the length of AppendBody's encoding of b.
func BodySize(b *pb.Body) int {
	return sizeBytes(1, len(b.Origin)) + sizeVarint(2, b.OriginVersion) + sizeVarint(3, uint64(b.Kind)) +
		sizeBytes(4, len(b.DataType)) + sizeBytes(5, len(b.Payload)) + sizeVarint(6, uint64(b.CreatedAtUnixNano)) +
		sizeBytes(7, len(b.To)) + sizeVarint(8, b.PrevVersion)
}

// AppendEnvelope appends the protobuf encoding of e to buf.
func AppendEnvelope(buf []byte, e *pb.Envelope) []byte {
	buf = appendBytes(buf, 1, e.Body)
	buf = appendVarint(buf, 2, uint64(e.LeafIndex))
	buf = appendVarint(buf, 3, uint64(e.TreeSize))
	for _, p := range e.Path {
		// Repeated: every element is written, empty ones too.
		buf = protowire.AppendTag(buf, 4, protowire.BytesType)
		buf = protowire.AppendBytes(buf, p)
	}
	buf = appendBytes(buf, 5, e.RootSignature)
	return buf
}

// EnvelopeSize is the length of AppendEnvelope's encoding of e.
func EnvelopeSize(e *pb.Envelope) int {
	n := sizeBytes(1, len(e.Body)) + sizeVarint(2, uint64(e.LeafIndex)) + sizeVarint(3, uint64(e.TreeSize)) +
		sizeBytes(5, len(e.RootSignature))
	for _, p := range e.Path {
		n += protowire.SizeTag(4) + protowire.SizeBytes(len(p))
	}
	return n
}

// MarshalEnvelope encodes e into a buffer of its exact size.
func MarshalEnvelope(e *pb.Envelope) []byte {
	return AppendEnvelope(make([]byte, 0, EnvelopeSize(e)), e)
}

func appendBytes(buf []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return buf
	}
	buf = protowire.AppendTag(buf, num, protowire.BytesType)
	return protowire.AppendBytes(buf, v)
}

func appendVarint(buf []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return buf
	}
	buf = protowire.AppendTag(buf, num, protowire.VarintType)
	return protowire.AppendVarint(buf, v)
}

func sizeBytes(num protowire.Number, n int) int {
	if n == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func sizeVarint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

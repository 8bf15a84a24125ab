package protocols

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
	"testing/iotest"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

// The fuzz targets of the wire decoders. Seeds are added in code; run one
// with e.g.
//
//	go test ./protocols/ -run '^$' -fuzz '^FuzzFrameReader$' -fuzztime 60s

// fuzzMaxFrame bounds the frame limit the fuzzer may pick: the largest frame a
// node accepts with the default limits. Larger limits only make the reader
// allocate more for a declared length, which is what max is for.
const fuzzMaxFrame = DefaultMaxMessageBytes + FrameOverhead

// encodeFrames frames messages as FrameWriter does.
func encodeFrames(t testing.TB, msgs ...proto.Message) []byte {
	t.Helper()
	var buf bytes.Buffer
	fw := NewFrameWriter(&buf, fuzzMaxFrame)
	for _, m := range msgs {
		if err := fw.Write(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// expectedFrame is what the next frame of data must be: the frame and the
// rest of the input, or the kind of error.
type expectedFrame struct {
	frame    []byte
	rest     []byte
	eof      bool // no byte left: io.EOF itself
	tooLarge bool // declared length over max: ErrFrameTooLarge
	err      bool // any other error (bad varint, truncated frame)
}

// nextFrame is an independent reading of the framing: a uvarint length, then
// that many bytes.
func nextFrame(data []byte, max int) expectedFrame {
	if len(data) == 0 {
		return expectedFrame{eof: true}
	}
	n, k := binary.Uvarint(data)
	if k <= 0 {
		return expectedFrame{err: true} // truncated (k == 0) or overflowing (k < 0) varint
	}
	if n > uint64(max) {
		return expectedFrame{tooLarge: true}
	}
	if uint64(len(data)-k) < n {
		return expectedFrame{err: true}
	}
	end := k + int(n)
	return expectedFrame{frame: data[k:end], rest: data[end:]}
}

func FuzzFrameReader(f *testing.F) {
	msg := &pb.Batch{Epoch: 99, Lane: 1, After: 3, Envelopes: []*pb.Envelope{{
		Body: []byte("body"), LeafIndex: 1, TreeSize: 2, Path: [][]byte{bytes.Repeat([]byte{0xaa}, 32)}, RootSignature: []byte("sig"),
	}}}
	one := encodeFrames(f, msg)
	three := encodeFrames(f, msg, &pb.Batch{}, &pb.Batch{After: 1 << 40})
	f.Add([]byte{}, uint32(1024))
	f.Add(one, uint32(1024))
	f.Add(three, uint32(1024))
	f.Add(one, uint32(len(one)-1))        // frame exactly at the limit
	f.Add(one, uint32(len(one)-2))        // one byte over the limit
	f.Add(one[:len(one)-3], uint32(1024)) // truncated body
	f.Add([]byte{0x00}, uint32(0))        // empty frame, zero limit
	f.Add([]byte{0x00, 0x00, 0x00}, uint32(16))
	f.Add([]byte{0x80}, uint32(16)) // truncated varint
	f.Add([]byte{0x80, 0x80, 0x80}, uint32(16))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, uint32(16)) // 2^64-1
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}, uint32(16)) // overflow
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, uint32(16))
	f.Add([]byte{0x81, 0x00}, uint32(16))                                             // non-minimal varint 1, no body
	f.Add([]byte{0x80, 0x80, 0x40}, uint32(fuzzMaxFrame))                             // 1 MiB declared, nothing sent
	f.Add([]byte{0x81, 0x80, 0x41}, uint32(fuzzMaxFrame))                             // 1 MiB + 16 KiB + 1 declared: over the limit
	f.Add(append([]byte{0x05, 0x08, 0x01, 0x10, 0x02, 0x2a}, 0x03, 0x0a), uint32(64)) // bad protobuf inside a good frame
	f.Add(append(bytes.Clone(three), 0x7f), uint32(1024))                             // good frames, then a truncated one

	f.Fuzz(func(t *testing.T, data []byte, max32 uint32) {
		max := int(max32 % (fuzzMaxFrame + 1))

		// Next, over a plain reader, against the independent reading.
		fr := NewFrameReader(bytes.NewReader(data), max)
		rest := data
		for i := 0; ; i++ {
			want := nextFrame(rest, max)
			got, err := fr.Next()
			if err == nil && len(got) > max {
				t.Fatalf("frame %d: %d bytes, over the limit %d", i, len(got), max)
			}
			switch {
			case want.eof:
				if err != io.EOF {
					t.Fatalf("frame %d: got %d bytes, %v; want io.EOF", i, len(got), err)
				}
			case want.tooLarge:
				if !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("frame %d: declared length over %d: got %v, want ErrFrameTooLarge", i, max, err)
				}
			case want.err:
				if err == nil || err == io.EOF || errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("frame %d: malformed input: got %d bytes, %v; want a read error", i, len(got), err)
				}
			default:
				if err != nil {
					t.Fatalf("frame %d: got %v, want a %d-byte frame", i, err, len(want.frame))
				}
				if !bytes.Equal(got, want.frame) {
					t.Fatalf("frame %d: got %x, want %x", i, got, want.frame)
				}
			}
			if err != nil {
				break
			}
			rest = want.rest
		}

		// Read, one byte at a time: the same frames, decoded.
		fr = NewFrameReader(iotest.OneByteReader(bytes.NewReader(data)), max)
		rest = data
		for i := 0; ; i++ {
			want := nextFrame(rest, max)
			m := &pb.Batch{}
			err := fr.Read(m)
			switch {
			case want.eof:
				if err != io.EOF {
					t.Fatalf("read %d: got %v, want io.EOF", i, err)
				}
			case want.tooLarge:
				if !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("read %d: got %v, want ErrFrameTooLarge", i, err)
				}
			case want.err:
				if err == nil || err == io.EOF || errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("read %d: malformed input: got %v, want a read error", i, err)
				}
			default:
				wantMsg := &pb.Batch{}
				wantErr := proto.Unmarshal(want.frame, wantMsg)
				if (err == nil) != (wantErr == nil) {
					t.Fatalf("read %d: got %v, decoding the frame alone gives %v", i, err, wantErr)
				}
				if err == nil && !proto.Equal(m, wantMsg) {
					t.Fatalf("read %d: got %v, want %v", i, m, wantMsg)
				}
			}
			if err != nil {
				break
			}
			rest = want.rest
		}
	})
}

// fuzzKey is a fixed ed25519 key, so that sealed envelopes, and with them the
// fuzz corpus, are the same on every run.
func fuzzKey(t testing.TB, seed byte) (crypto.PrivKey, peer.ID) {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{seed}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return priv, id
}

// sealedBatches seals a batch of five varied bodies and a batch of one.
func sealedBatches(t testing.TB) (batches [][]*pb.Envelope, origin peer.ID) {
	t.Helper()
	key, id := fuzzKey(t, 7)
	_, other := fuzzKey(t, 8)
	bodies := []*pb.Body{
		{Origin: []byte(id), OriginVersion: 1, Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "task",
			Payload: []byte(`{"id":"a","creator_id":"` + id.String() + `"}`), CreatedAtUnixNano: 1_700_000_000_000_000_000},
		{Origin: []byte(id), OriginVersion: 2, Kind: pb.Kind_KIND_RESOURCE_UPDATE, DataType: "task",
			Payload: []byte(`{"id":"a","done":true}`), CreatedAtUnixNano: 1_700_000_000_000_000_001},
		{Origin: []byte(id), OriginVersion: 3, Kind: pb.Kind_KIND_CONSIDERS, DataType: "task",
			Payload: []byte(`{"peer_ids":["` + other.String() + `"]}`), To: []byte(other)},
		{Origin: []byte(id), OriginVersion: 4, Kind: pb.Kind_KIND_PLANNER, DataType: "plan", Payload: []byte(`{}`), To: []byte(other)},
		{Origin: []byte(id), OriginVersion: 5, Kind: pb.Kind_KIND_RESOURCE_DELETE, DataType: "task", Payload: []byte(`{"id":"a"}`)},
	}
	var raw [][]byte
	for _, b := range bodies {
		v, err := proto.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		raw = append(raw, v)
	}
	single, err := proto.Marshal(&pb.Body{Origin: []byte(id), OriginVersion: 6, Kind: pb.Kind_KIND_REVIEW_REQUEST, DataType: "t"})
	if err != nil {
		t.Fatal(err)
	}
	for _, group := range [][][]byte{raw, {single}} {
		envs, err := Seal(key, group)
		if err != nil {
			t.Fatal(err)
		}
		batches = append(batches, envs)
	}
	return batches, id
}

// mutate applies edits to a copy of b: each edit is three bytes, an
// operation, a position and a value.
func mutate(b, edits []byte) []byte {
	out := bytes.Clone(b)
	for len(edits) >= 3 {
		op, pos, val := edits[0], int(edits[1]), edits[2]
		edits = edits[3:]
		switch op % 6 {
		case 0: // flip one bit
			if len(out) > 0 {
				out[pos%len(out)] ^= 1 << (val % 8)
			}
		case 1: // set a byte
			if len(out) > 0 {
				out[pos%len(out)] = val
			}
		case 2: // insert a byte
			p := pos % (len(out) + 1)
			out = append(out[:p], append([]byte{val}, out[p:]...)...)
		case 3: // delete a byte
			if len(out) > 0 {
				p := pos % len(out)
				out = append(out[:p], out[p+1:]...)
			}
		case 4: // truncate
			out = out[:pos%(len(out)+1)]
		case 5: // append
			out = append(out, val)
		}
	}
	return out
}

func checkOpenErr(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrMalformedEnvelope) {
		t.Fatalf("%s: error %v wraps neither ErrBadSignature nor ErrMalformedEnvelope", what, err)
	}
}

// checkOpened checks what a successful Open returned.
func checkOpened(t *testing.T, what string, env *pb.Envelope, body *pb.Body, origin peer.ID) {
	t.Helper()
	if body == nil {
		t.Fatalf("%s: verified with a nil body", what)
	}
	id, err := peer.IDFromBytes(body.Origin)
	if err != nil {
		t.Fatalf("%s: verified, but the body's origin %x is not a peer id: %v", what, body.Origin, err)
	}
	if id != origin {
		t.Fatalf("%s: Open returned origin %s, the body says %s", what, origin, id)
	}
	if err := origin.Validate(); err != nil {
		t.Fatalf("%s: verified origin %s is not valid: %v", what, origin, err)
	}
	if _, err := origin.ExtractPublicKey(); err != nil {
		t.Fatalf("%s: verified origin %s embeds no public key: %v", what, origin, err)
	}
	again := &pb.Body{}
	if err := proto.Unmarshal(env.Body, again); err != nil || !proto.Equal(again, body) {
		t.Fatalf("%s: returned body is not the envelope's body", what)
	}
}

func FuzzEnvelopeOpen(f *testing.F) {
	batches, _ := sealedBatches(f)
	// Genuine envelopes, so the fuzzer starts from inputs that verify.
	for bi, envs := range batches {
		for i, env := range envs {
			raw, err := proto.Marshal(env)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(raw, uint8(bi*8+i), []byte{})
		}
	}
	genuine, err := proto.Marshal(batches[0][2])
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{}, uint8(0), []byte{0, 10, 1})                        // flip a bit of the body
	f.Add(genuine[:len(genuine)-1], uint8(1), []byte{1, 3, 0})         // truncated signature; set a byte
	f.Add([]byte{0x0a, 0x00}, uint8(2), []byte{2, 0, 0x0a})            // empty body; insert a byte
	f.Add([]byte{0x0a, 0x02, 0x0a, 0x00}, uint8(3), []byte{3, 200, 0}) // body with an empty origin; delete a byte
	f.Add([]byte{0x18, 0xff, 0xff, 0xff, 0xff, 0x0f}, uint8(4), []byte{4, 20, 0, 5, 0, 0x28})
	f.Add([]byte("\x0a\x02\x0a\x00\x18\x80\x08"), uint8(8), []byte{5, 0, 0x28, 5, 0, 0x01}) // tree size over MaxTreeLeaves; unknown field appended
	f.Add(bytes.Repeat([]byte{0x22, 0x20}, 3), uint8(9), bytes.Repeat([]byte{0, 1, 2}, 4))

	f.Fuzz(func(t *testing.T, raw []byte, pick uint8, edits []byte) {
		// 1. Arbitrary bytes as an envelope.
		env := &pb.Envelope{}
		if err := proto.Unmarshal(raw, env); err == nil {
			body, origin, err := NewVerifier().Open(env)
			if err != nil {
				checkOpenErr(t, "arbitrary envelope", err)
			} else {
				checkOpened(t, "arbitrary envelope", env, body, origin)
			}
		}

		// 2. A genuine envelope with its body mutated: it verifies only if
		// the body bytes did not change, through the signature check and
		// through the verifier's cache of the batch root alike.
		envs := batches[int(pick/8)%len(batches)]
		orig := envs[int(pick%8)%len(envs)]
		mut := proto.Clone(orig).(*pb.Envelope)
		mut.Body = mutate(orig.Body, edits)
		unchanged := bytes.Equal(mut.Body, orig.Body)
		primed := NewVerifier()
		if _, _, err := primed.Open(orig); err != nil {
			t.Fatalf("genuine envelope does not verify: %v", err)
		}
		for name, v := range map[string]*Verifier{"fresh verifier": NewVerifier(), "primed verifier": primed} {
			body, origin, err := v.Open(mut)
			switch {
			case unchanged && err != nil:
				t.Fatalf("%s: unchanged body does not verify: %v", name, err)
			case !unchanged && err == nil:
				t.Fatalf("%s: mutated body verifies: %x (genuine %x)", name, mut.Body, orig.Body)
			case err != nil:
				checkOpenErr(t, name+", mutated body", err)
			default:
				checkOpened(t, name+", genuine body", mut, body, origin)
			}
		}

		// 3. The same edits on the whole encoded envelope: whatever still
		// decodes and verifies must carry one of the batch's genuine bodies
		// at its own place in a tree of the batch's size.
		enc, err := proto.Marshal(orig)
		if err != nil {
			t.Fatal(err)
		}
		menv := &pb.Envelope{}
		if proto.Unmarshal(mutate(enc, edits), menv) != nil {
			return
		}
		for name, v := range map[string]*Verifier{"fresh verifier": NewVerifier(), "primed verifier": primed} {
			body, origin, err := v.Open(menv)
			if err != nil {
				checkOpenErr(t, name+", mutated envelope", err)
				continue
			}
			checkOpened(t, name+", mutated envelope", menv, body, origin)
			if menv.TreeSize != orig.TreeSize || int(menv.LeafIndex) >= len(envs) ||
				!bytes.Equal(menv.Body, envs[menv.LeafIndex].Body) {
				t.Fatalf("%s: mutated envelope verifies with a body that was not signed at leaf %d of %d: %x",
					name, menv.LeafIndex, menv.TreeSize, menv.Body)
			}
		}
	})
}

func FuzzBatchReply(f *testing.F) {
	batches, _ := sealedBatches(f)
	env := batches[0][1]
	seeds := []proto.Message{
		&pb.Batch{Epoch: 2, Lane: 4, After: 3, Envelopes: []*pb.Envelope{env, env}},
		&pb.Batch{},
		&pb.Batch{After: ^uint64(0), Envelopes: []*pb.Envelope{{}}},
		&pb.Reply{Lane: 1, Epoch: 2, Through: 3},
		&pb.Reply{Lane: 2, Through: 9, Refused: []*pb.Refusal{{Version: 9, Reason: "data type \"x y\" is not valid"}}},
		&pb.Reply{Lane: 5, Report: true, WantSnapshot: true},
		&pb.Reply{Refused: []*pb.Refusal{{Version: 1, Equivocation: true}}},
		&pb.Hello{Network: "main", Name: "node-a", Version: "0.1.0"},
		&pb.Hello{Name: "ünïcödé ✓"},
	}
	for _, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0x08})                               // truncated varint field
	f.Add([]byte{0x1a, 0x02, 0xc3, 0x28})             // field 3 (Ack.error) with invalid UTF-8
	f.Add([]byte{0x2a, 0x05, 0x0a, 0x03, 'a', 'b'})   // envelope longer than the message
	f.Add([]byte{0x2a, 0x02, 0x2a, 0x00})             // nested field 5 inside the envelope
	f.Add([]byte{0xf8, 0xff, 0xff, 0xff, 0x0f, 0x01}) // unknown field, the largest number
	f.Add([]byte{0x0b, 0x0c})                         // group start and end
	f.Add([]byte{0x0a, 0x26, 0x00})                   // field 1 as bytes

	// Every message of ferry.proto: they are all decoded from peers.
	newMsgs := []func() proto.Message{
		func() proto.Message { return &pb.Batch{} },
		func() proto.Message { return &pb.Reply{} },
		func() proto.Message { return &pb.SnapshotChunk{} },
		func() proto.Message { return &pb.Hello{} },
		func() proto.Message { return &pb.Envelope{} },
		func() proto.Message { return &pb.Body{} },
		func() proto.Message { return &pb.ReviewRequest{} },
		func() proto.Message { return &pb.ReviewDecision{} },
		func() proto.Message { return &pb.SyncRequest{} },
		func() proto.Message { return &pb.SyncBatch{} },
		func() proto.Message { return &pb.SearchQuery{} },
		func() proto.Message { return &pb.SearchFrame{} },
		func() proto.Message { return &pb.SearchResults{} },
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		for _, newMsg := range newMsgs {
			m := newMsg()
			if proto.Unmarshal(data, m) != nil {
				continue
			}
			name := fmt.Sprintf("%T", m)
			b, err := proto.Marshal(m)
			if err != nil {
				t.Fatalf("%s decoded but does not encode again: %v", name, err)
			}
			again := newMsg()
			if err := proto.Unmarshal(b, again); err != nil {
				t.Fatalf("%s: re-encoded bytes do not decode: %v", name, err)
			}
			if !proto.Equal(m, again) {
				t.Fatalf("%s changed across an encode round trip: %v, then %v", name, m, again)
			}
			if _, err := (proto.MarshalOptions{Deterministic: true}).Marshal(m); err != nil {
				t.Fatalf("%s: deterministic encoding fails: %v", name, err)
			}
			// Through the framing, as a stream carries it.
			if len(b) > fuzzMaxFrame {
				continue
			}
			var buf bytes.Buffer
			fw := NewFrameWriter(&buf, fuzzMaxFrame)
			if err := fw.Write(m); err != nil {
				t.Fatalf("%s: frame: %v", name, err)
			}
			if err := fw.Flush(); err != nil {
				t.Fatal(err)
			}
			framed := newMsg()
			fr := NewFrameReader(&buf, fuzzMaxFrame)
			if err := fr.Read(framed); err != nil {
				t.Fatalf("%s: read back its frame: %v", name, err)
			}
			if !proto.Equal(m, framed) {
				t.Fatalf("%s changed through a frame: %v, then %v", name, m, framed)
			}
			if _, err := fr.Next(); err != io.EOF {
				t.Fatalf("%s: after its one frame: %v, want io.EOF", name, err)
			}
		}
	})
}

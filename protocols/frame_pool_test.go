package protocols

import (
	"bytes"
	"testing"

	"github.com/ferrynet/ferry/protocols/pb"
)

// Buffers are sized to the protocol's limit and reused after Release.
func TestFrameBuffersSizedAndPooled(t *testing.T) {
	for _, c := range []struct{ max, size int }{{1, 512}, {1 << 10, 2 << 10}, {4096, 8 << 10}, {1 << 20, 64 << 10}} {
		if _, size := bufferClass(c.max); size != c.size {
			t.Fatalf("frames of %d bytes get a %d byte buffer, want %d", c.max, size, c.size)
		}
	}
	var wire bytes.Buffer
	for i := range 3 {
		fw := NewFrameWriter(&wire, 4096)
		if err := fw.Write(&pb.Hello{Name: "n", HoldsVersion: uint64(i)}); err != nil {
			t.Fatal(err)
		}
		if err := fw.Flush(); err != nil {
			t.Fatal(err)
		}
		if fw.w.Size() != 8<<10 {
			t.Fatalf("writer buffer %d", fw.w.Size())
		}
		fw.Release()
	}
	fr := NewFrameReader(&wire, 4096)
	for i := range 3 {
		h := &pb.Hello{}
		if err := fr.Read(h); err != nil || h.HoldsVersion != uint64(i) {
			t.Fatalf("frame %d: %v %v", i, h, err)
		}
	}
	if fr.r.Size() != 8<<10 {
		t.Fatalf("reader buffer %d", fr.r.Size())
	}
	fr.Release()
	if fr.r != nil {
		t.Fatalf("a released reader keeps its buffer")
	}
}

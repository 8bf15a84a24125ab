package protocols

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// countingScope is a MemoryScope with a limit that counts what is reserved.
type countingScope struct{ used, peak, limit int }

func (s *countingScope) ReserveMemory(n int, _ uint8) error {
	if s.used+n > s.limit {
		return errors.New("over the limit")
	}
	s.used += n
	s.peak = max(s.peak, s.used)
	return nil
}

func (s *countingScope) ReleaseMemory(n int) { s.used -= n }

// A frame that claims a megabyte and sends a kilobyte gets a buffer sized
// by what arrived (the first chunk), not by the claim; the buffer is
// reserved in the reader's scope and given back on Release.
func TestFrameBufferGrowsWithWhatArrived(t *testing.T) {
	const claimed = 1_050_000
	wire := binary.AppendUvarint(nil, claimed)
	wire = append(wire, make([]byte, 1024)...)
	scope := &countingScope{limit: 64 << 20}
	fr := NewFrameReader(bytes.NewReader(wire), claimed).Account(scope)
	if _, err := fr.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read a cut frame: %v", err)
	}
	if cap(fr.buf) > frameChunk || scope.peak > frameChunk {
		t.Fatalf("a frame claiming %d bytes with 1 KiB sent took a %d byte buffer (%d reserved), want at most %d",
			claimed, cap(fr.buf), scope.peak, frameChunk)
	}
	fr.Release()
	if scope.used != 0 {
		t.Fatalf("%d bytes still reserved after Release", scope.used)
	}

	// A whole large frame comes through intact, its buffer no larger than
	// the frame.
	body := make([]byte, claimed)
	for i := range body {
		body[i] = byte(i * 7)
	}
	wire = append(binary.AppendUvarint(nil, claimed), body...)
	scope = &countingScope{limit: 64 << 20}
	fr = NewFrameReader(bytes.NewReader(wire), claimed).Account(scope)
	got, err := fr.Next()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("large frame: %v (equal %v)", err, bytes.Equal(got, body))
	}
	if cap(fr.buf) != claimed || scope.used != claimed {
		t.Fatalf("buffer %d, reserved %d, want %d", cap(fr.buf), scope.used, claimed)
	}
	fr.Release()

	// A scope that says no refuses the frame before the buffer is made.
	scope = &countingScope{limit: 100 << 10}
	fr = NewFrameReader(bytes.NewReader(wire), claimed).Account(scope)
	if _, err := fr.Next(); !errors.Is(err, ErrNoMemory) {
		t.Fatalf("frame over the scope's memory: %v, want ErrNoMemory", err)
	}
	if cap(fr.buf) > 2*frameChunk {
		t.Fatalf("refused frame left a %d byte buffer", cap(fr.buf))
	}
	fr.Release()
	if scope.used != 0 {
		t.Fatalf("%d bytes still reserved after Release", scope.used)
	}
}

package protocols

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/protobuf/proto"
)

// ErrFrameTooLarge is returned for a frame whose declared length exceeds the limit.
var ErrFrameTooLarge = errors.New("frame exceeds the size limit")

// ErrNoMemory is returned when a frame's buffer cannot be reserved in its
// memory scope (libp2p's resource manager said no).
var ErrNoMemory = errors.New("no memory for the frame")

// MemoryScope is where a FrameReader accounts its frame buffer: a libp2p
// stream's Scope() (network.ResourceScope) satisfies it.
type MemoryScope interface {
	ReserveMemory(size int, prio uint8) error
	ReleaseMemory(size int)
}

// FrameReader reads varint-delimited protobuf frames of bounded size.
//
// A frame's buffer grows with the bytes that arrived, never with the length
// the frame claims: it starts at frameChunk and doubles as the body comes
// in, up to the claimed length. A peer that claims a large frame and sends
// little costs this node little. With Account, the buffer is reserved in a
// resource-manager scope before it is allocated.
type FrameReader struct {
	r        *bufio.Reader
	max      int
	buf      []byte
	scope    MemoryScope
	reserved int
}

// frameChunk is the first allocation of a frame body larger than the
// buffer held; the buffer then doubles with what arrived.
const frameChunk = 64 << 10

// memoryPriority is the resource-manager priority of frame buffers: high
// (they are what a stream is for), below yamux's window reservations.
const memoryPriority = 204 // network.ReservationPriorityHigh

// Frame buffers: each reader and writer buffers at most maxFrameBuffer
// bytes, less when its protocol's frames are smaller (a hello holds 4 KiB,
// not 64), and takes its buffer from a pool of its size class. Release
// hands it back.
const (
	minFrameBuffer = 512
	maxFrameBuffer = 64 << 10
)

// bufferClass is the pool index and size of the buffer for frames of at
// most max bytes: the next power of two that holds a frame and its length,
// within minFrameBuffer..maxFrameBuffer.
func bufferClass(max int) (int, int) {
	size, class := minFrameBuffer, 0
	for size < max+binary.MaxVarintLen64 && size < maxFrameBuffer {
		size *= 2
		class++
	}
	return class, size
}

const bufferClasses = 8 // 512 B .. 64 KiB

var (
	readerPools [bufferClasses]sync.Pool
	writerPools [bufferClasses]sync.Pool
)

// NewFrameReader reads frames of at most max bytes from r.
func NewFrameReader(r io.Reader, max int) *FrameReader {
	class, size := bufferClass(max)
	br, _ := readerPools[class].Get().(*bufio.Reader)
	if br == nil {
		// Built on nil, then reset: NewReaderSize would hand back r itself
		// when r is a large enough bufio.Reader, and Release would pool it.
		br = bufio.NewReaderSize(nil, size)
	}
	br.Reset(r)
	return &FrameReader{r: br, max: max}
}

// Account reserves the reader's frame buffer in scope (a stream's
// Scope()) as it grows; Release gives the reservation back.
func (fr *FrameReader) Account(scope MemoryScope) *FrameReader {
	fr.scope = scope
	return fr
}

// Release returns the reader's buffer to its pool; the reader must not be
// used after.
func (fr *FrameReader) Release() {
	if fr.r == nil {
		return
	}
	fr.r.Reset(nil)
	class, _ := bufferClass(fr.max)
	readerPools[class].Put(fr.r)
	fr.r, fr.buf = nil, nil
	if fr.scope != nil && fr.reserved > 0 {
		fr.scope.ReleaseMemory(fr.reserved)
	}
	fr.reserved = 0
}

// Next reads the next frame into its internal buffer and returns it. The
// slice is valid until the next call.
func (fr *FrameReader) Next() ([]byte, error) {
	n, err := binary.ReadUvarint(fr.r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("read frame length: %w", err)
	}
	if n > uint64(fr.max) {
		return nil, fmt.Errorf("%w: %d > %d bytes", ErrFrameTooLarge, n, fr.max)
	}
	size := int(n)
	fr.buf = fr.buf[:0]
	for len(fr.buf) < size {
		if len(fr.buf) == cap(fr.buf) {
			if err := fr.grow(min(size, max(frameChunk, 2*cap(fr.buf)))); err != nil {
				return nil, err
			}
		}
		end := min(size, cap(fr.buf))
		if _, err := io.ReadFull(fr.r, fr.buf[len(fr.buf):end]); err != nil {
			return nil, fmt.Errorf("read frame body: %w", err)
		}
		fr.buf = fr.buf[:end]
	}
	return fr.buf, nil
}

// grow makes the buffer's capacity c, keeping what it holds, after
// reserving the difference in the reader's scope.
func (fr *FrameReader) grow(c int) error {
	if fr.scope != nil && c > fr.reserved {
		if err := fr.scope.ReserveMemory(c-fr.reserved, memoryPriority); err != nil {
			return fmt.Errorf("%w: %d bytes: %w", ErrNoMemory, c, err)
		}
		fr.reserved = c
	}
	b := make([]byte, len(fr.buf), c)
	copy(b, fr.buf)
	fr.buf = b
	return nil
}

// Read reads the next frame and unmarshals it into m.
func (fr *FrameReader) Read(m proto.Message) error {
	b, err := fr.Next()
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("decode %T: %w", m, err)
	}
	return nil
}

// Buffered reports whether a whole or partial frame is already buffered, so
// a writer can tell that more input is waiting.
func (fr *FrameReader) Buffered() int { return fr.r.Buffered() }

// FrameWriter writes varint-delimited protobuf frames into a buffered writer.
// The caller flushes when its queue drains, not after every frame.
type FrameWriter struct {
	w   *bufio.Writer
	max int
	buf []byte
}

// NewFrameWriter writes frames of at most max bytes to w.
func NewFrameWriter(w io.Writer, max int) *FrameWriter {
	class, size := bufferClass(max)
	bw, _ := writerPools[class].Get().(*bufio.Writer)
	if bw == nil {
		bw = bufio.NewWriterSize(nil, size)
	}
	bw.Reset(w)
	return &FrameWriter{w: bw, max: max}
}

// Release returns the writer's buffer to its pool (what was not flushed is
// dropped); the writer must not be used after.
func (fw *FrameWriter) Release() {
	if fw.w == nil {
		return
	}
	fw.w.Reset(nil)
	class, _ := bufferClass(fw.max)
	writerPools[class].Put(fw.w)
	fw.w, fw.buf = nil, nil
}

// Write appends one frame.
func (fw *FrameWriter) Write(m proto.Message) error {
	var err error
	fw.buf, err = proto.MarshalOptions{}.MarshalAppend(fw.buf[:0], m)
	if err != nil {
		return fmt.Errorf("encode %T: %w", m, err)
	}
	return fw.WriteRaw(fw.buf)
}

// WriteRaw appends one already encoded frame.
func (fw *FrameWriter) WriteRaw(b []byte) error {
	if len(b) > fw.max {
		return fmt.Errorf("%w: %d > %d bytes", ErrFrameTooLarge, len(b), fw.max)
	}
	var lb [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(lb[:], uint64(len(b)))
	if _, err := fw.w.Write(lb[:n]); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	if _, err := fw.w.Write(b); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}

// Flush writes out buffered frames.
func (fw *FrameWriter) Flush() error {
	if err := fw.w.Flush(); err != nil {
		return fmt.Errorf("flush frames: %w", err)
	}
	return nil
}

// Buffered is the number of bytes waiting for Flush.
func (fw *FrameWriter) Buffered() int { return fw.w.Buffered() }

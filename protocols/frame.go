package protocols

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"
)

// ErrFrameTooLarge is returned for a frame whose declared length exceeds the limit.
var ErrFrameTooLarge = errors.New("frame exceeds the size limit")

// FrameReader reads varint-delimited protobuf frames of bounded size.
type FrameReader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

// NewFrameReader reads frames of at most max bytes from r.
func NewFrameReader(r io.Reader, max int) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
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
	if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n)
	}
	fr.buf = fr.buf[:n]
	if _, err := io.ReadFull(fr.r, fr.buf); err != nil {
		return nil, fmt.Errorf("read frame body: %w", err)
	}
	return fr.buf, nil
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
	return &FrameWriter{w: bufio.NewWriterSize(w, 64<<10), max: max}
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

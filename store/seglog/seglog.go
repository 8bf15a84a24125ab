// Package seglog is Ferry's change log on disk: append-only segment files of
// records, each written once, in version order, and never rewritten.
//
// A segment is a file named by the first version it may hold
// (<20-digit version>.seg). It starts with an 8-byte magic, FERRYSG1, and a
// start record that names the segment before it, then holds records:
//
//	length  uint32  big-endian, of the payload
//	crc     uint32  big-endian, CRC-32C (Castagnoli) of the payload
//	payload         version uint64 | type byte | data
//
// One writer appends (Append writes a whole round with one write call; Sync
// makes everything appended durable with one fdatasync per file written);
// any number of readers read what is appended (Read, Iter) while it does.
// Versions never decrease along the log; records that are not changes (the
// start record) carry the version of the record before them.
//
// Open scans every segment, checks every record's CRC and builds a sparse
// index (one entry per IndexEvery records) from version to offset. In the last
// segment, records after those the caller knows to be durable (Options.Keep)
// are cut, and so is a torn tail: a partial or damaged record with no record
// the caller needs after it. A damaged record anywhere else, or a segment
// missing from the chain, fails Open with the file, the offset and what is
// wrong: nothing damaged is ever served.
//
// Why not a library: hashicorp/raft-wal and tidwall/wal both index records by
// consecutive integers (a raft log's indexes); Ferry's versions are sparse
// (they follow the clock), and the store needs to append a round of records
// in one write and sync it apart from the append. The format borrows their
// shape (and nats-server's message blocks'): length, checksum, payload, one
// file per segment, the tail checked at open.
package seglog

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/vfs"
)

// Magic starts every segment file.
const Magic = "FERRYSG1"

const (
	headerLen  = 8         // length + crc
	payloadMin = 9         // version + type
	maxRecord  = 256 << 20 // a record longer than this is damage, not data
)

// TypeStart is the type of a segment's first record: its data is the first
// version and the last version of the segment before it (zeros: none).
const TypeStart byte = 0

// TypeCommit is the type of a record that is not a change: what the caller
// commits with the records before it in the same Append (the store: the
// round's Pebble batch, so that one fdatasync of the log makes the whole
// round durable). It carries the version of the record before it. Readers
// pass over it as over a start record; Open offers those past Keep to
// Options.Commit.
const TypeCommit byte = 0xfe

// skipped tells the record types that are not changes: no reader sees them.
func skipped(typ byte) bool { return typ == TypeStart || typ == TypeCommit }

// Defaults.
const (
	DefaultSegmentBytes = 64 << 20
	DefaultIndexEvery   = 32
)

// prefillBytes: the active segment's file is written with zeros this far
// ahead of its data (up to SegmentBytes), so an append overwrites blocks the
// file already has and its fdatasync flushes data alone: an append that
// grew the file would make each fdatasync commit the file system's journal
// too (the file's new size), which on the project's VM costs about 50 µs
// of CPU more per sync (Pebble recycles its WAL files for the same
// reason). Zeros after the records read as the end of the data (Open keeps
// them); a sealed segment, and the active one at Close, are cut back to
// their records.
const prefillBytes = 1 << 20

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// readers are the buffered readers of Iter, kept for the next read.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 32<<10) }}

// ErrNotFound is returned by Read for a version the log does not hold.
var ErrNotFound = errors.New("not in the change log")

// ErrCorrupt is wrapped by every error that reports damage.
var ErrCorrupt = errors.New("change log damaged")

// Record is one entry of the log.
type Record struct {
	Version uint64
	Type    byte
	// Head, if any, is written just before Data, as one payload: a record
	// read back has both in Data. It lets a caller frame bytes it holds
	// (a change's body) with a header of its own without copying them
	// into one slice first; Append copies each once, into its write.
	Head []byte
	Data []byte
	// Skipped: IterSkip passed the record over unread (Data is nil).
	Skipped bool
}

// Options configure Open.
type Options struct {
	FS  vfs.FS // nil: the disk
	Dir string
	// SegmentBytes: a segment is sealed once it holds this much (a round is
	// never split across segments). Default DefaultSegmentBytes.
	SegmentBytes int64
	// IndexEvery: one index entry per this many records. Default DefaultIndexEvery.
	IndexEvery int
	// Keep is the last version the caller has recorded as durable; records
	// after it in the last segment were never answered, and Open cuts them.
	// KeepAll keeps every whole record.
	Keep    uint64
	KeepAll bool
	// Commit, when set, is offered at Open each commit record
	// (TypeCommit) past Keep, in log order, with the first version of its
	// segment; its Data is the function's only during the call. When it
	// accepts, the records up to it are kept as if Keep had named it (the
	// round it closes is durable with it); once it refuses one, or where
	// the log ends with records no accepted commit record follows, those
	// records are cut as Keep's rule says (with KeepAll nothing is cut, and
	// none is offered after one it refused). It is called at most once for
	// a record it accepts.
	Commit func(r Record, segment uint64) bool
	// LastSegment is the first version of the segment the caller last
	// recorded appending to (0: none recorded): Open fails, naming it, when
	// it is missing.
	LastSegment uint64
	Logger      *slog.Logger
}

type indexEntry struct {
	version uint64
	offset  int64
}

type segment struct {
	first   uint64 // from the name
	path    string
	f       vfs.File // read handle (and the write handle of the active segment)
	size    int64    // bytes of whole records (the end of the file's data)
	alloc   int64    // the file's size: zeros written ahead of the data (prefill)
	last    uint64   // version of its last record
	records int
	index   []indexEntry // sparse, in version order
}

// Log is an open segment log.
type Log struct {
	o   Options
	fs  vfs.FS
	log *slog.Logger

	mu       sync.RWMutex
	segs     []*segment // in order; the last one is active
	dirty    []*segment // written since the last Sync (the writer adds, Sync takes)
	syncMu   sync.Mutex // one Sync at a time
	closed   bool
	scratch  []byte
	zeros    []byte // prefill's
	sinceIdx int    // records since the active segment's last index entry
	keep     uint64 // Open: Options.Keep, moved on by each commit record accepted
}

// SegmentName is the file name of the segment that starts at version first.
func SegmentName(first uint64) string { return fmt.Sprintf("%020d.seg", first) }

// Open opens (or creates) the log in o.Dir.
func Open(o Options) (*Log, error) {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = DefaultSegmentBytes
	}
	if o.IndexEvery <= 0 {
		o.IndexEvery = DefaultIndexEvery
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	l := &Log{o: o, fs: o.FS, log: o.Logger, keep: o.Keep}
	if _, err := o.FS.Stat(o.Dir); err != nil {
		// A new directory: its entry in the parent is made durable, as
		// each new segment's entry is in it (syncDir).
		if err := o.FS.MkdirAll(o.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("change log %s: %w", o.Dir, err)
		}
		if err := syncPath(o.FS, o.FS.PathDir(o.Dir)); err != nil {
			return nil, err
		}
	}
	names, err := o.FS.List(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("change log %s: %w", o.Dir, err)
	}
	var firsts []uint64
	for _, n := range names {
		if !strings.HasSuffix(n, ".seg") {
			continue
		}
		v, err := strconv.ParseUint(strings.TrimSuffix(n, ".seg"), 10, 64)
		if err != nil || SegmentName(v) != n {
			continue
		}
		firsts = append(firsts, v)
	}
	slices.Sort(firsts)
	ok := false
	defer func() {
		if !ok {
			_ = l.closeFiles()
		}
	}()
	if o.LastSegment != 0 && !slices.Contains(firsts, o.LastSegment) {
		return nil, fmt.Errorf("%w: segment %s is missing from %s (the store recorded appending to it)", ErrCorrupt, SegmentName(o.LastSegment), o.Dir)
	}
	var prev *segment
	for i, first := range firsts {
		s, err := l.load(first, i == len(firsts)-1)
		if err != nil {
			return nil, err
		}
		if err := checkChain(prev, s, o.Dir); err != nil {
			return nil, err
		}
		l.segs = append(l.segs, s)
		prev = s
		if !o.KeepAll && i < len(firsts)-1 && s.last > l.keep {
			// Records past what the caller recorded durable in a segment
			// that is not the last: a crash came after a new segment was
			// started and before the rounds of this one were recorded.
			// Nobody was answered for them: the segments after this one
			// go, and this one is cut as the last.
			if err := l.dropAfter(i, firsts[i+1:]); err != nil {
				return nil, err
			}
			break
		}
	}
	if len(l.segs) > 0 {
		last := l.segs[len(l.segs)-1]
		if !o.KeepAll && l.keep > last.last {
			return nil, fmt.Errorf("%w: %s ends at version %d, but the store holds changes through %d: a later segment is missing or this one was cut",
				ErrCorrupt, last.path, last.last, l.keep)
		}
		if _, err := last.f.Stat(); err != nil {
			return nil, fmt.Errorf("change log %s: %w", last.path, err)
		}
	} else if !o.KeepAll && o.Keep > 0 {
		return nil, fmt.Errorf("%w: %s holds no segment, but the store holds changes through version %d: the segments are missing", ErrCorrupt, o.Dir, o.Keep)
	}
	ok = true
	return l, nil
}

// dropAfter removes the segments named by later (they hold only records
// after Keep) and reloads segment i as the last one, which cuts it.
func (l *Log) dropAfter(i int, later []uint64) error {
	for _, first := range later {
		path := l.fs.PathJoin(l.o.Dir, SegmentName(first))
		l.log.Warn("change log: removed a segment that holds only records never recorded durable", "file", path)
		if err := l.fs.Remove(path); err != nil {
			return fmt.Errorf("change log: remove %s: %w", path, err)
		}
	}
	if err := l.syncDir(); err != nil {
		return err
	}
	s := l.segs[i]
	l.segs = l.segs[:i]
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("change log: %s: %w", s.path, err)
	}
	s2, err := l.load(s.first, true)
	if err != nil {
		return err
	}
	l.segs = append(l.segs, s2)
	return nil
}

// checkChain checks that s's start record names prev.
func checkChain(prev, s *segment, dir string) error {
	pf, pl, err := s.startOf()
	if err != nil {
		return err
	}
	switch {
	case prev == nil && pf != 0:
		return fmt.Errorf("%w: segment %s is missing from %s (%s names it as the one before)", ErrCorrupt, SegmentName(pf), dir, s.path)
	case prev != nil && pf != prev.first:
		return fmt.Errorf("%w: segment %s is missing from %s (%s names it as the one before, %s is there)", ErrCorrupt, SegmentName(pf), dir, s.path, SegmentName(prev.first))
	case prev != nil && pl != prev.last:
		return fmt.Errorf("%w: %s ends at version %d but %s says the segment before it ended at %d: records are missing", ErrCorrupt, prev.path, prev.last, s.path, pl)
	}
	return nil
}

// startOf reads the segment's start record.
func (s *segment) startOf() (prevFirst, prevLast uint64, err error) {
	var buf [headerLen + payloadMin + 16]byte
	if _, err := s.f.ReadAt(buf[:], int64(len(Magic))); err != nil {
		return 0, 0, fmt.Errorf("%w: %s offset %d: start record: %v", ErrCorrupt, s.path, len(Magic), err)
	}
	d := buf[headerLen+payloadMin:]
	return binary.BigEndian.Uint64(d), binary.BigEndian.Uint64(d[8:]), nil
}

// load opens one segment, checks its records and indexes them. In the last
// segment it cuts what follows the records to keep.
func (l *Log) load(first uint64, last bool) (*segment, error) {
	path := l.fs.PathJoin(l.o.Dir, SegmentName(first))
	f, err := l.fs.OpenReadWrite(path)
	if err != nil {
		return nil, fmt.Errorf("change log: open %s: %w", path, err)
	}
	s := &segment{first: first, path: path, f: f, last: first}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("change log: %s: %w", path, err)
	}
	fileSize := fi.Size()
	var magic [len(Magic)]byte
	if _, err := f.ReadAt(magic[:], 0); err != nil || string(magic[:]) != Magic {
		if last && fileSize < int64(len(Magic)+headerLen+payloadMin+16) {
			// A segment created by a round that never finished its first
			// write: nothing in it was answered.
			if err := l.resetSegment(s); err != nil {
				return nil, err
			}
			return s, nil
		}
		return nil, fmt.Errorf("%w: %s offset 0: not a segment (bad magic)", ErrCorrupt, path)
	}
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, fileSize), 1<<20)
	if _, err := r.Discard(len(Magic)); err != nil {
		return nil, fmt.Errorf("change log: %s: %w", path, err)
	}
	off := int64(len(Magic))
	var hdr [headerLen]byte
	var buf []byte
	n := 0
	// pend is where records past Keep began that no accepted commit
	// record has followed yet (Options.Commit): what the segment was there.
	type mark struct {
		off     int64
		n, idx  int
		version uint64
	}
	var pend *mark
	refused := false
	zeroFrom := fileSize // where the prefilled zeros start (fileSize: none)
	for off < fileSize {
		bad := func(what string) error {
			return fmt.Errorf("%w: %s offset %d: %s", ErrCorrupt, path, off, what)
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if last {
				break // a partial header: torn
			}
			return nil, bad("a partial record header at the end of a sealed segment")
		}
		size := binary.BigEndian.Uint32(hdr[:4])
		if size < payloadMin || size > maxRecord || off+headerLen+int64(size) > fileSize {
			if last {
				if hdr == [headerLen]byte{} && zerosToEnd(r) {
					zeroFrom = off // prefilled, never written: the end of the data
				}
				break
			}
			return nil, bad(fmt.Sprintf("record length %d is impossible", size))
		}
		buf = slices.Grow(buf[:0], int(size))[:size]
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, bad(err.Error())
		}
		if crc32.Checksum(buf, crcTable) != binary.BigEndian.Uint32(hdr[4:]) {
			if last {
				break
			}
			return nil, bad("checksum mismatch")
		}
		v := binary.BigEndian.Uint64(buf)
		if n == 0 && buf[8] != TypeStart {
			return nil, bad("the first record is not a start record")
		}
		if v < s.last && n > 0 {
			return nil, bad(fmt.Sprintf("version %d after %d", v, s.last))
		}
		if l.o.KeepAll && n > 0 && v > l.keep && l.o.Commit != nil && buf[8] == TypeCommit && !refused {
			// Every whole record is kept; the commit records are offered all
			// the same (a store rebuilt after damage replays what it can).
			if l.o.Commit(Record{Version: v, Type: TypeCommit, Data: buf[payloadMin:]}, first) {
				l.keep = v
			} else {
				refused = true
			}
		}
		if !l.o.KeepAll && n > 0 && v > l.keep {
			if l.o.Commit == nil || (refused && last) {
				if last {
					break // never answered: cut below
				}
			} else if pend == nil {
				pend = &mark{off: off, n: n, idx: len(s.index), version: s.last}
			}
			if pend != nil && buf[8] == TypeCommit && !refused {
				if l.o.Commit(Record{Version: v, Type: TypeCommit, Data: buf[payloadMin:]}, first) {
					l.keep, pend = v, nil
				} else if refused = true; last {
					break
				}
			}
		}
		if n%l.o.IndexEvery == 0 {
			s.index = append(s.index, indexEntry{version: v, offset: off})
		}
		n++
		s.last = v
		off += headerLen + int64(size)
	}
	if pend != nil && last {
		// Records past Keep that no accepted commit record follows: cut
		// below, as the records of a round never answered are.
		off, n, s.last, s.index = pend.off, pend.n, pend.version, s.index[:pend.idx]
	}
	s.records = n
	s.size = off
	if last {
		if n == 0 {
			if err := l.resetSegment(s); err != nil {
				return nil, err
			}
			return s, nil
		}
		s.alloc = fileSize
		if off < zeroFrom {
			// The records to keep are whole; what follows them (a torn
			// write, or rounds never answered) goes.
			if err := l.checkNoKeptAfter(s, off, fileSize); err != nil {
				return nil, err
			}
			l.log.Warn("change log: cut a torn tail", "file", path, "offset", off, "bytes", fileSize-off)
			if err := cut(f, off, fileSize); err != nil {
				return nil, fmt.Errorf("change log: cut %s at %d: %w", path, off, err)
			}
			if err := f.Sync(); err != nil {
				return nil, fmt.Errorf("change log: sync %s: %w", path, err)
			}
			s.alloc = off
		}
		l.sinceIdx = (n - 1) % l.o.IndexEvery
	}
	return s, nil
}

// zerosToEnd reads r to its end and tells whether it held zeros alone.
func zerosToEnd(r *bufio.Reader) bool {
	for {
		b, err := r.Peek(r.Buffered())
		for _, c := range b {
			if c != 0 {
				return false
			}
		}
		if _, derr := r.Discard(len(b)); derr != nil {
			return false
		}
		if err != nil {
			return false
		}
		if _, err := r.Peek(1); err == io.EOF {
			return true
		} else if err != nil {
			return false
		}
	}
}

// checkNoKeptAfter fails when a damaged record of the last segment stands
// before records the caller needs (versions up to Keep): that is damage,
// not a torn tail.
func (l *Log) checkNoKeptAfter(s *segment, off, fileSize int64) error {
	if l.o.KeepAll || s.last >= l.keep {
		return nil
	}
	return fmt.Errorf("%w: %s offset %d: a damaged record; the records after it held versions up to %d the store had recorded durable (the log reached %d)",
		ErrCorrupt, s.path, off, l.keep, s.last)
}

// cut drops a file's bytes from off on: truncated where the file system
// can, zeroed (read as the end of the data) where it cannot.
func cut(f vfs.File, off, size int64) error {
	if t, ok := f.(interface{ Truncate(int64) error }); ok {
		return t.Truncate(off)
	}
	if size <= off {
		return nil
	}
	_, err := f.WriteAt(make([]byte, size-off), off)
	return err
}

// resetSegment rewrites a segment that holds nothing durable as empty (its
// magic and start record), keeping its name.
func (l *Log) resetSegment(s *segment) error {
	prevFirst, prevLast := uint64(0), uint64(0)
	if n := len(l.segs); n > 0 {
		prevFirst, prevLast = l.segs[n-1].first, l.segs[n-1].last
	}
	b := l.startBytes(s.first, prevFirst, prevLast)
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("change log: reset %s: %w", s.path, err)
	}
	if err := cut(s.f, 0, fi.Size()); err != nil {
		return fmt.Errorf("change log: reset %s: %w", s.path, err)
	}
	if _, err := s.f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("change log: reset %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("change log: sync %s: %w", s.path, err)
	}
	s.size, s.alloc, s.records, s.last = int64(len(b)), int64(len(b)), 1, prevLast
	s.index = []indexEntry{{version: s.last, offset: int64(len(Magic))}}
	l.sinceIdx = 0
	return nil
}

func (l *Log) startBytes(first, prevFirst, prevLast uint64) []byte {
	var d [16]byte
	binary.BigEndian.PutUint64(d[:], prevFirst)
	binary.BigEndian.PutUint64(d[8:], prevLast)
	b := append([]byte(nil), Magic...)
	return appendRecord(b, Record{Version: prevLast, Type: TypeStart, Data: d[:]})
}

func appendRecord(b []byte, r Record) []byte {
	size := payloadMin + len(r.Head) + len(r.Data)
	b = binary.BigEndian.AppendUint32(b, uint32(size))
	crcAt := len(b)
	b = append(b, 0, 0, 0, 0)
	start := len(b)
	b = binary.BigEndian.AppendUint64(b, r.Version)
	b = append(b, r.Type)
	b = append(b, r.Head...)
	b = append(b, r.Data...)
	binary.BigEndian.PutUint32(b[crcAt:], crc32.Checksum(b[start:], crcTable))
	return b
}

// Last is the version of the last record appended (0: none).
func (l *Log) Last() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if len(l.segs) == 0 {
		return 0
	}
	return l.segs[len(l.segs)-1].last
}

// Active is the first version of the segment appends go to (0: none yet).
func (l *Log) Active() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if len(l.segs) == 0 {
		return 0
	}
	return l.segs[len(l.segs)-1].first
}

// Full tells whether the next Append starts a new segment.
func (l *Log) Full() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	n := len(l.segs)
	return n == 0 || l.segs[n-1].size >= l.o.SegmentBytes
}

// Append writes recs, in version order and not below Last, with one write
// call. They are readable at once and durable after the next Sync. On an
// error nothing of them is kept. Only one goroutine appends.
func (l *Log) Append(recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	l.mu.RLock()
	closed := l.closed
	var s *segment
	if n := len(l.segs); n > 0 {
		s = l.segs[n-1]
	}
	l.mu.RUnlock()
	if closed {
		return errors.New("change log closed")
	}
	prevLast := uint64(0)
	if s != nil {
		prevLast = s.last
	}
	for i, r := range recs {
		if r.Version < prevLast || (i > 0 && r.Version < recs[i-1].Version) {
			return fmt.Errorf("change log: version %d appended after %d", r.Version, max(prevLast, recs[max(i-1, 0)].Version))
		}
		if r.Type == TypeStart {
			return errors.New("change log: a start record cannot be appended")
		}
	}
	if s == nil || s.size >= l.o.SegmentBytes {
		var err error
		if s, err = l.roll(s, recs[0].Version); err != nil {
			return err
		}
	}
	b := l.scratch[:0]
	var idx []indexEntry
	since := l.sinceIdx
	off := s.size
	for _, r := range recs {
		since++
		if since >= l.o.IndexEvery {
			idx = append(idx, indexEntry{version: r.Version, offset: off + int64(len(b))})
			since = 0
		}
		b = appendRecord(b, r)
	}
	l.scratch = b[:0]
	if cap(l.scratch) > 16<<20 {
		l.scratch = nil
	}
	if _, err := s.f.WriteAt(b, off); err != nil {
		if cerr := cut(s.f, off, max(s.alloc, off+int64(len(b)))); cerr != nil {
			err = errors.Join(err, fmt.Errorf("undo the partial append: %w", cerr))
		}
		s.alloc = off
		return fmt.Errorf("change log: append to %s: %w", s.path, err)
	}
	l.prefill(s, off+int64(len(b)))
	l.mu.Lock()
	s.size = off + int64(len(b))
	s.records += len(recs)
	s.last = recs[len(recs)-1].Version
	s.index = append(s.index, idx...)
	if len(l.dirty) == 0 || l.dirty[len(l.dirty)-1] != s {
		l.dirty = append(l.dirty, s)
	}
	l.mu.Unlock()
	l.sinceIdx = since
	return nil
}

// prefill writes zeros after the active segment's data (its end: end) when
// what was written ahead is used up (prefillBytes). It is best effort: when
// it fails (a full disk) appends grow the file.
func (l *Log) prefill(s *segment, end int64) {
	if end < s.alloc || end >= l.o.SegmentBytes {
		s.alloc = max(s.alloc, end)
		return
	}
	to := min(end+prefillBytes, l.o.SegmentBytes)
	if len(l.zeros) < int(to-end) {
		l.zeros = make([]byte, min(prefillBytes, l.o.SegmentBytes))
	}
	if _, err := s.f.WriteAt(l.zeros[:to-end], end); err != nil {
		_ = cut(s.f, end, to)
		s.alloc = end
		return
	}
	s.alloc = to
}

// trim cuts a segment's file back to its records (the zeros of prefill go)
// and syncs it.
func (s *segment) trim() error {
	if s.alloc > s.size {
		if err := cut(s.f, s.size, s.alloc); err != nil {
			return fmt.Errorf("change log: cut %s at %d: %w", s.path, s.size, err)
		}
		s.alloc = s.size
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("change log: sync %s: %w", s.path, err)
	}
	return nil
}

// roll seals the active segment (prev) and starts one at version first.
func (l *Log) roll(prev *segment, first uint64) (*segment, error) {
	prevFirst, prevLast := uint64(0), uint64(0)
	if prev != nil {
		prevFirst, prevLast = prev.first, prev.last
		first = max(first, prevLast+1)
		// A sealed segment is whole on disk, and ends with its last
		// record, before the next one exists: after a crash only the last
		// segment can end torn.
		if err := prev.trim(); err != nil {
			return nil, err
		}
	}
	path := l.fs.PathJoin(l.o.Dir, SegmentName(first))
	f, err := l.fs.Create(path)
	if err != nil {
		return nil, fmt.Errorf("change log: create %s: %w", path, err)
	}
	b := l.startBytes(first, prevFirst, prevLast)
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		_ = l.fs.Remove(path)
		return nil, fmt.Errorf("change log: create %s: %w", path, err)
	}
	// The new name must be durable before anything in it is answered.
	if err := f.Sync(); err != nil {
		_ = f.Close()
		_ = l.fs.Remove(path)
		return nil, fmt.Errorf("change log: sync %s: %w", path, err)
	}
	if err := l.syncDir(); err != nil {
		_ = f.Close()
		_ = l.fs.Remove(path)
		return nil, err
	}
	s := &segment{first: first, path: path, f: f, size: int64(len(b)), alloc: int64(len(b)), last: prevLast, records: 1,
		index: []indexEntry{{version: prevLast, offset: int64(len(Magic))}}}
	l.mu.Lock()
	l.segs = append(l.segs, s)
	l.mu.Unlock()
	l.sinceIdx = 0
	return s, nil
}

func (l *Log) syncDir() error { return syncPath(l.fs, l.o.Dir) }

// syncPath makes the entries of directory dir durable.
func syncPath(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return fmt.Errorf("change log: open %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("change log: sync %s: %w", dir, err)
	}
	return nil
}

// Sync makes every record appended so far durable: one fdatasync per
// segment written since the last Sync.
func (l *Log) Sync() error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	dirty := l.dirty
	l.dirty = nil
	l.mu.Unlock()
	for i, s := range dirty {
		if err := s.f.SyncData(); err != nil {
			l.mu.Lock()
			l.dirty = append(dirty[i:], l.dirty...)
			l.mu.Unlock()
			return fmt.Errorf("change log: fdatasync %s: %w", s.path, err)
		}
	}
	return nil
}

// Read returns the first record of version v that is a change (not a start
// or commit record).
func (l *Log) Read(v uint64) (Record, error) {
	var out Record
	found := false
	err := l.Iter(v, func(r Record) bool {
		if r.Version == v {
			out, found = r, true
		}
		return false
	})
	if err != nil {
		return Record{}, err
	}
	if !found {
		return Record{}, ErrNotFound
	}
	return out, nil
}

// Iter calls fn for every record (start and commit records aside) with a version of
// at least from, in log order, until fn returns false. Data is fn's to keep.
func (l *Log) Iter(from uint64, fn func(Record) bool) error { return l.IterSkip(from, nil, fn) }

// IterSkip is Iter for a reader that holds some records already: a record
// whose version skip (when set) reports is passed to fn with Data nil, its
// payload not read (nor checked against its checksum).
func (l *Log) IterSkip(from uint64, skip func(version uint64) bool, fn func(Record) bool) error {
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return errors.New("change log closed")
	}
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].first > from })
	if i > 0 {
		i--
	}
	type span struct {
		s     *segment
		start int64
		end   int64
	}
	var spans []span
	for ; i < len(l.segs); i++ {
		s := l.segs[i]
		if s.last < from {
			continue
		}
		start := int64(len(Magic))
		j := sort.Search(len(s.index), func(j int) bool { return s.index[j].version >= from })
		if j > 0 {
			start = s.index[j-1].offset
		}
		spans = append(spans, span{s: s, start: start, end: s.size})
	}
	l.mu.RUnlock()
	for _, sp := range spans {
		more, err := l.iterSpan(sp.s, sp.start, sp.end, from, skip, fn)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func (l *Log) iterSpan(s *segment, start, end int64, from uint64, skip func(uint64) bool, fn func(Record) bool) (bool, error) {
	r := readers.Get().(*bufio.Reader)
	defer readers.Put(r)
	r.Reset(io.NewSectionReader(s.f, start, end-start))
	off := start
	var hdr [headerLen]byte
	for off < end {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return false, fmt.Errorf("%w: %s offset %d: %v", ErrCorrupt, s.path, off, err)
		}
		size := binary.BigEndian.Uint32(hdr[:4])
		if size < payloadMin || off+headerLen+int64(size) > end {
			return false, fmt.Errorf("%w: %s offset %d: record length %d is impossible", ErrCorrupt, s.path, off, size)
		}
		if head, err := r.Peek(payloadMin); err == nil {
			ver, typ := binary.BigEndian.Uint64(head), head[8]
			asked := !skipped(typ) && ver >= from
			if !asked || (skip != nil && skip(ver)) {
				// Not asked for, or held by the reader: passed over
				// unread (a damaged length shows in the checksum of the
				// record read after it).
				if _, err := r.Discard(int(size)); err != nil {
					return false, fmt.Errorf("%w: %s offset %d: %v", ErrCorrupt, s.path, off, err)
				}
				off += headerLen + int64(size)
				if asked && !fn(Record{Version: ver, Type: typ, Skipped: true}) {
					return false, nil
				}
				continue
			}
		}
		buf := make([]byte, size)
		if _, err := io.ReadFull(r, buf); err != nil {
			return false, fmt.Errorf("%w: %s offset %d: %v", ErrCorrupt, s.path, off, err)
		}
		if crc32.Checksum(buf, crcTable) != binary.BigEndian.Uint32(hdr[4:]) {
			return false, fmt.Errorf("%w: %s offset %d: checksum mismatch", ErrCorrupt, s.path, off)
		}
		off += headerLen + int64(size)
		rec := Record{Version: binary.BigEndian.Uint64(buf), Type: buf[8], Data: buf[payloadMin:]}
		if skipped(rec.Type) || rec.Version < from {
			continue
		}
		if !fn(rec) {
			return false, nil
		}
	}
	return true, nil
}

// Size is the bytes the segments hold.
func (l *Log) Size() int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var n int64
	for _, s := range l.segs {
		n += s.size
	}
	return n
}

// Segments lists the segment files, oldest first.
func (l *Log) Segments() []string {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]string, len(l.segs))
	for i, s := range l.segs {
		out[i] = s.path
	}
	return out
}

// Close syncs and closes every segment; the active one ends with its last
// record again.
func (l *Log) Close() error {
	err := l.Sync()
	l.mu.Lock()
	l.closed = true
	if n := len(l.segs); n > 0 && err == nil {
		err = l.segs[n-1].trim()
	}
	l.mu.Unlock()
	return errors.Join(err, l.closeFiles())
}

func (l *Log) closeFiles() error {
	var errs []error
	for _, s := range l.segs {
		if err := s.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, fmt.Errorf("change log: close %s: %w", s.path, err))
		}
	}
	return errors.Join(errs...)
}

// LastAtMost returns the last record (start and commit records aside) with a version
// of at most limit that match accepts, searching back from limit one index
// span at a time.
func (l *Log) LastAtMost(limit uint64, match func(Record) bool) (Record, bool, error) {
	type span struct {
		s          *segment
		start, end int64
	}
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return Record{}, false, errors.New("change log closed")
	}
	var spans []span // newest first
	for i := len(l.segs) - 1; i >= 0; i-- {
		s := l.segs[i]
		if s.first > limit && i > 0 {
			continue
		}
		j := sort.Search(len(s.index), func(j int) bool { return s.index[j].version > limit })
		end := s.size
		if j < len(s.index) {
			end = s.index[j].offset
		}
		for j--; j >= 0; j-- {
			spans = append(spans, span{s: s, start: s.index[j].offset, end: end})
			end = s.index[j].offset
		}
	}
	l.mu.RUnlock()
	for _, sp := range spans {
		var found Record
		ok := false
		_, err := l.iterSpan(sp.s, sp.start, sp.end, 0, nil, func(r Record) bool {
			if r.Version <= limit && match(r) {
				found, ok = r, true
			}
			return true
		})
		if err != nil {
			return Record{}, false, err
		}
		if ok {
			return found, true, nil
		}
	}
	return Record{}, false, nil
}

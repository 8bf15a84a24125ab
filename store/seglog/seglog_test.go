package seglog

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func rec(v uint64) Record {
	return Record{Version: v, Type: 1, Data: []byte(fmt.Sprintf("change %d %s", v, strings.Repeat("x", int(v%50))))}
}

func openT(t *testing.T, dir string, o Options) *Log {
	t.Helper()
	o.Dir = dir
	l, err := Open(o)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return l
}

// fill appends versions 10, 20, ..., 10*n in rounds of 7.
func fill(t *testing.T, l *Log, n int) {
	t.Helper()
	var round []Record
	for i := 1; i <= n; i++ {
		round = append(round, rec(uint64(10*i)))
		if len(round) == 7 || i == n {
			if err := l.Append(round); err != nil {
				t.Fatal(err)
			}
			round = nil
		}
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
}

func checkAll(t *testing.T, l *Log, n int) {
	t.Helper()
	want := uint64(10)
	err := l.Iter(0, func(r Record) bool {
		if r.Version != want || !bytes.Equal(r.Data, rec(want).Data) {
			t.Fatalf("record %d: got version %d %q", want, r.Version, r.Data)
		}
		want += 10
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if want != uint64(10*n+10) {
		t.Fatalf("iterated to %d, want %d records", want/10-1, n)
	}
	for _, v := range []uint64{10, 20, 330, uint64(10 * n)} {
		r, err := l.Read(v)
		if err != nil || !bytes.Equal(r.Data, rec(v).Data) {
			t.Fatalf("read %d: %v %q", v, err, r.Data)
		}
	}
	if _, err := l.Read(15); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read of an absent version: %v", err)
	}
	var from []uint64
	_ = l.Iter(335, func(r Record) bool { from = append(from, r.Version); return len(from) < 3 })
	if fmt.Sprint(from) != "[340 350 360]" {
		t.Fatalf("iter from 335: %v", from)
	}
}

// TestIterSkipPassesOverUnread: a record the reader holds reaches fn in
// its place without its data; the others are read as Iter reads them.
func TestIterSkipPassesOverUnread(t *testing.T) {
	l := openT(t, t.TempDir(), Options{SegmentBytes: 4 << 10, IndexEvery: 4, KeepAll: true})
	fill(t, l, 200)
	var got []uint64
	err := l.IterSkip(105, func(v uint64) bool { return v%20 == 0 }, func(r Record) bool {
		switch {
		case r.Version%20 == 0 && (!r.Skipped || r.Data != nil):
			t.Fatalf("record %d was read (skipped %v)", r.Version, r.Skipped)
		case r.Version%20 != 0 && (r.Skipped || !bytes.Equal(r.Data, rec(r.Version).Data)):
			t.Fatalf("record %d: skipped %v, data %q", r.Version, r.Skipped, r.Data)
		}
		got = append(got, r.Version)
		return len(got) < 5
	})
	if err != nil || fmt.Sprint(got) != "[110 120 130 140 150]" {
		t.Fatalf("iter from 105: %v (%v)", got, err)
	}
	_ = l.Close()
}

func TestAppendReadReopen(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 4 << 10, IndexEvery: 4, KeepAll: true}
	l := openT(t, dir, o)
	fill(t, l, 500)
	if len(l.Segments()) < 5 {
		t.Fatalf("only %d segments", len(l.Segments()))
	}
	checkAll(t, l, 500)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openT(t, dir, Options{SegmentBytes: 4 << 10, IndexEvery: 4, Keep: 5000})
	checkAll(t, l, 500)
	if err := l.Append([]Record{rec(5010)}); err != nil {
		t.Fatal(err)
	}
	if err := l.Append([]Record{rec(5000)}); err == nil {
		t.Fatal("a version below the last was appended")
	}
	checkAll(t, l, 501)
	_ = l.Close()
}

func lastSeg(t *testing.T, dir string) string {
	m, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(m) == 0 {
		t.Fatal("no segment")
	}
	return m[len(m)-1]
}

func TestTornTailIsCut(t *testing.T) {
	for name, tail := range map[string][]byte{
		"garbage":     bytes.Repeat([]byte{0xA5, 0x17, 0x00, 0x42}, 50),
		"half record": appendRecord(nil, rec(9999))[:20],
		"zeros":       make([]byte, 300),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			l := openT(t, dir, Options{SegmentBytes: 4 << 10, KeepAll: true})
			fill(t, l, 100)
			_ = l.Close()
			f, err := os.OpenFile(lastSeg(t, dir), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = f.Write(tail)
			_ = f.Close()
			l = openT(t, dir, Options{SegmentBytes: 4 << 10, Keep: 1000})
			checkAll(t, l, 100)
			fill(t, l, 0)
			if err := l.Append([]Record{rec(1010)}); err != nil {
				t.Fatal(err)
			}
			_ = l.Close()
			l = openT(t, dir, Options{SegmentBytes: 4 << 10, Keep: 1010})
			checkAll(t, l, 101)
			_ = l.Close()
		})
	}
}

func TestUnansweredRecordsAreCut(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{KeepAll: true})
	fill(t, l, 100)
	_ = l.Close()
	l = openT(t, dir, Options{Keep: 700})
	if l.Last() != 700 {
		t.Fatalf("last %d after the cut, want 700", l.Last())
	}
	checkAll(t, l, 70)
	_ = l.Close()
	if _, err := Open(Options{Dir: dir, Keep: 800}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "holds changes through 800") {
		t.Fatalf("a log shorter than the store's record opened: %v", err)
	}
}

func TestDamageIsReportedWithFileAndOffset(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: 4 << 10, KeepAll: true})
	fill(t, l, 300)
	segs := l.Segments()
	_ = l.Close()
	victim := segs[1]
	b, _ := os.ReadFile(victim)
	at := len(b) / 2
	b[at] ^= 0x10
	_ = os.WriteFile(victim, b, 0o600)
	_, err := Open(Options{Dir: dir, SegmentBytes: 4 << 10, Keep: 3000})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), filepath.Base(victim)) || !strings.Contains(err.Error(), "offset") {
		t.Fatalf("a flipped bit in a sealed segment: %v", err)
	}
	b[at] ^= 0x10
	_ = os.WriteFile(victim, b, 0o600)
	l = openT(t, dir, Options{SegmentBytes: 4 << 10, Keep: 3000})
	checkAll(t, l, 300)
	// Damage found by a reader while the log is open.
	b[at] ^= 0x10
	_ = os.WriteFile(victim, b, 0o600)
	err = l.Iter(0, func(Record) bool { return true })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), filepath.Base(victim)) {
		t.Fatalf("a reader met the damage: %v", err)
	}
	_ = l.Close()
	// In the last segment, damage before records the store holds is not a torn tail.
	b[at] ^= 0x10
	_ = os.WriteFile(victim, b, 0o600)
	last := lastSeg(t, dir)
	lb, _ := os.ReadFile(last)
	lb[len(Magic)+40] ^= 0x01
	_ = os.WriteFile(last, lb, 0o600)
	if _, err := Open(Options{Dir: dir, SegmentBytes: 4 << 10, Keep: 3000}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damage in the last segment before durable records: %v", err)
	}
}

func TestMissingSegment(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: 4 << 10, KeepAll: true})
	fill(t, l, 300)
	segs := l.Segments()
	_ = l.Close()
	_ = os.Remove(segs[2])
	_, err := Open(Options{Dir: dir, Keep: 3000})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), filepath.Base(segs[2])+" is missing") {
		t.Fatalf("a missing middle segment: %v", err)
	}
	_ = os.Remove(segs[0])
	_, err = Open(Options{Dir: dir, Keep: 3000})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("a missing first segment: %v", err)
	}
	dir2 := t.TempDir()
	l = openT(t, dir2, Options{SegmentBytes: 4 << 10, KeepAll: true})
	fill(t, l, 300)
	segs = l.Segments()
	_ = l.Close()
	_ = os.Remove(segs[len(segs)-1])
	first := strings.TrimSuffix(filepath.Base(segs[len(segs)-1]), ".seg")
	var v uint64
	_, _ = fmt.Sscan(strings.TrimLeft(first, "0"), &v)
	_, err = Open(Options{Dir: dir2, Keep: 3000, LastSegment: v})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), filepath.Base(segs[len(segs)-1])+" is missing") {
		t.Fatalf("a missing last segment: %v", err)
	}
}

func TestLastAtMost(t *testing.T) {
	l := openT(t, t.TempDir(), Options{SegmentBytes: 2 << 10, IndexEvery: 4, KeepAll: true})
	defer l.Close()
	fill(t, l, 300)
	for _, c := range []struct {
		limit, mod, want uint64
		ok               bool
	}{{3000, 1, 3000, true}, {2995, 1, 2990, true}, {5, 1, 0, false}, {10, 1, 10, true}, {2995, 70, 2940, true}, {139, 70, 70, true}, {1e9, 1000, 3000, true}, {999, 1000, 0, false}} {
		r, ok, err := l.LastAtMost(c.limit, func(r Record) bool { return r.Version%c.mod == 0 })
		if err != nil || ok != c.ok || (ok && r.Version != c.want) {
			t.Fatalf("LastAtMost(%d, every %d): %d %v %v, want %d %v", c.limit, c.mod, r.Version, ok, err, c.want, c.ok)
		}
	}
}

// TestUnansweredRecordsAcrossSegmentsAreCut: a crash after a new segment
// was started and before the rounds of the one before it were recorded
// durable leaves records past Keep in a sealed segment; Open cuts them
// and removes the segments after it.
func TestUnansweredRecordsAcrossSegmentsAreCut(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: 2 << 10, KeepAll: true})
	fill(t, l, 300)
	segs := l.Segments()
	_ = l.Close()
	// Keep a version in the middle of the third segment.
	l = openT(t, dir, Options{SegmentBytes: 2 << 10, KeepAll: true})
	var keep uint64
	n := 0
	_ = l.Iter(0, func(r Record) bool {
		n++
		if n == 40 {
			keep = r.Version
			return false
		}
		return true
	})
	_ = l.Close()
	l = openT(t, dir, Options{SegmentBytes: 2 << 10, Keep: keep})
	if l.Last() != keep {
		t.Fatalf("last %d after the cut, want %d", l.Last(), keep)
	}
	if got := len(l.Segments()); got >= len(segs) {
		t.Fatalf("%d segments after the cut, of %d", got, len(segs))
	}
	checkAll(t, l, int(keep/10))
	if err := l.Append([]Record{rec(keep + 10)}); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	l = openT(t, dir, Options{SegmentBytes: 2 << 10, Keep: keep + 10})
	checkAll(t, l, int(keep/10)+1)
	_ = l.Close()
}

// copyDir copies the segment files of dir as they are now (a crash: the
// log is not closed).
func copyDir(t *testing.T, dir string) string {
	t.Helper()
	to := t.TempDir()
	m, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	for _, p := range m {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, filepath.Base(p)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// TestPrefill: the active segment is written ahead with zeros; after a
// crash they read as the end of the data (kept, not reported torn, appends
// go on over them); bytes other than zeros after them are a torn tail and
// cut; a sealed segment, and the active one at Close, end with their last
// record.
func TestPrefill(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 16 << 10, KeepAll: true}
	l := openT(t, dir, o)
	fill(t, l, 300)
	segs := l.Segments()
	active := segs[len(segs)-1]
	if got := fileSize(t, active); got != 16<<10 {
		t.Fatalf("the active segment's file holds %d bytes, want %d (written ahead)", got, 16<<10)
	}
	crashed := copyDir(t, dir)
	_ = l.Close()
	var data int64
	for _, p := range segs {
		data += fileSize(t, p)
	}
	l = openT(t, dir, Options{SegmentBytes: 16 << 10, Keep: 3000})
	if data != l.Size() {
		t.Fatalf("closed: the files hold %d bytes, the records %d", data, l.Size())
	}
	_ = l.Close()

	var logged bytes.Buffer
	o = Options{SegmentBytes: 16 << 10, Keep: 3000, Logger: slog.New(slog.NewTextHandler(&logged, nil))}
	l = openT(t, crashed, o)
	checkAll(t, l, 300)
	if strings.Contains(logged.String(), "torn") {
		t.Fatalf("the zeros written ahead were taken for a torn tail: %s", logged.String())
	}
	if err := l.Append([]Record{rec(3010)}); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	last := filepath.Join(crashed, filepath.Base(active))
	f, err := os.OpenFile(last, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte("torn"))
	_ = f.Close()
	crashed2 := copyDir(t, crashed)
	_ = l.Close()
	o.Keep = 3010
	l = openT(t, crashed2, o)
	checkAll(t, l, 301)
	if !strings.Contains(logged.String(), "cut a torn tail") {
		t.Fatalf("bytes after the zeros were not cut: %s", logged.String())
	}
	_ = l.Close()
}

// TestCommitRecords: records past Keep are kept when a commit record Commit
// accepts follows them, in log order; those of a round Commit refuses, and
// those no commit record follows, are cut. Readers never see a commit
// record.
func TestCommitRecords(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: 1 << 10, KeepAll: true})
	fill(t, l, 40)
	commit := func(v uint64, what string) Record { return Record{Version: v, Type: TypeCommit, Data: []byte(what)} }
	for _, round := range [][]Record{
		{rec(410), rec(420), commit(420, "ok")},
		{rec(430), commit(430, "ok")},
		{rec(440)}, // no commit record
		{rec(450), commit(450, "ok")},
	} {
		if err := l.Append(round); err != nil {
			t.Fatal(err)
		}
	}
	_ = l.Close()
	var offered []string
	accept := func(r Record, _ uint64) bool {
		offered = append(offered, fmt.Sprintf("%d %s", r.Version, r.Data))
		return string(r.Data) == "ok"
	}
	l = openT(t, copyDir(t, dir), Options{SegmentBytes: 1 << 10, Keep: 400, Commit: accept})
	if l.Last() != 450 || fmt.Sprint(offered) != "[420 ok 430 ok 450 ok]" {
		t.Fatalf("last %d, offered %q", l.Last(), offered)
	}
	checkAll(t, l, 45)
	_ = l.Close()
	offered = nil
	refuse130 := func(r Record, s uint64) bool { return r.Version != 430 && accept(r, s) }
	l = openT(t, dir, Options{SegmentBytes: 1 << 10, Keep: 400, Commit: refuse130})
	if l.Last() != 420 || fmt.Sprint(offered) != "[420 ok]" {
		t.Fatalf("last %d after a refused commit record, offered %q", l.Last(), offered)
	}
	checkAll(t, l, 42)
	_ = l.Close()
	// KeepAll (a store rebuilt after damage): every record stays, and the
	// commit records are offered all the same.
	l = openT(t, copyDir(t, dir), Options{SegmentBytes: 1 << 10, IndexEvery: 4, KeepAll: true})
	if err := l.Append([]Record{rec(430), commit(430, "ok")}); err != nil {
		t.Fatal(err)
	}
	d2 := copyDir(t, l.o.Dir)
	_ = l.Close()
	offered = nil
	l = openT(t, d2, Options{SegmentBytes: 1 << 10, Keep: 400, KeepAll: true, Commit: accept})
	if l.Last() != 430 || fmt.Sprint(offered) != "[420 ok 430 ok]" {
		t.Fatalf("KeepAll: last %d, offered %q", l.Last(), offered)
	}
	checkAll(t, l, 43)
	_ = l.Close()
}

// A record's Head is written before its Data as one payload: read back,
// from memory's files and after a reopen, it is the two joined, and its
// CRC covers both.
func TestHeadIsWrittenBeforeData(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{KeepAll: true})
	want := map[uint64][]byte{}
	var recs []Record
	for v := uint64(1); v <= 20; v++ {
		head, data := bytes.Repeat([]byte{byte(v)}, int(v%4)), bytes.Repeat([]byte{byte(100 + v)}, int(v%7))
		want[v] = append(slices.Clone(head), data...)
		recs = append(recs, Record{Version: v, Type: 3, Head: head, Data: data})
	}
	if err := l.Append(recs); err != nil {
		t.Fatal(err)
	}
	check := func(l *Log) {
		t.Helper()
		for v, w := range want {
			r, err := l.Read(v)
			if err != nil {
				t.Fatalf("read %d: %v", v, err)
			}
			if r.Head != nil || !bytes.Equal(r.Data, w) {
				t.Fatalf("record %d: head %x data %x, want data %x", v, r.Head, r.Data, w)
			}
		}
	}
	check(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openT(t, dir, Options{KeepAll: true})
	check(l)
	_ = l.Close()
}

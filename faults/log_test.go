package faults

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.yaml.in/yaml/v3"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/internal/wait"
)

// The segment log of issue 18, point 6, as these tests see it from outside:
// <data dir>/changes/<20-digit first version>.seg, each an 8-byte header
// then records of a 4-byte big-endian payload length, a 4-byte big-endian
// CRC-32C of the payload, and the payload (the first record of a segment
// is its start record).
const (
	segMagic = "FERRYSG1"
	// smallSegments makes a few thousand creates fill many sealed segments.
	smallSegments = "FERRY_SEGMENT_BYTES=65536"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// segRecord is one whole record of a segment file: where its header
// starts and how long its payload is.
type segRecord struct {
	off int64
	n   int64
	typ byte // the record's type (0xfe: a commit record, a round's Pebble batch: not a change)
}

// payloadOff is where the record's payload starts.
func (r segRecord) payloadOff() int64 { return r.off + 8 }

// segFile is what parseSegment read of a segment file.
type segFile struct {
	path     string
	size     int64
	records  []segRecord
	validEnd int64 // the end of the last whole record whose CRC holds
}

// segments lists a stopped node's segment files in version order.
func segments(t *testing.T, n *proc.Node) []string {
	t.Helper()
	segs, err := listSegments(n)
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

func listSegments(n *proc.Node) ([]string, error) {
	segs, err := filepath.Glob(filepath.Join(n.Home().DataPath(), "changes", "*.seg"))
	if err != nil {
		return nil, fmt.Errorf("list segments: %w", err)
	}
	slices.Sort(segs) // 20-digit zero-padded names sort by version
	return segs, nil
}

// parseSegment reads a segment file record by record up to the first
// partial record or CRC that fails.
func parseSegment(t *testing.T, path string) segFile {
	t.Helper()
	f, err := readSegment(path)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func readSegment(path string) (segFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return segFile{}, fmt.Errorf("read segment: %w", err)
	}
	f := segFile{path: path, size: int64(len(b))}
	if len(b) < len(segMagic) || string(b[:len(segMagic)]) != segMagic {
		return f, fmt.Errorf("%s (%d bytes) does not start with %s", path, len(b), segMagic)
	}
	off := int64(len(segMagic))
	f.validEnd = off
	for off+8 <= f.size {
		n := int64(binary.BigEndian.Uint32(b[off:]))
		sum := binary.BigEndian.Uint32(b[off+4:])
		if off+8+n > f.size || crc32.Checksum(b[off+8:off+8+n], castagnoli) != sum {
			break
		}
		r := segRecord{off: off, n: n}
		if n > 8 {
			r.typ = b[off+8+8]
		}
		f.records = append(f.records, r)
		off += 8 + n
		f.validEnd = off
	}
	return f, nil
}

// lastRun is what the node's latest run wrote to stderr (proc marks each
// run with a "---- run N at" line).
func lastRun(n *proc.Node) string {
	all := n.StderrAll()
	if i := strings.LastIndex(all, "---- run "); i >= 0 {
		return all[i:]
	}
	return all
}

// lineWith is the first line of log that holds every one of words, or "".
func lineWith(log string, words ...string) string {
	for _, l := range strings.Split(log, "\n") {
		all := true
		for _, w := range words {
			if !strings.Contains(l, w) {
				all = false
				break
			}
		}
		if all {
			return l
		}
	}
	return ""
}

// offsetIn is the number after "offset" in a log line (offset=N, offset N,
// "offset": N), or -1.
func offsetIn(line string) int64 {
	m := regexp.MustCompile(`offset\W{0,3}(\d+)`).FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return -1
	}
	return v
}

// flipBit flips bit 3 of the byte at off of the file at path in place
// (one byte written: a node may be reading the file) and returns the byte
// it held.
func flipBit(t *testing.T, path string, off int64) byte {
	t.Helper()
	b := make([]byte, 1)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(b, off)
	_ = f.Close()
	if err != nil {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	writeByte(t, path, off, b[0]^0x08)
	return b[0]
}

// writeByte writes v at off of the file at path.
func writeByte(t *testing.T, path string, off int64, v byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{v}, off); err != nil {
		_ = f.Close()
		t.Fatalf("write %s at %d: %v", path, off, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// appendTo appends b to the file at path.
func appendTo(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return fmt.Errorf("append to %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

// tornTail is what one kill of TestLogTornTail did to A's last segment.
type tornTail struct {
	kind string // "garbage" or "half record"
	file string
	cut  int64  // where A's open must cut at the latest: the end of the last whole record
	log  string // A's run after the restart
}

// tear appends to the segment at path either random bytes or the first
// half of a record whose header is whole (length and CRC of a payload that
// was never written out).
func tear(path, kind string) error {
	var tail []byte
	switch kind {
	case "garbage":
		tail = make([]byte, 1000)
		_, _ = rand.Read(tail)
	default:
		payload := make([]byte, 300)
		_, _ = rand.Read(payload)
		tail = binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
		tail = binary.BigEndian.AppendUint32(tail, crc32.Checksum(payload, castagnoli))
		tail = append(tail, payload[:len(payload)/2]...)
	}
	return appendTo(path, tail)
}

// TestLogTornTail: A and its partner B (small segments) as processes;
// creates sent to A at full rate, each retried with its key until a reply
// says ok. A is SIGKILLed at points of the load: twice at any moment, then
// the moment a new segment file appears (a segment just sealed, its last
// rounds perhaps not yet recorded durable), in turn. While A
// is down its last segment gets random bytes, then at the next kill half a
// record with a whole header, appended. Each restart cuts the tail at or
// before the end of the last whole record and says so (a WARN line naming
// the file and the offset), and at the end every create A acknowledged is
// in A's listing once and reaches B once, at the version answered, in A's
// order.
func TestLogTornTail(t *testing.T) {
	total, kills := pick(6000, 60000), pick(3, 12)
	env := proc.Options{Env: []string{smallSegments}}
	oa, ob := env, env
	oa.Name, ob.Name = "A", "B"
	a, b := proc.New(t, oa), proc.New(t, ob)
	proc.Partners(a, b)
	a.Start()
	b.Start()
	app := connect(t, a.NATSURL())

	var progress atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan []tornTail, 1)
	go func() {
		var made []tornTail
		defer func() { done <- made }()
		for k := range kills {
			kind := [...]string{"garbage", "half record"}[k%2]
			atSeal := k%3 == 2
			point := int64(total * (k + 1) / (kills + 1))
			for progress.Load() < point {
				select {
				case <-ctx.Done():
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
			tt, err := killAndTear(ctx, a, kind, atSeal)
			if err != nil {
				t.Errorf("kill %d: %v", k+1, err)
				return
			}
			if tt == nil {
				t.Logf("kill %d (at a seal: %v): A's last segment held no whole record; not torn", k+1, atSeal)
				continue
			}
			if err := a.StartErr(); err != nil {
				t.Errorf("restart after kill %d (%s appended to %s): %v", k+1, kind, tt.file, err)
				return
			}
			tt.log = lastRun(a)
			made = append(made, *tt)
		}
	}()
	start := time.Now()
	acked, retries := sendAll(t, app, "t", total, 64, &progress)
	sent := time.Since(start)
	cancel()
	torn := <-done
	if t.Failed() {
		t.FailNow()
	}
	if len(torn) == 0 {
		t.Fatal("no kill tore A's last segment")
	}
	for i, tt := range torn {
		// A segment started for records never recorded durable goes whole
		// (with the torn bytes appended to it); the cut is then in the one
		// before it.
		if line := lineWith(tt.log, "level=WARN", "change log: removed a segment that holds only records never recorded durable", tt.file); line != "" {
			t.Logf("tear %d (%s): %.300s", i+1, tt.kind, line)
			continue
		}
		line := lineWith(tt.log, "level=WARN", "change log: cut a torn tail", tt.file)
		if line == "" {
			t.Fatalf("tear %d (%s appended to %s): A's restart did not say it cut a torn tail of that file:\n%s", i+1, tt.kind, tt.file, tt.log)
		}
		// Records after the last one answered (written, never recorded
		// durable) may go too, so the cut is at most where the last whole
		// record ends, and after the segment's header.
		if got := offsetIn(line); got < int64(len(segMagic)) || got > tt.cut {
			t.Fatalf("tear %d (%s appended to %s): the cut is at offset %d; the last whole record ends at %d: %s", i+1, tt.kind, tt.file, got, tt.cut, line)
		}
		t.Logf("tear %d (%s): %.300s", i+1, tt.kind, line)
	}
	if !a.Running() {
		a.Start()
	}
	testnet.WaitFor(t, 3*time.Minute, "A's deliveries all acknowledged", func() bool { return pendingAcks(t, a) == 0 })
	origin := a.PeerID().String()
	ca := changesOf(t, app)
	cb := changesOf(t, connect(t, b.NATSURL()))
	twice(t, a, ca, origin, acked)
	checkDelivered(t, "A", ca, origin, acked)
	checkDelivered(t, "B", cb, origin, acked)
	sameStores(t, a, b, ca, cb, origin)
	t.Logf("%d creates to A in %v with %d SIGKILLs, %d tails torn and cut; %d attempts retried with their keys; 0 lost, 0 duplicated on A and B",
		total, sent.Round(time.Millisecond), kills, len(torn), retries)
}

// twice fails t when n's listing holds one of its own creates more than
// once, saying at which versions, which one the app was answered and in
// which segment file each is (the file whose first version is the
// greatest not above it).
func twice(t *testing.T, n *proc.Node, cs []change, origin string, acked map[string]uint64) {
	t.Helper()
	at := map[string][]uint64{}
	for _, c := range cs {
		if c.Origin == origin && c.Kind == "create" {
			at[c.Payload.ID] = append(at[c.Payload.ID], c.OriginVersion)
		}
	}
	var firsts []uint64
	for _, p := range segments(t, n) {
		if v, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(p), ".seg"), 10, 64); err == nil {
			firsts = append(firsts, v)
		}
	}
	file := func(v uint64) string {
		i, found := slices.BinarySearch(firsts, v)
		if !found {
			i--
		}
		if i < 0 {
			return "before the first segment"
		}
		return fmt.Sprintf("%020d.seg (%d of %d)", firsts[i], i+1, len(firsts))
	}
	var dups []string
	for id, vs := range at {
		if len(vs) > 1 {
			var where []string
			for _, v := range vs {
				where = append(where, fmt.Sprintf("%d in %s", v, file(v)))
			}
			dups = append(dups, fmt.Sprintf("%s at %s, answered %d", id, strings.Join(where, " and "), acked[id]))
		}
	}
	if len(dups) > 0 {
		slices.Sort(dups)
		t.Fatalf("%s holds %d of its creates twice (a record never answered kept, and the retry written again):\n%s",
			n.Name(), len(dups), strings.Join(dups[:min(10, len(dups))], "\n"))
	}
}

// killAndTear SIGKILLs n (atSeal: the moment a new segment file appears)
// and appends a tail of kind to its last segment. A last segment without a
// whole record (killed before its start record was written) is not torn:
// killAndTear starts n again and returns nil.
func killAndTear(ctx context.Context, n *proc.Node, kind string, atSeal bool) (*tornTail, error) {
	how := "SIGKILL"
	if atSeal {
		segs, err := listSegments(n)
		if err != nil {
			return nil, err
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			now, err := listSegments(n)
			if err != nil {
				return nil, err
			}
			if len(now) > len(segs) {
				break
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				return nil, fmt.Errorf("no new segment file within 30s of load (%d files)", len(segs))
			}
			// 1 ms looks, to kill as close to the seal as can be (on the
			// crasher's goroutine: an error, not a test failure).
			time.Sleep(time.Millisecond)
		}
		how = "SIGKILL as a segment was sealed"
	}
	n.Kill()
	segs, err := listSegments(n)
	if err != nil {
		return nil, err
	}
	if len(segs) == 0 {
		return nil, fmt.Errorf("no segment under %s", filepath.Join(n.Home().DataPath(), "changes"))
	}
	last := segs[len(segs)-1]
	fi, err := os.Stat(last)
	if err != nil {
		return nil, fmt.Errorf("after %s: %w", how, err)
	}
	var seg segFile
	if fi.Size() >= int64(len(segMagic)) {
		if seg, err = readSegment(last); err != nil {
			return nil, fmt.Errorf("after %s: %w", how, err)
		}
	}
	if len(seg.records) == 0 {
		// A segment nothing was answered from, which open starts again.
		if err := n.StartErr(); err != nil {
			return nil, fmt.Errorf("restart after %s (%s: %d bytes, no whole record): %w", how, filepath.Base(last), fi.Size(), err)
		}
		return nil, nil
	}
	if err := tear(last, kind); err != nil {
		return nil, err
	}
	return &tornTail{kind: kind + " after " + how, file: filepath.Base(last), cut: seg.validEnd}, nil
}

// filledLog starts A alone with small segments, has it acknowledge n keyed
// creates, stops it cleanly and returns it with the acknowledged versions.
// It fails unless A's log holds at least 4 segment files.
func filledLog(t *testing.T, n int) (*proc.Node, map[string]uint64) {
	t.Helper()
	a := proc.New(t, proc.Options{Name: "A", Env: []string{smallSegments}})
	a.Start()
	app := connect(t, a.NATSURL())
	var progress atomic.Int64
	acked, _ := sendAll(t, app, "s", n, 64, &progress)
	if code := a.Term(30 * time.Second); code != 0 {
		t.Fatalf("A exited with %d", code)
	}
	if segs := segments(t, a); len(segs) < 4 {
		t.Fatalf("%d creates with %s made %d segment files under %s (want 4 or more): %v",
			n, smallSegments, len(segs), filepath.Join(a.Home().DataPath(), "changes"), segs)
	}
	return a, acked
}

// refuses starts n, which must not start: it exits non-zero. It returns
// the run's log.
func refuses(t *testing.T, n *proc.Node, why string) string {
	t.Helper()
	start := time.Now()
	err := n.StartErr()
	if err == nil {
		hc, hb := n.Healthz()
		t.Fatalf("%s started with %s (/healthz %d %.200s):\n%s", n.Name(), why, hc, hb, n.Stderr())
	}
	if n.Running() {
		t.Fatalf("%s neither started nor exited with %s: %v", n.Name(), why, err)
	}
	if code := n.ExitCode(); code == 0 {
		t.Fatalf("%s exited 0 with %s:\n%s", n.Name(), why, n.Stderr())
	}
	t.Logf("%s refused to start with %s: exit %d after %v", n.Name(), why, n.ExitCode(), time.Since(start).Round(time.Millisecond))
	return lastRun(n)
}

// intact starts n and checks that it holds every acknowledged create, in
// its listing and as resources, says 200 on /healthz, and takes new writes
// (100 creates <prefix>-<i>, returned with their versions).
func intact(t *testing.T, n *proc.Node, acked map[string]uint64, prefix string) map[string]uint64 {
	t.Helper()
	n.Start()
	if hc, hb := n.Healthz(); hc != 200 {
		t.Fatalf("/healthz of %s: %d %.300s", n.Name(), hc, hb)
	}
	app := connect(t, n.NATSURL())
	all := make(map[string]uint64, len(acked)+100)
	for id, v := range acked {
		all[id] = v
	}
	var progress atomic.Int64
	more, _ := sendAll(t, app, prefix, 100, 16, &progress)
	for id, v := range more {
		all[id] = v
	}
	checkDelivered(t, n.Name(), changesOf(t, app), n.PeerID().String(), all)
	holdsAll(t, n, all, 10*time.Second)
	return more
}

// TestLogBitFlip: A fills many small segments; one bit inside a record of
// a sealed segment in the middle is flipped. While A runs, the read that
// meets the record fails: ferry.changes answers corrupt (the damaged record
// is not served), /healthz 503 says corrupt, and an ERROR line names the
// change log, the file and the offset of the record. Stopped, A refuses to
// start: it exits non-zero with such a line. With the byte put back (and
// every .idx file removed: an index is only a help) A starts, holds every
// acknowledged change, and takes new writes.
func TestLogBitFlip(t *testing.T) {
	a, acked := filledLog(t, pick(3000, 20000))
	segs := segments(t, a)
	victim := segs[len(segs)/2] // sealed: not the last file
	seg := parseSegment(t, victim)
	if seg.validEnd != seg.size || len(seg.records) < 3 {
		t.Fatalf("sealed segment %s: %d records, whole up to %d of %d bytes", filepath.Base(victim), len(seg.records), seg.validEnd, seg.size)
	}
	// A change's record in the middle (a commit record, a round's Pebble
	// batch, is read at start only: the start below finds damage in one).
	var changes []segRecord
	for _, r := range seg.records {
		if r.typ != 0 && r.typ != 0xfe {
			changes = append(changes, r)
		}
	}
	rec := changes[len(changes)/2]
	at := rec.payloadOff() + rec.n/2
	file := filepath.Base(victim)
	names := func(line string) {
		t.Helper()
		if off := offsetIn(line); off != rec.off && off != rec.payloadOff() && off != at {
			t.Fatalf("the line names offset %d; the damaged record is at %d (payload at %d, the flipped byte at %d): %s",
				off, rec.off, rec.payloadOff(), at, line)
		}
		t.Logf("log: %.500s", line)
	}

	// While A runs.
	a.Start()
	app := connect(t, a.NATSURL())
	orig := flipBit(t, victim, at)
	t.Logf("flipped bit 3 of byte %d of %s (%d bytes, %d records) under the running A: inside the record at %d (payload %d bytes)",
		at, file, seg.size, len(seg.records), rec.off, rec.n)
	got, code, msg := readChanges(t, app)
	if code != "corrupt" || len(got) >= len(acked) {
		t.Fatalf("ferry.changes over the damaged record: %d of %d changes read, then code %q (%.300s); want fewer and corrupt", len(got), len(acked), code, msg)
	}
	t.Logf("ferry.changes: %d changes, then %s: %.300s", len(got), code, msg)
	hc, hb := a.Healthz()
	if hc != 503 || !strings.Contains(hb, "corrupt") {
		t.Fatalf("/healthz of A after the read met the damage: %d %.300s; want 503 saying corrupt", hc, hb)
	}
	t.Logf("/healthz: %d %.300s", hc, hb)
	line := lineWith(lastRun(a), "level=ERROR", "change log", file, "offset")
	if line == "" {
		t.Fatalf("the running A wrote no ERROR line naming the change log, %s and the offset:\n%s", file, a.Stderr())
	}
	names(line)
	t.Logf("A stopped with SIGTERM: exit %d", a.Term(30*time.Second))

	// At open.
	log := refuses(t, a, "a flipped bit in "+file)
	line = lineWith(log, "level=ERROR", "change log", file, "offset")
	if line == "" {
		t.Fatalf("no ERROR line naming the change log, %s and the offset:\n%s", file, log)
	}
	names(line)

	writeByte(t, victim, at, orig)
	idx, err := filepath.Glob(filepath.Join(filepath.Dir(victim), "*.idx"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range idx {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	intact(t, a, acked, "after")
	t.Logf("byte put back, %d .idx files removed: A holds all %d acknowledged creates and takes new ones", len(idx), len(acked))
}

// TestLogMissingSegment: A fills many small segments and stops. A sealed
// segment in the middle is deleted: A refuses to start with a line saying
// the segment is missing and naming it. Put back, A starts intact. Then the
// last segment (holding records) is deleted: the same refusal; put back,
// intact again.
func TestLogMissingSegment(t *testing.T) {
	a, acked := filledLog(t, pick(3000, 20000))
	segs := segments(t, a)
	// The last file holds changes (a clean stop right after a segment was
	// started could leave it with its start record alone; then write a few
	// more).
	if last := parseSegment(t, segs[len(segs)-1]); len(last.records) < 2 {
		a.Start()
		var progress atomic.Int64
		more, _ := sendAll(t, connect(t, a.NATSURL()), "fill", 20, 4, &progress)
		for id, v := range more {
			acked[id] = v
		}
		if code := a.Term(30 * time.Second); code != 0 {
			t.Fatalf("A exited with %d", code)
		}
		segs = segments(t, a)
	}
	cases := []struct {
		name, path string
	}{
		{"a sealed segment in the middle", segs[len(segs)/2]},
		{"the last segment", segs[len(segs)-1]},
	}
	for i, c := range cases {
		if seg := parseSegment(t, c.path); len(seg.records) < 2 {
			t.Fatalf("%s (%s) holds no change", c.name, filepath.Base(c.path))
		}
		b, err := os.ReadFile(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(c.path); err != nil {
			t.Fatal(err)
		}
		file := filepath.Base(c.path)
		log := refuses(t, a, file+" deleted ("+c.name+")")
		line := lineWith(log, "missing", file)
		if line == "" {
			t.Fatalf("%s deleted (%s): no line saying it is missing:\n%s", file, c.name, log)
		}
		t.Logf("log: %.400s", line)
		if err := os.WriteFile(c.path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		for id, v := range intact(t, a, acked, fmt.Sprintf("back%d", i)) {
			acked[id] = v // held from now on
		}
		if code := a.Term(30 * time.Second); code != 0 {
			t.Fatalf("A exited with %d", code)
		}
	}
}

// sendOK sends one request and fails the test unless the answer is ok.
func sendOK(t *testing.T, nc *nats.Conn, body string) reply {
	t.Helper()
	m := nats.NewMsg("ferry.propagate")
	m.Data = []byte(body)
	o, r := retryUnavailable(t, nc, m)
	if o != okReply {
		t.Fatalf("%s: %v %+v", body, o, r.Error)
	}
	return r
}

// oldRelease is the commit of the release whose store holds the change log
// inside Pebble (store schema 2).
const oldRelease = "2cf85e9"

// oldBinary builds `ferry` of oldRelease from this repository's history
// into a temp dir of t, or skips t when the history is not here.
func oldBinary(t *testing.T) string {
	t.Helper()
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skipf("building the previous release needs the git history of this repository: git rev-parse: %v", err)
	}
	repo := strings.TrimSpace(string(root))
	if out, err := exec.Command("git", "-C", repo, "cat-file", "-e", oldRelease+"^{commit}").CombinedOutput(); err != nil {
		t.Skipf("commit %s (the previous release) is not in the git history of %s (a shallow clone?): %v %s", oldRelease, repo, err, out)
	}
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	archive := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", repo, oldRelease, src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v %s", oldRelease, err, out)
	}
	bin := filepath.Join(t.TempDir(), "ferry-old")
	build := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", bin, "./cmd/ferry")
	build.Dir = src
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build the release of %s: %v %s", oldRelease, err, out)
	}
	t.Logf("built the release of %s in %v", oldRelease, time.Since(start).Round(time.Second))
	return bin
}

// TestLogUpgradeFromPreviousRelease: A and its partner B run the previous
// release (the change log inside Pebble, store schema 2); A takes creates,
// updates and a delete, B a few creates, each acknowledges the other's
// changes, and both stop cleanly. A starts with this build on the same home
// while B is away: it says "store migrated" with schema 3, and its listing
// of changes, its resources and its delivery floors are those the old
// release had (B is owed nothing). B is upgraded the same way. New creates
// on each reach the other; neither receives anything twice (no change is
// resent as new), and each holds the other's changes once, in order.
func TestLogUpgradeFromPreviousRelease(t *testing.T) {
	bin := oldBinary(t)
	a := proc.New(t, proc.Options{Name: "A"})
	b := proc.New(t, proc.Options{Name: "B"})
	proc.Partners(a, b)
	oldConfig(t, bin, a, b)

	// The previous release.
	oa, ob := startWith(t, bin, a), startWith(t, bin, b)
	appA, appB := connect(t, a.NATSURL()), connect(t, b.NATSURL())
	var progress atomic.Int64
	nA, nB := pick(500, 5000), pick(100, 1000)
	sendAll(t, appA, "old-a", nA, 32, &progress)
	sendAll(t, appB, "old-b", nB, 16, &progress)
	for i := range 50 {
		sendOK(t, appA, fmt.Sprintf(`{"action":"update","data_type":"vm","payload":{"id":"old-a-%d","pad":"updated"}}`, i))
	}
	for i := 50; i < 60; i++ {
		sendOK(t, appA, fmt.Sprintf(`{"action":"delete","data_type":"vm","payload":{"id":"old-a-%d"}}`, i))
	}
	testnet.WaitFor(t, 2*time.Minute, "A and B acknowledged each other's changes", func() bool {
		return pendingAcks(t, a) == 0 && pendingAcks(t, b) == 0 && len(resources(t, a)) == len(resources(t, b))
	})
	before := map[string]*snapshot{"A": snap(t, a, appA), "B": snap(t, b, appB)}
	for _, p := range [][2]*proc.Node{{a, b}, {b, a}} {
		if k := p[1].PeerID().String() + "/resource"; before[p[0].Name()].floors[k] == 0 {
			t.Fatalf("%s's floor of %s's resource lane is 0 before the upgrade: %v", p[0].Name(), p[1].Name(), before[p[0].Name()].floors)
		}
	}
	if code := oa.term(t); code != 0 {
		t.Fatalf("the previous release's A exited %d", code)
	}
	if code := ob.term(t); code != 0 {
		t.Fatalf("the previous release's B exited %d", code)
	}

	// This build, on the same homes: A first, while B is away.
	for _, n := range []*proc.Node{a, b} {
		start := time.Now()
		n.Start()
		run := lastRun(n)
		line := lineWith(run, "store migrated", "schema=3")
		if line == "" {
			t.Fatalf("%s on the previous release's home: no \"store migrated\" line with schema=3:\n%s", n.Name(), run)
		}
		t.Logf("%s upgraded in %v: %.300s", n.Name(), time.Since(start).Round(time.Millisecond), line)
		nc := connect(t, n.NATSURL())
		before[n.Name()].same(t, snap(t, n, nc))
	}
	appA, appB = connect(t, a.NATSURL()), connect(t, b.NATSURL())

	// New writes on each side reach the other.
	mA, mB := pick(200, 2000), pick(100, 1000)
	newA, _ := sendAll(t, appA, "new-a", mA, 32, &progress)
	newB, _ := sendAll(t, appB, "new-b", mB, 16, &progress)
	holdsAll(t, b, newA, 2*time.Minute)
	holdsAll(t, a, newB, 2*time.Minute)
	testnet.WaitFor(t, 2*time.Minute, "A and B acknowledged each other's new changes", func() bool {
		return pendingAcks(t, a) == 0 && pendingAcks(t, b) == 0
	})
	for _, c := range []struct {
		recv, origin *proc.Node
		nc           *nats.Conn
		fresh        map[string]uint64
	}{{b, a, appB, newA}, {a, b, appA, newB}} {
		if d := received(t, c.recv, "duplicate"); d != 0 {
			t.Fatalf("%s received %v changes of %s twice after the upgrade (resent as new)", c.recv.Name(), d, c.origin.Name())
		}
		want := ownChanges(before[c.recv.Name()].changes, c.origin.PeerID().String())
		got := ownChanges(changesOf(t, c.nc), c.origin.PeerID().String())
		if len(got) != len(want)+len(c.fresh) || !slices.Equal(got[:len(want)], want) {
			t.Fatalf("%s holds %d changes of %s after the upgrade; want the %d it held before, then the %d new ones",
				c.recv.Name(), len(got), c.origin.Name(), len(want), len(c.fresh))
		}
		seen := map[string]bool{}
		for _, g := range got[len(want):] {
			f := strings.Fields(g)
			id := f[2]
			if v, ok := c.fresh[id]; !ok || seen[id] || f[0] != strconv.FormatUint(v, 10) {
				t.Fatalf("%s holds %q of %s after the upgrade: not one of the new creates once, at its version", c.recv.Name(), g, c.origin.Name())
			}
			seen[id] = true
		}
	}
	// The new changes are in the segment log; a restart of the upgraded
	// nodes keeps everything and migrates nothing again.
	for _, n := range []*proc.Node{a, b} {
		if segs := segments(t, n); len(segs) == 0 {
			t.Fatalf("%s has no segment file after the upgrade and %d new creates", n.Name(), mA)
		}
		s := snap(t, n, connect(t, n.NATSURL()))
		if code := n.Term(30 * time.Second); code != 0 {
			t.Fatalf("%s exited %d", n.Name(), code)
		}
		n.Start()
		if line := lineWith(lastRun(n), "store migrated"); line != "" {
			t.Fatalf("%s migrated its store again at its second start: %s", n.Name(), line)
		}
		s.same(t, snap(t, n, connect(t, n.NATSURL())))
	}
	t.Logf("A (%d creates, 50 updates, 10 deletes) and B (%d creates) upgraded from %s with their listings, resources and floors; "+
		"%d and %d new creates crossed, nothing received twice; a restart keeps it all", nA, nB, oldRelease, mA, mB)
}

// snapshot is what a node holds that an upgrade must keep.
type snapshot struct {
	who     string
	changes []change
	rows    map[string]resourceRow
	floors  map[string]uint64 // receiver/lane -> floor
	pending int
}

func snap(t *testing.T, n *proc.Node, nc *nats.Conn) *snapshot {
	t.Helper()
	s := &snapshot{who: n.Name(), changes: changesOf(t, nc), rows: resourceRows(t, n), floors: map[string]uint64{}}
	code, b, err := n.Get("/api/v1/deliveries")
	if err != nil || code != 200 {
		t.Fatalf("%s GET /api/v1/deliveries: %d %v %.200s", n.Name(), code, err, b)
	}
	var d struct {
		Deliveries []struct {
			ReceiverID string `json:"receiver_id"`
			Lane       string `json:"lane"`
			Floor      uint64 `json:"floor"`
			Pending    int    `json:"pending"`
		} `json:"deliveries"`
	}
	if err := jsonUnmarshal(b, &d); err != nil {
		t.Fatalf("%s deliveries: %v %.200s", n.Name(), err, b)
	}
	for _, r := range d.Deliveries {
		s.floors[r.ReceiverID+"/"+r.Lane] = r.Floor
		s.pending += r.Pending
	}
	return s
}

// same fails t unless after holds what s held: the same listing, rows,
// floors (none lower) and nothing pending.
func (s *snapshot) same(t *testing.T, after *snapshot) {
	t.Helper()
	key := func(cs []change) []string {
		out := make([]string, len(cs))
		for i, c := range cs {
			out[i] = fmt.Sprintf("%d %s %d %s %s", c.Version, c.Origin, c.OriginVersion, c.Kind, c.Payload.ID)
		}
		return out
	}
	if kb, ka := key(s.changes), key(after.changes); !slices.Equal(kb, ka) {
		i := 0
		for i < min(len(kb), len(ka)) && kb[i] == ka[i] {
			i++
		}
		t.Fatalf("%s's listing after the upgrade: %d changes, before %d; they differ from change %d", s.who, len(ka), len(kb), i)
	}
	if len(after.rows) != len(s.rows) {
		t.Fatalf("%s holds %d resources after the upgrade, %d before", s.who, len(after.rows), len(s.rows))
	}
	for id, r := range s.rows {
		g, ok := after.rows[id]
		if !ok || g.OriginVersion != r.OriginVersion || compactJSON(g.Resource) != compactJSON(r.Resource) {
			t.Fatalf("%s's resource %s after the upgrade: %d %.200s; before %d %.200s", s.who, id, g.OriginVersion, g.Resource, r.OriginVersion, r.Resource)
		}
	}
	if s.pending != 0 || after.pending != 0 {
		t.Fatalf("%s owes %d acknowledgements after the upgrade, %d before (want none)", s.who, after.pending, s.pending)
	}
	for k, f := range s.floors {
		if after.floors[k] != f {
			t.Fatalf("%s's floor of %s after the upgrade: %d, before %d", s.who, k, after.floors[k], f)
		}
	}
}

// ownChanges lists origin's changes of cs as "origin_version kind id".
func ownChanges(cs []change, origin string) []string {
	var out []string
	for _, c := range cs {
		if c.Origin == origin {
			out = append(out, fmt.Sprintf("%d %s %s", c.OriginVersion, c.Kind, c.Payload.ID))
		}
	}
	return out
}

// received is n's count of inbound changes with outcome (the metric
// ferry_delivery_received_total).
func received(t *testing.T, n *proc.Node, outcome string) float64 {
	t.Helper()
	code, b, err := n.Get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("%s GET /metrics: %d %v", n.Name(), code, err)
	}
	prefix := `ferry_delivery_received_total{outcome="` + outcome + `"} `
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s metrics: %q: %v", n.Name(), l, err)
			}
			return f
		}
	}
	t.Fatalf("%s's /metrics has no %s", n.Name(), strings.TrimSpace(prefix))
	return 0
}

func compactJSON(b []byte) string {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}

// oldConfig rewrites the ferry.yaml of each node with only the keys the
// release of bin knows (it reads its config strictly): those of the config
// `ferry init` of bin writes, which holds every key.
func oldConfig(t *testing.T, bin string, ns ...*proc.Node) {
	t.Helper()
	home := t.TempDir()
	if out, err := exec.Command(bin, "init", "--home", home, "--name", "probe").CombinedOutput(); err != nil {
		t.Fatalf("%s init: %v %s", bin, err, out)
	}
	known := readYAML(t, filepath.Join(home, "ferry.yaml"))
	for _, n := range ns {
		c := readYAML(t, n.Home().ConfigPath())
		prune(c, known)
		b, err := yaml.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(n.Home().ConfigPath(), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func readYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// prune removes from c every key known does not have, at every depth.
func prune(c, known map[string]any) {
	for k, v := range c {
		kv, ok := known[k]
		if !ok {
			delete(c, k)
			continue
		}
		cm, ok1 := v.(map[string]any)
		km, ok2 := kv.(map[string]any)
		if ok1 && ok2 {
			prune(cm, km)
		}
	}
}

// child is a `ferry run` of another binary (the previous release) on a
// proc.Node's home, so with its ports.
type child struct {
	n       *proc.Node
	cmd     *exec.Cmd
	exited  chan struct{}
	code    int // once exited
	errPath string
}

// startWith runs `bin run` on n's home and waits until its /healthz
// answers and its NATS port takes a connection. The test's cleanup stops
// it (SIGTERM, SIGKILL after 15 s) if it still runs.
func startWith(t *testing.T, bin string, n *proc.Node) *child {
	t.Helper()
	c := &child{n: n, exited: make(chan struct{}), code: -1, errPath: filepath.Join(t.TempDir(), n.Name()+".old.stderr")}
	f, err := os.Create(c.errPath)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, "run", "--home", n.Home().Dir)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FERRY_") {
			c.cmd.Env = append(c.cmd.Env, kv)
		}
	}
	c.cmd.Stdout, c.cmd.Stderr = f, f
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		_ = f.Close()
		t.Fatalf("start %s run: %v", bin, err)
	}
	go func() {
		err := c.cmd.Wait()
		_ = f.Close()
		var ee *exec.ExitError
		switch {
		case err == nil:
			c.code = 0
		case errors.As(err, &ee):
			c.code = ee.ExitCode()
		}
		close(c.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-c.exited:
		default:
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.exited:
			case <-time.After(proc.CleanupTerm):
				_ = c.cmd.Process.Signal(syscall.SIGKILL)
				<-c.exited
			}
		}
		if t.Failed() {
			t.Logf("%s (previous release) stderr:\n%s", n.Name(), c.stderr())
		}
	})
	natsAddr := strings.TrimPrefix(n.NATSURL(), "nats://")
	// (At a timeout the cleanup above logs the child's stderr.)
	wait.Until(t, proc.ReadyTimeout, n.Name()+" (previous release) is ready", func() error {
		select {
		case <-c.exited:
			t.Fatalf("%s (previous release) exited with %d while starting:\n%s", n.Name(), c.code, c.stderr())
		default:
		}
		hc, _ := n.Healthz()
		if hc != 200 && hc != 503 {
			return fmt.Errorf("/healthz %d", hc)
		}
		conn, err := net.DialTimeout("tcp", natsAddr, time.Second)
		if err != nil {
			return err
		}
		_ = conn.Close()
		return nil
	})
	return c
}

// term stops the child with SIGTERM and returns its exit code; the test
// fails if it runs on after 30 s.
func (c *child) term(t *testing.T) int {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		return c.code
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.exited
		t.Fatalf("%s (previous release) still running 30s after SIGTERM:\n%s", c.n.Name(), c.stderr())
		return -1
	}
}

func (c *child) stderr() string {
	b, _ := os.ReadFile(c.errPath)
	s := string(b)
	if lines := strings.Split(s, "\n"); len(lines) > 60 {
		s = strings.Join(lines[len(lines)-60:], "\n")
	}
	return s
}

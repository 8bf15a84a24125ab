package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store/seglog"
)

// TestLogRebuildsSignedEnvelopes: an own change is stored once, as its
// body and its place in its tree, and the envelope read back (rebuilt from
// the tree, in this run and after a reopen) is the one sealed at commit,
// byte for byte, and verifies; a received envelope is kept as it came. The
// origin entries of own changes come from the log.
func TestLogRebuildsSignedEnvelopes(t *testing.T) {
	key, self := newKey(t)
	okey, other := newKey(t)
	dir := t.TempDir()
	s, err := Open(dir, Options{Signer: key, SegmentBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	sealed := map[uint64]*Sealed{}
	own := func(n int, kind pb.Kind) {
		t.Helper()
		if err := s.Update(context.Background(), func(tx *Txn) error {
			for i := range n {
				v, x, err := tx.AppendOwn(&pb.Body{Origin: []byte(self), Kind: kind, DataType: "vm",
					Payload: fmt.Appendf(nil, `{"id":"%d","pad":"%s"}`, i, bytes.Repeat([]byte("p"), i%300))})
				if err != nil {
					return err
				}
				sealed[v] = x
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	own(5, pb.Kind_KIND_RESOURCE_CREATE)
	// A received change: kept as its origin sealed it.
	body := protocols.AppendBody(nil, &pb.Body{Origin: []byte(other), OriginVersion: 7, Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "vm", Payload: []byte(`{"id":"o"}`)})
	envs, err := protocols.Seal(okey, [][]byte{body})
	if err != nil {
		t.Fatal(err)
	}
	recvBytes := protocols.MarshalEnvelope(envs[0])
	var recvVer uint64
	if err := s.Update(context.Background(), func(tx *Txn) error {
		b := &pb.Body{}
		if err := unmarshal(body, b); err != nil {
			return err
		}
		recvVer, err = tx.AppendReceived(b, BodyHash(body), recvBytes)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	own(1200, pb.Kind_KIND_RESOURCE_UPDATE) // two trees: 1024 and 176
	own(3, pb.Kind_KIND_RESOURCE_DELETE)

	check := func(when string) {
		t.Helper()
		v := protocols.NewVerifier()
		for ver, x := range sealed {
			got, err := s.ChangeEnvelope(ver)
			if err != nil || !bytes.Equal(got, x.Shape.Marshal()) {
				t.Fatalf("%s: the envelope of own change %d is not the one sealed (%v)", when, ver, err)
			}
			c, err := s.Change(ver)
			if err != nil {
				t.Fatal(err)
			}
			if _, origin, err := v.Open(c.Envelope); err != nil || origin != self {
				t.Fatalf("%s: own change %d does not verify: %v", when, ver, err)
			}
			e, err := s.OriginEntry(self, ver)
			if err != nil || e.LocalVersion != ver || e.Kind != c.Body.Kind || e.Hash != x.Hash {
				t.Fatalf("%s: origin entry of own change %d: %+v %v", when, ver, e, err)
			}
		}
		if got, err := s.ChangeEnvelope(recvVer); err != nil || !bytes.Equal(got, recvBytes) {
			t.Fatalf("%s: the received envelope changed (%v)", when, err)
		}
		if e, err := s.OriginEntry(other, 7); err != nil || e.LocalVersion != recvVer {
			t.Fatalf("%s: origin entry of the received change: %+v %v", when, e, err)
		}
		cs, err := s.Changes(0, 10_000)
		if err != nil || len(cs) != len(sealed)+1 {
			t.Fatalf("%s: %d changes (%v), want %d", when, len(cs), err, len(sealed)+1)
		}
		var vers []uint64
		for _, c := range cs {
			vers = append(vers, c.Version)
		}
		last, err := s.LastOriginVersion(self)
		if err != nil || last != vers[len(vers)-1] {
			t.Fatalf("%s: last own version %d (%v), want %d", when, last, err, vers[len(vers)-1])
		}
		if below, err := s.LastOriginVersionBelow(self, recvVer); err != nil || below != vers[4] {
			t.Fatalf("%s: last own version below the received change: %d (%v), want %d", when, below, err, vers[4])
		}
		// By origin, in pages, with a kind filter.
		page, reached, err := s.OriginChanges(self, 0, 3)
		if err != nil || len(page) != 3 || reached != vers[2] {
			t.Fatalf("%s: first page: %d changes reached %d (%v)", when, len(page), reached, err)
		}
		dels, reached, err := s.OriginChanges(self, 0, 100, pb.Kind_KIND_RESOURCE_DELETE)
		if err != nil || len(dels) != 3 || reached != vers[len(vers)-1] {
			t.Fatalf("%s: deletes: %d reached %d (%v)", when, len(dels), reached, err)
		}
	}
	check("open")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, LogDir, "*.seg"))
	if len(segs) < 2 {
		t.Fatalf("%d segments, want several", len(segs))
	}
	if s, err = Open(dir, Options{Signer: key, SegmentBytes: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.trees = treeCache{max: 8} // rebuilt from the files
	check("reopened")
}

// TestOpenCutsWhatPebbleNeverRecorded: log records after the version Pebble
// recorded durable (a round the completer never finished: nobody was
// answered) are cut at Open, and the next versions are taken again; a log
// shorter than Pebble's record is refused.
func TestOpenCutsWhatPebbleNeverRecorded(t *testing.T) {
	key, self := newKey(t)
	dir := t.TempDir()
	s, err := Open(dir, Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	appendN := func(n int) {
		if err := s.Update(context.Background(), func(tx *Txn) error {
			for range n {
				if _, _, err := tx.AppendOwn(&pb.Body{Origin: []byte(self), Kind: pb.Kind_KIND_RESOURCE_CREATE}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	appendN(10)
	end := s.DurableVersion()
	_ = s.Close()
	// Records appended after Pebble's mark, as a crash between the log's
	// fdatasync and Pebble's commit leaves them.
	l, err := seglog.Open(seglog.Options{Dir: filepath.Join(dir, LogDir), KeepAll: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append([]seglog.Record{{Version: end + 1, Type: recOwn, Data: []byte("never answered")}}); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	if s, err = Open(dir, Options{Signer: key}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ChangeEnvelope(end + 1); err != ErrNotFound {
		t.Fatalf("an unanswered record was kept: %v", err)
	}
	appendN(1)
	if cs, err := s.Changes(0, 100); err != nil || len(cs) != 11 {
		t.Fatalf("%d changes after the cut (%v), want 11", len(cs), err)
	}
	_ = s.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, LogDir, "*.seg"))
	if err := os.Truncate(segs[len(segs)-1], 200); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{Signer: key}); err == nil {
		t.Fatal("a log shorter than Pebble's record opened")
	}
}

// TestReceivedTreesAreStoredOnce: envelopes of another origin whose whole
// tree comes in one round are stored as bodies with the tree's signature
// once, and read back byte for byte; a tree that came in part is stored as
// a part (recPart: TestReceivedPartsAreStoredOnce).
func TestReceivedTreesAreStoredOnce(t *testing.T) {
	key, _ := newKey(t)
	okey, other := newKey(t)
	dir := t.TempDir()
	s, err := Open(dir, Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	seal := func(from, n int) [][]byte {
		var bodies [][]byte
		for i := range n {
			bodies = append(bodies, protocols.AppendBody(nil, &pb.Body{Origin: []byte(other), OriginVersion: uint64(from + i),
				Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "vm", Payload: fmt.Appendf(nil, `{"id":"%d"}`, from+i)}))
		}
		envs, err := protocols.Seal(okey, bodies)
		if err != nil {
			t.Fatal(err)
		}
		out := make([][]byte, n)
		for i, e := range envs {
			out[i] = protocols.MarshalEnvelope(e)
		}
		return out
	}
	whole, part := seal(100, 7), seal(200, 5)[1:4]
	got := map[uint64][]byte{}
	if err := s.Update(context.Background(), func(tx *Txn) error {
		for _, raw := range append(append([][]byte{}, whole...), part...) {
			env := &pb.Envelope{}
			b := &pb.Body{}
			if err := unmarshal(raw, env); err != nil {
				return err
			}
			if err := unmarshal(env.Body, b); err != nil {
				return err
			}
			v, err := tx.AppendReceived(b, BodyHash(env.Body), raw)
			if err != nil {
				return err
			}
			got[v] = raw
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		if types := logTypes(t, s); types[recPart] != 10 {
			t.Fatalf("%s: records by type %v; want the whole tree's 7 compact, the part's 3 too", when, types)
		}
		readsBack(t, s, got, other, when)
	}
	check("open")
	_ = s.Close()
	if s, err = Open(dir, Options{Signer: key}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check("reopened")
}

// receivedTree seals n bodies of origin (okey, other) from origin version
// from, each about pad bytes, and returns their encoded envelopes.
func receivedTree(t *testing.T, okey crypto.PrivKey, other peer.ID, from, n, pad int) [][]byte {
	t.Helper()
	bodies := make([][]byte, n)
	for i := range bodies {
		b := &pb.Body{Origin: []byte(other), OriginVersion: uint64(from + i), Kind: pb.Kind_KIND_RESOURCE_CREATE,
			DataType: "vm", Payload: fmt.Appendf(nil, `{"id":"%d"}`, from+i)}
		if short := pad - len(protocols.AppendBody(nil, b)); short > 3 {
			b.Payload = fmt.Appendf(nil, `{"id":"%d","pad":"%s"}`, from+i, bytes.Repeat([]byte("p"), short-10))
		}
		bodies[i] = protocols.AppendBody(nil, b)
	}
	envs, err := protocols.Seal(okey, bodies)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, n)
	for i, e := range envs {
		out[i] = protocols.MarshalEnvelope(e)
	}
	return out
}

// receive stores envs in one round, as received; it returns their
// versions and records each in got.
func receive(t *testing.T, s *Store, got map[uint64][]byte, envs ...[]byte) []uint64 {
	t.Helper()
	var vers []uint64
	if err := s.Update(context.Background(), func(tx *Txn) error {
		for _, raw := range envs {
			env := &pb.Envelope{}
			b := &pb.Body{}
			if err := unmarshal(raw, env); err != nil {
				return err
			}
			if err := unmarshal(env.Body, b); err != nil {
				return err
			}
			v, err := tx.AppendReceived(b, BodyHash(env.Body), raw)
			if err != nil {
				return err
			}
			got[v] = raw
			vers = append(vers, v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return vers
}

func pick(envs [][]byte, idx ...int) [][]byte {
	out := make([][]byte, len(idx))
	for i, x := range idx {
		out[i] = envs[x]
	}
	return out
}

func span(lo, hi, step int) []int {
	var out []int
	for i := lo; i < hi; i += step {
		out = append(out, i)
	}
	return out
}

func logTypes(t *testing.T, s *Store) map[byte]int {
	t.Helper()
	types := map[byte]int{}
	if err := s.clog.Iter(0, func(r seglog.Record) bool { types[r.Type]++; return true }); err != nil {
		t.Fatal(err)
	}
	return types
}

// TestReceivedPartsAreStoredOnce: envelopes of another origin that come in
// parts of their trees (a range, every third leaf, the first and the last,
// two parts in two rounds, parts of two trees interleaved, leaves out of
// order) are stored as bodies with the part's signature and proof once,
// and read back byte for byte, in this run and after a reopen; a lone leaf
// of its tree is kept as it came.
func TestReceivedPartsAreStoredOnce(t *testing.T) {
	key, _ := newKey(t)
	okey, other := newKey(t)
	dir := t.TempDir()
	s, err := Open(dir, Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	a := receivedTree(t, okey, other, 100, 20, 256)
	b := receivedTree(t, okey, other, 200, 30, 256)
	c := receivedTree(t, okey, other, 300, 9, 100)
	d := receivedTree(t, okey, other, 400, 16, 256)
	e := receivedTree(t, okey, other, 500, 10, 256)
	f := receivedTree(t, okey, other, 600, 12, 256)
	g := receivedTree(t, okey, other, 700, 5, 256)
	h := receivedTree(t, okey, other, 800, 8, 256)
	w := receivedTree(t, okey, other, 900, 6, 256)
	got := map[uint64][]byte{}
	var round1 [][]byte
	round1 = append(round1, pick(a, span(5, 15, 1)...)...) // 10: a middle range
	round1 = append(round1, pick(b, span(0, 30, 3)...)...) // 10: every third leaf
	round1 = append(round1, pick(c, 0, 8)...)              // 2: the first and the last
	round1 = append(round1, pick(d, span(2, 7, 1)...)...)  // 5: one part of d
	for i := range 5 {                                     // 10: parts of e and f interleaved
		round1 = append(round1, e[2*i], f[2*i+1])
	}
	round1 = append(round1, g[3])                   // 1: a lone leaf, as it came
	round1 = append(round1, pick(h, 5, 6, 2, 3)...) // 4: two parts, the leaves out of order
	receive(t, s, got, round1...)
	receive(t, s, got, append(pick(d, span(7, 13, 1)...), w...)...) // 6: d's other part; 6: a whole tree

	check := func(when string) {
		t.Helper()
		types := logTypes(t, s)
		if want := 10 + 10 + 2 + 5 + 10 + 4 + 6 + 6; types[recPart] != want || types[recEnvelope] != 1 {
			t.Fatalf("%s: records by type %v; want %d parts (a whole tree's 6 too), 1 envelope as it came", when, types, want)
		}
		readsBack(t, s, got, other, when)
		cs, err := s.Changes(0, 10_000)
		if err != nil || len(cs) != len(got) {
			t.Fatalf("%s: %d changes (%v), want %d", when, len(cs), err, len(got))
		}
		for _, c := range cs {
			if !bytes.Equal(protocols.MarshalEnvelope(c.Envelope), got[c.Version]) {
				t.Fatalf("%s: change %d of Changes differs from the envelope received", when, c.Version)
			}
		}
		if n, err := s.reindexOrigins(); err != nil || n != 0 {
			t.Fatalf("%s: re-index: %d added (%v)", when, n, err)
		}
	}
	check("open")
	_ = s.Close()
	if s, err = Open(dir, Options{Signer: key}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check("reopened")
	if h := s.Health(); h.Corrupt {
		t.Fatalf("health: %+v", h)
	}
}

// TestReceivedPartBytes: a part of 500 leaves of a tree of 1024 (256-byte
// bodies) takes far less of the log than its envelopes as they came.
func TestReceivedPartBytes(t *testing.T) {
	key, _ := newKey(t)
	okey, other := newKey(t)
	tree := receivedTree(t, okey, other, 1, 1024, 256)
	logBytes := func(s *Store) int64 { return s.clog.Size() } // the records (a segment's file is written ahead with zeros)
	r := rand.New(rand.NewPCG(3, 4))
	for _, c := range []struct {
		name string
		idx  []int
	}{
		{"random 500", r.Perm(1024)[:500]},
		{"range 500", span(300, 800, 1)},
	} {
		slices.Sort(c.idx)
		envs := pick(tree, c.idx...)
		var received int64
		for _, e := range envs {
			received += int64(len(e)) + 17 // a record's header: length, checksum, version, type
		}
		dir := t.TempDir()
		s, err := Open(dir, Options{Signer: key})
		if err != nil {
			t.Fatal(err)
		}
		before := logBytes(s)
		got := map[uint64][]byte{}
		receive(t, s, got, envs...)
		held := logBytes(s) - before
		if types := logTypes(t, s); types[recPart] != 500 {
			t.Fatalf("%s: records by type %v", c.name, types)
		}
		t.Logf("%s of 1024 leaves, %d-byte bodies: %d bytes a change as received, %d held (%.0f%%)", c.name,
			len(mustBody(t, envs[0])), received/500, held/500, 100*float64(held)/float64(received))
		if held > received*6/10 {
			t.Fatalf("%s: the log holds %d bytes for %d of envelopes", c.name, held, received)
		}
		for ver, raw := range got {
			if env, err := s.ChangeEnvelope(ver); err != nil || !bytes.Equal(env, raw) {
				t.Fatalf("%s: change %d read back differs (%v)", c.name, ver, err)
			}
		}
		_ = s.Close()
	}
}

func mustBody(t *testing.T, raw []byte) []byte {
	t.Helper()
	e, ok := protocols.ParseEnvelope(raw, false)
	if !ok {
		t.Fatal("not an envelope")
	}
	return e.Body
}

// TestDamagedPartIsCorrupt: a part whose records are damaged (a checksum
// that fails, a proof that does not rebuild, a record that does not parse,
// a group cut short) is reported corrupt, not served.
func TestDamagedPartIsCorrupt(t *testing.T) {
	key, _ := newKey(t)
	okey, other := newKey(t)
	dir := t.TempDir()
	s, err := Open(dir, Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tree := receivedTree(t, okey, other, 1, 10, 256)
	got := map[uint64][]byte{}
	vers := receive(t, s, got, pick(tree, 1, 2, 3, 4, 5, 6)...)
	wantCorrupt := func(what string, read func() error) {
		t.Helper()
		s.trees = treeCache{max: 8}
		if err := read(); !errors.Is(err, ferry.ErrCorrupt) {
			t.Fatalf("%s: %v; want an error wrapping ErrCorrupt", what, err)
		}
	}
	// Records that pass their checksum but do not rebuild, appended after
	// the log's last (read directly: never durable in Pebble's eyes).
	last := s.clog.Last()
	body := func(i int) []byte { return mustBody(t, tree[i]) }
	sig := func() []byte { e, _ := protocols.ParseEnvelope(tree[0], false); return e.Sig }()
	paths := [][][]byte{}
	for _, i := range []int{7, 8} {
		e, _ := protocols.ParseEnvelope(tree[i], true)
		paths = append(paths, e.Path)
	}
	proof, err := protocols.PartProof(10, []uint32{7, 8}, paths)
	if err != nil {
		t.Fatal(err)
	}
	bad := []seglog.Record{
		// A proof one hash short.
		{Version: last + 1, Type: recPart, Data: partRecord(0, 7, false, nil, 0, 0, nil, nil, body(7))},
		{Version: last + 2, Type: recPart, Data: partRecord(1, 8, false, nil, 2, 10, sig, proof[1:], body(8))},
		// A count that is not the group's.
		{Version: last + 3, Type: recPart, Data: partRecord(0, 7, false, nil, 0, 0, nil, nil, body(7))},
		{Version: last + 4, Type: recPart, Data: partRecord(1, 8, false, nil, 3, 10, sig, proof, body(8))},
		// Not a record.
		{Version: last + 5, Type: recPart, Data: []byte{0xff}},
		// A group whose last record never came.
		{Version: last + 6, Type: recPart, Data: partRecord(0, 7, false, nil, 0, 0, nil, nil, body(7))},
	}
	if err := s.clog.Append(bad); err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint64{last + 1, last + 2, last + 3, last + 5, last + 6} {
		wantCorrupt(fmt.Sprintf("change %d", v), func() error { _, err := s.ChangeEnvelope(v); return err })
	}
	wantCorrupt("the body of a record that does not parse", func() error { _, err := s.ChangeBody(last + 5); return err })
	// A good group, with a checksum that fails in its last record: the
	// others are served no envelope either (it needs the last's proof).
	segs, _ := filepath.Glob(filepath.Join(dir, LogDir, "*.seg"))
	raw, err := os.ReadFile(segs[len(segs)-1])
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(raw, body(6)[60:]) // the body's end (its origin is stored once)
	if at < 0 {
		t.Fatal("the last body is not in the segment")
	}
	fh, err := os.OpenFile(segs[len(segs)-1], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteAt([]byte{raw[at+40] ^ 0x20}, int64(at+40)); err != nil {
		t.Fatal(err)
	}
	_ = fh.Close()
	wantCorrupt("a part whose last record is damaged", func() error { _, err := s.ChangeEnvelope(vers[0]); return err })
	if h := s.Health(); h.OK || !h.Corrupt {
		t.Fatalf("health after damage: %+v", h)
	}
}

// TestTreeRecordsOfThePreviousReleaseRead: recTree records (a received
// whole tree, written before recPart took whole trees too) still read back
// as the envelopes received.
func TestTreeRecordsOfThePreviousReleaseRead(t *testing.T) {
	key, _ := newKey(t)
	okey, other := newKey(t)
	s, err := Open(t.TempDir(), Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tree := receivedTree(t, okey, other, 1, 5, 256)
	last := s.clog.Last()
	var recs []seglog.Record
	for i, raw := range tree {
		e, _ := protocols.ParseEnvelope(raw, false)
		var sig []byte
		if i == len(tree)-1 {
			sig = e.Sig
		}
		b := binary.AppendUvarint(nil, 0) // flags: the body whole
		b = binary.AppendUvarint(b, uint64(i))
		b = binary.AppendUvarint(b, uint64(i))
		b = binary.AppendUvarint(b, uint64(len(tree)))
		b = binary.AppendUvarint(b, uint64(len(sig)))
		b = append(append(b, sig...), e.Body...)
		recs = append(recs, seglog.Record{Version: last + 1 + uint64(i), Type: recTree, Data: b})
	}
	if err := s.clog.Append(recs); err != nil {
		t.Fatal(err)
	}
	for i, raw := range tree {
		env, err := s.ChangeEnvelope(last + 1 + uint64(i))
		if err != nil || !bytes.Equal(env, raw) {
			t.Fatalf("leaf %d: %v, or the envelope differs", i, err)
		}
		if b, err := s.ChangeBody(last + 1 + uint64(i)); err != nil || b.OriginVersion != uint64(1+i) {
			t.Fatalf("leaf %d: body %v %v", i, b, err)
		}
	}
}

// TestEnvelopesEncodedOtherwiseAreKeptAsTheyCame: a received envelope
// whose encoding is not the one the store would rebuild (here an unknown
// field at its end) stays as it came, and its group-mates too are served
// byte for byte.
func TestEnvelopesEncodedOtherwiseAreKeptAsTheyCame(t *testing.T) {
	key, _ := newKey(t)
	okey, other := newKey(t)
	s, err := Open(t.TempDir(), Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tree := receivedTree(t, okey, other, 1, 4, 256)
	odd := append(append([]byte(nil), tree[1]...), 0x78, 0x01) // field 15, varint 1
	got := map[uint64][]byte{}
	receive(t, s, got, tree[0], odd, tree[2], tree[3])
	types := logTypes(t, s)
	if types[recEnvelope] != 1 || types[recPart] != 3 {
		t.Fatalf("records by type %v; want the odd one as it came, the other three compact", types)
	}
	for ver, raw := range got {
		if env, err := s.ChangeEnvelope(ver); err != nil || !bytes.Equal(env, raw) {
			t.Fatalf("change %d: %v, or it differs from what came", ver, err)
		}
	}
}

// readsBack checks every received change in got (version -> envelope as
// received): its envelope reads back byte for byte and verifies as other's,
// its body and its origin index entry agree.
func readsBack(t *testing.T, s *Store, got map[uint64][]byte, other peer.ID, when string) {
	t.Helper()
	v := protocols.NewVerifier()
	for ver, raw := range got {
		env, err := s.ChangeEnvelope(ver)
		if err != nil || !bytes.Equal(env, raw) {
			t.Fatalf("%s: change %d read back differs from the envelope received (%v)", when, ver, err)
		}
		c, err := s.Change(ver)
		if err != nil {
			t.Fatal(err)
		}
		if _, origin, err := v.Open(c.Envelope); err != nil || origin != other {
			t.Fatalf("%s: change %d does not verify: %v", when, ver, err)
		}
		if b, err := s.ChangeBody(ver); err != nil || b.OriginVersion != c.Body.OriginVersion {
			t.Fatalf("%s: body of %d: %v", when, ver, err)
		}
		if e, err := s.OriginEntry(other, c.Body.OriginVersion); err != nil || e.LocalVersion != ver {
			t.Fatalf("%s: origin entry of %d: %+v %v", when, ver, e, err)
		}
	}
}

// TestCarriedRoundsReplayed: a round of a few changes is durable with the
// log's one fdatasync (its Pebble batch rides in a commit record): a crash
// that loses everything Pebble had not synced (a strict in-memory file
// system reset to what was synced) loses no answered round; Open replays
// them into Pebble, and the log goes on from there. A commit record whose
// chain does not start at Pebble's mark (a round before it is not in
// Pebble) is cut with the records of its round; one that does is applied.
func TestCarriedRoundsReplayed(t *testing.T) {
	defer func(b time.Duration) { carryBound = b }(carryBound)
	carryBound = time.Hour // no sync of Pebble's WAL but the ones Open and Close make
	key, self := newKey(t)
	fs := vfs.NewStrictMem()
	const dir = "/store"
	// The directories exist and are synced before (a strict file system
	// drops what an unsynced directory holds).
	if err := fs.MkdirAll(filepath.Join(dir, LogDir), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"/", dir} {
		f, err := fs.OpenDir(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := errors.Join(f.Sync(), f.Close()); err != nil {
			t.Fatal(err)
		}
	}
	open := func() *Store {
		t.Helper()
		s, err := Open(dir, Options{Signer: key, Health: HealthOptions{FS: fs}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	round := func(s *Store, i int) uint64 {
		t.Helper()
		var ver uint64
		if err := s.Update(context.Background(), func(tx *Txn) error {
			v, _, err := tx.AppendOwn(&pb.Body{Origin: []byte(self), Kind: pb.Kind_KIND_RESOURCE_CREATE})
			ver = v
			tx.SetAux(fmt.Sprintf("row-%d", i), []byte{byte(i)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return ver
	}
	crash := func(s *Store) {
		fs.SetIgnoreSyncs(true)
		_ = s.Close()
		fs.ResetToSyncedState()
		fs.SetIgnoreSyncs(false)
	}
	check := func(s *Store, n int, last uint64) {
		t.Helper()
		if got := s.DurableVersion(); got != last {
			t.Fatalf("durable version %d after the crash, want %d (the last answered round)", got, last)
		}
		for i := range n {
			if v, err := s.Aux(fmt.Sprintf("row-%d", i)); err != nil || !bytes.Equal(v, []byte{byte(i)}) {
				t.Fatalf("row %d of an answered round: %x, %v", i, v, err)
			}
		}
		if cs, err := s.Changes(0, 1000); err != nil || len(cs) != n {
			t.Fatalf("%d changes (%v), want %d", len(cs), err, n)
		}
	}
	s := open()
	var last uint64
	for i := range 20 {
		last = round(s, i)
	}
	crash(s)
	s = open()
	check(s, 20, last)
	for i := 20; i < 25; i++ {
		last = round(s, i)
	}
	crash(s)
	s = open()
	check(s, 25, last)
	_ = s.Close()

	// Rounds appended by hand after a clean stop: a commit record whose
	// chain is broken, then one whose chain holds.
	forged := func(prev uint64, row string) {
		t.Helper()
		s := open()
		b := s.db.NewBatch()
		_ = b.Set(k(pAux).str(row), []byte("x"), nil)
		_ = b.Set([]byte(keyLogEnd), u64Value(last+1), nil)
		rec := commitRecord(prev, b)
		_ = s.Close()
		l, err := seglog.Open(seglog.Options{FS: fs, Dir: filepath.Join(dir, LogDir), KeepAll: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Append([]seglog.Record{{Version: last + 1, Type: recEnvelope, Data: []byte("x")}, {Version: last + 1, Type: seglog.TypeCommit, Data: rec}}); err != nil {
			t.Fatal(err)
		}
		_ = l.Close()
	}
	forged(last-1, "broken")
	s = open()
	if _, err := s.Aux("broken"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the round of a broken chain was applied: %v", err)
	}
	if _, err := s.ChangeEnvelope(last + 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the record of a broken chain was kept: %v", err)
	}
	_ = s.Close()
	forged(last, "chained")
	s = open()
	defer s.Close()
	if v, err := s.Aux("chained"); err != nil || string(v) != "x" {
		t.Fatalf("the round of a whole chain was not replayed: %q, %v", v, err)
	}
	if env, err := s.ChangeEnvelope(last + 1); err != nil || string(env) != "x" {
		t.Fatalf("the record of a whole chain: %q, %v", env, err)
	}
}

// ownPrefixLen finds exactly the prefix ownPrefix writes: the same body
// is cut as bytes.HasPrefix(body, ownPrefix(self, ver)) would cut it.
func TestOwnPrefixLenIsOwnPrefix(t *testing.T) {
	self := []byte("0123456789012345678901234567890123456789")
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		ver := rnd.Uint64() >> (rnd.IntN(64))
		b := ownPrefix(self, ver)
		switch i % 6 {
		case 1: // another version
			b = ownPrefix(self, ver+1)
		case 2: // the version in an overlong varint
			b = append(b[:len(b)-1], b[len(b)-1]|0x80, 0)
		case 3: // another origin
			b = ownPrefix([]byte("1123456789012345678901234567890123456789"), ver)
		case 4: // cut short
			b = b[:rnd.IntN(len(b))]
		}
		body := append(b, make([]byte, rnd.IntN(3))...)
		want := 0
		if p := ownPrefix(self, ver); bytes.HasPrefix(body, p) {
			want = len(p)
		}
		if got := ownPrefixLen(self, ver, body); got != want {
			t.Fatalf("ownPrefixLen(ver %d, %x) = %d, want %d", ver, body, got, want)
		}
	}
	if ownPrefixLen(nil, 1, []byte{0x0a, 0, 0x10, 1}) != 0 || ownPrefixLen(bytes.Repeat([]byte{1}, 128), 1, nil) != 0 {
		t.Fatal("an empty or a 128-byte origin is cut")
	}
}

// ownRecord is an own change's log record whole, as the log holds it
// (appendOwnHead and the body, joined).
func (s *Store) ownRecord(ver, tree uint64, leaf, size uint32, sig, body []byte) []byte {
	b, body := s.appendOwnHead(nil, ver, tree, leaf, size, sig, body)
	return append(b, body...)
}

// partRecord is a recPart record whole, as the log holds it
// (appendPartHead and the body, joined).
func partRecord(back uint64, leaf uint32, stripped bool, origin []byte, count, size uint32, sig []byte, proof [][]byte, body []byte) []byte {
	return append(appendPartHead(nil, back, leaf, stripped, origin, count, size, sig, proof), body...)
}

package store

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

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
			if err != nil || !bytes.Equal(got, x.Bytes) {
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
// once, and read back byte for byte; a tree that came in part is kept as it
// came.
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
		types := map[byte]int{}
		if err := s.clog.Iter(0, func(r seglog.Record) bool { types[r.Type]++; return true }); err != nil {
			t.Fatal(err)
		}
		if types[recTree] != 7 || types[recEnvelope] != 3 {
			t.Fatalf("%s: records by type %v; want the whole tree's 7 compact, the part's 3 as they came", when, types)
		}
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
		}
		if e, err := s.OriginEntry(other, 103); err != nil || got[e.LocalVersion] == nil {
			t.Fatalf("%s: origin entry: %+v %v", when, e, err)
		}
	}
	check("open")
	_ = s.Close()
	if s, err = Open(dir, Options{Signer: key}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check("reopened")
}

package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/protocols/pb"
)

// damageLargestSST writes 4 KiB of random bytes into the middle of the
// largest sst of a closed store, and returns the file's name.
func damageLargestSST(t *testing.T, dir string) string {
	t.Helper()
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	best, size := "", int64(0)
	for _, p := range ssts {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			best, size = p, fi.Size()
		}
	}
	if best == "" {
		t.Fatalf("no sst in %s", dir)
	}
	junk := make([]byte, 4096)
	_, _ = rand.Read(junk)
	f, err := os.OpenFile(best, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(junk, size/2); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return filepath.Base(best)
}

// TestCorruptBlockIsAnErrorAndRebuilt: a store whose sst has a damaged
// block answers reads of that range with an error wrapping
// ferry.ErrCorrupt (not a bare one that apps read as `unavailable`), says
// so in Health with the file, and marks its directory; the next Open
// rebuilds it from what is readable, keeps the damaged copy, and leaves a
// repair mark naming the version after which own changes were lost.
// (Before: the read failed with an unmarked error and Health said OK.)
func TestCorruptBlockIsAnErrorAndRebuilt(t *testing.T) {
	key, self := newKey(t)
	dir := filepath.Join(t.TempDir(), "data")
	s, err := Open(dir, Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	const total = 3000
	pad := bytes.Repeat([]byte("x"), 2048)
	for i := 0; i < total; i += 100 {
		if err := s.Update(context.Background(), func(tx *Txn) error {
			for j := range 100 {
				if _, _, err := tx.AppendOwn(&pb.Body{Origin: []byte(self), Kind: pb.Kind_KIND_RESOURCE_CREATE,
					Payload: fmt.Appendf(nil, `{"id":"%d"}`, i+j)}); err != nil {
					return err
				}
				// Pebble holds the tables (the changes are in the log).
				tx.PutRow("tb", uint64(i+j+1), fmt.Appendf(nil, `{"pad":%q}`, pad))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Close and open once: what the WAL held goes into an sst.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(dir, Options{Signer: key}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	file := damageLargestSST(t, dir)
	// The embedded NATS server keeps its JetStream store (the events
	// stream) in the data directory: the rebuild moves it along.
	jsFile := filepath.Join(dir, "jetstream", "$G", "streams", "FERRY_EVENTS", "meta.inf")
	if err := os.MkdirAll(filepath.Dir(jsFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(jsFile, []byte("stream"), 0o644); err != nil {
		t.Fatal(err)
	}

	s, err = Open(dir, Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Rows("tb")
	if !errors.Is(err, ferry.ErrCorrupt) || ferry.Code(err) != ferry.CodeCorrupt {
		t.Fatalf("reading the damaged range: %v (code %s); want an error wrapping ErrCorrupt", err, ferry.Code(err))
	}
	if !strings.Contains(err.Error(), file) {
		t.Fatalf("the error does not name %s: %v", file, err)
	}
	h := s.Health()
	if h.OK || !h.Corrupt || !strings.Contains(h.Reason, file) {
		t.Fatalf("health of the corrupt store: %+v", h)
	}
	if _, err := os.Stat(filepath.Join(dir, corruptMark)); err != nil {
		t.Fatalf("no rebuild mark: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(dir, Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cs, err := s.Changes(0, 2*total)
	if err != nil {
		t.Fatalf("the rebuilt store: %v", err)
	}
	m, ok, err := s.Repair()
	if err != nil || !ok {
		t.Fatalf("repair mark: %v %v", ok, err)
	}
	// The changes are in the log, not in Pebble: the rebuild lost table
	// rows and kept every change.
	if len(cs) != total {
		t.Fatalf("rebuilt: %d of %d changes; the change log must keep them all", len(cs), total)
	}
	byOrigin, _, err := s.OriginChanges(self, 0, 2*total)
	if err != nil || len(byOrigin) != total {
		t.Fatalf("own changes by origin after the rebuild: %d of %d (%v)", len(byOrigin), total, err)
	}
	rows, err := s.Rows("tb")
	if err != nil || len(rows) == 0 || len(rows) >= total {
		t.Fatalf("rebuilt: %d of %d rows (%v); want some kept, some lost", len(rows), total, err)
	}
	lost := total - len(rows)
	if h := s.Health(); !h.OK {
		t.Fatalf("health of the rebuilt store: %+v", h)
	}
	if _, err := os.Stat(m.Damaged); err != nil {
		t.Fatalf("the damaged copy is not kept: %v", err)
	}
	if b, err := os.ReadFile(jsFile); err != nil || string(b) != "stream" {
		t.Fatalf("the JetStream directory did not move into the rebuilt store: %q %v", b, err)
	}
	if err := s.Update(context.Background(), func(tx *Txn) error { tx.RepairDone(); return nil }); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Repair(); ok {
		t.Fatal("the repair mark is still there after RepairDone")
	}
	t.Logf("damaged %s; rebuilt keeping %d keys, %d of %d changes and %d rows (%d lost between %s and %s); damaged copy %s",
		file, m.Kept, len(cs), total, len(rows), lost, m.After, m.Before, filepath.Base(m.Damaged))
}

// writeRows writes n table rows and closes the store.
func writeRows(t *testing.T, dir string, n int) {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(context.Background(), func(tx *Txn) error {
		for i := range n {
			tx.PutRow("tb", uint64(i+1), []byte(`{"n":1}`))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func rowCount(t *testing.T, dir string) int {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, ok, err := s.Repair(); ok || err != nil {
		t.Fatalf("repair mark on a store that lost nothing: %v %v", ok, err)
	}
	rows, err := s.Rows("tb")
	if err != nil {
		t.Fatal(err)
	}
	return len(rows)
}

// TestRebuildFinishesAnInterruptedSwap: a crash between moving the damaged
// directory aside and moving the rebuilt one into place leaves no data
// directory and a complete <dir>.rebuild; Open finishes the move instead
// of creating an empty store. (Without it, Pebble creates an empty store.)
func TestRebuildFinishesAnInterruptedSwap(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	writeRows(t, dir, 50)
	if err := os.Rename(dir, dir+".rebuild"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir+".rebuild", rebuiltMark), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if n := rowCount(t, dir); n != 50 {
		t.Fatalf("%d rows after the interrupted swap, want 50", n)
	}
	if _, err := os.Stat(dir + ".rebuild"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s.rebuild is still there: %v", dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, rebuiltMark)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the rebuilt mark is still there: %v", err)
	}
}

// TestRebuildOfAReadableStoreDropsNothing: a store marked corrupt whose
// every key reads (a damaged filter block fails point reads, not scans) is
// rebuilt whole, with no repair mark, and the mark is gone.
func TestRebuildOfAReadableStoreDropsNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	writeRows(t, dir, 50)
	if err := os.WriteFile(filepath.Join(dir, corruptMark), []byte("test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n := rowCount(t, dir); n != 50 {
		t.Fatalf("%d rows after the rebuild, want 50", n)
	}
	if _, err := os.Stat(filepath.Join(dir, corruptMark)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the corruption mark is still there: %v", err)
	}
	kept, _ := filepath.Glob(dir + ".damaged-*")
	if len(kept) != 1 {
		t.Fatalf("damaged copies kept: %v, want one", kept)
	}
}

package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/goleak"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newKey(t testing.TB) (crypto.PrivKey, peer.ID) {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(priv)
	return priv, id
}

func open(t testing.TB, dir string, key crypto.PrivKey) *Store {
	t.Helper()
	s, err := Open(dir, Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConcurrentCommitsAreDurableAndBatched(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, nil)
	const callers, each = 32, 50
	var wg sync.WaitGroup
	errs := make(chan error, callers*each)
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				errs <- s.Update(context.Background(), func(tx *Txn) error {
					tx.PutRow("tb", uint64(c*each+i+1), []byte(`{"n":1}`))
					_, err := tx.Next("n")
					return err
				})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir, nil)
	rows, err := s2.Rows("tb")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != callers*each {
		t.Fatalf("rows after reopen = %d, want %d", len(rows), callers*each)
	}
	n, _ := s2.Counter("n")
	if n != callers*each {
		t.Fatalf("counter = %d, want %d", n, callers*each)
	}
}

func TestFailedTransactionLeavesNoTrace(t *testing.T) {
	s := open(t, t.TempDir(), nil)
	boom := errors.New("boom")
	var order []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(3)
	record := func(i int) func(error) {
		return func(error) { mu.Lock(); order = append(order, i); mu.Unlock(); wg.Done() }
	}
	ctx := context.Background()
	s.Submit(ctx, func(tx *Txn) error { tx.PutRow("tb", 1, []byte(`{}`)); return nil }, record(1))
	s.Submit(ctx, func(tx *Txn) error {
		tx.PutRow("tb", 2, []byte(`{}`))
		if _, err := tx.Next("c"); err != nil {
			return err
		}
		return boom
	}, func(err error) {
		if !errors.Is(err, boom) {
			t.Errorf("failing txn got %v", err)
		}
		record(2)(err)
	})
	s.Submit(ctx, func(tx *Txn) error {
		if _, err := tx.GetRow("tb", 2); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("saw a failed transaction's write: %v", err)
		}
		if _, err := tx.GetRow("tb", 1); err != nil {
			return fmt.Errorf("did not see an earlier write: %w", err)
		}
		tx.PutRow("tb", 3, []byte(`{}`))
		return nil
	}, func(err error) {
		if err != nil {
			t.Error(err)
		}
		record(3)(err)
	})
	wg.Wait()
	if fmt.Sprint(order) != "[1 2 3]" {
		t.Fatalf("callbacks ran in order %v", order)
	}
	if c, _ := s.Counter("c"); c != 0 {
		t.Fatalf("failed transaction's counter kept: %d", c)
	}
	rows, _ := s.Rows("tb")
	if len(rows) != 2 || rows[0].ID != 1 || rows[1].ID != 3 {
		t.Fatalf("rows = %+v", rows)
	}
}

func TestPanickingTransactionIsAnError(t *testing.T) {
	s := open(t, t.TempDir(), nil)
	err := s.Update(context.Background(), func(*Txn) error { panic("bad") })
	if err == nil {
		t.Fatal("want an error")
	}
	if err := s.Update(context.Background(), func(tx *Txn) error { tx.PutRow("t", 1, []byte("{}")); return nil }); err != nil {
		t.Fatalf("store unusable after a panic: %v", err)
	}
}

func TestSealedChangesVerifyAndDedup(t *testing.T) {
	key, id := newKey(t)
	s := open(t, t.TempDir(), key)
	var sealed []*Sealed
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range 20 {
		wg.Add(1)
		s.Submit(context.Background(), func(tx *Txn) error {
			_, x, err := tx.AppendOwn(&pb.Body{Origin: []byte(id), Kind: pb.Kind_KIND_RESOURCE_CREATE, Payload: []byte(fmt.Sprintf(`{"id":"%d"}`, i))})
			tx.OnCommit(func() { mu.Lock(); sealed = append(sealed, x); mu.Unlock() })
			return err
		}, func(err error) {
			if err != nil {
				t.Error(err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	v := protocols.NewVerifier()
	for _, x := range sealed {
		if x.Envelope == nil {
			t.Fatal("hook ran before sealing")
		}
		if _, _, err := v.Open(x.Envelope); err != nil {
			t.Fatal(err)
		}
	}
	all0, _ := s.Changes(0, 1000)
	if len(all0) != 20 {
		t.Fatalf("the origin holds %d changes", len(all0))
	}
	fifth := all0[4].Version
	changes, _, err := s.OriginChanges(id, fifth, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 15 || changes[0].Body.OriginVersion != all0[5].Version {
		t.Fatalf("origin changes after the fifth: %d, first %v", len(changes), changes[0].Body.OriginVersion)
	}
	last, _ := s.LastOriginVersion(id)
	if last != all0[19].Version {
		t.Fatalf("last origin version %d", last)
	}
	// A second store receives the envelopes; the second copy is a duplicate.
	r := open(t, t.TempDir(), nil)
	for round := range 2 {
		for _, x := range sealed {
			body, _, err := v.Open(x.Envelope)
			if err != nil {
				t.Fatal(err)
			}
			err = r.Update(context.Background(), func(tx *Txn) error {
				e, dup, err := tx.HeldOrigin(id, body.OriginVersion)
				if err != nil {
					return err
				}
				if dup != (round == 1) {
					return fmt.Errorf("round %d: dup=%v", round, dup)
				}
				if dup {
					if e.Hash != x.Hash || e.Kind != body.Kind {
						return fmt.Errorf("held entry %+v, want hash %x", e, x.Hash)
					}
					return nil
				}
				_, err = tx.AppendReceived(body, BodyHash(x.Envelope.Body), x.Shape.Marshal())
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	all, _ := r.Changes(0, 1000)
	if len(all) != 20 {
		t.Fatalf("receiver holds %d changes", len(all))
	}
	if last, _ := r.LastOriginVersion(id); last != all0[19].Version {
		t.Fatalf("receiver's last version of the origin: %d", last)
	}
}

func TestSealWithoutSignerFailsTheCommit(t *testing.T) {
	_, id := newKey(t)
	s := open(t, t.TempDir(), nil)
	err := s.Update(context.Background(), func(tx *Txn) error {
		_, _, err := tx.AppendOwn(&pb.Body{Origin: []byte(id)})
		return err
	})
	if !errors.Is(err, ErrNoSigner) {
		t.Fatalf("got %v", err)
	}
	if n, _ := s.Counter(CtrVersion); n != 0 {
		t.Fatal("version counter moved in a failed commit")
	}
}

func TestSchemaChecksAndMigrations(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	epoch := s.Epoch()
	_ = s.Close()
	// Pretend the data is from schema 0 and needs a migration.
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Set([]byte(keySchema), u64Value(0), pebble.Sync)
	_ = db.Close()
	if _, err := Open(dir, Options{Migrations: []Migration{}}); err == nil {
		t.Fatal("opened without a migration path")
	}
	ran := false
	s, err = Open(dir, Options{Migrations: []Migration{{From: 0, Apply: func(_ *pebble.DB, b *pebble.Batch) error {
		ran = true
		return b.Set(rowKey("migrated", 1), []byte("{}"), nil)
	}}, {From: 1, Apply: func(*pebble.DB, *pebble.Batch) error { return nil }}, {From: 2, Apply: func(*pebble.DB, *pebble.Batch) error { return nil }}, {From: 3, Apply: func(*pebble.DB, *pebble.Batch) error { return nil }}}})
	if err != nil {
		t.Fatal(err)
	}
	if !ran || s.Epoch() != epoch {
		t.Fatalf("migration ran=%v epoch kept=%v", ran, s.Epoch() == epoch)
	}
	if _, err := s.Row("migrated", 1); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	db, _ = pebble.Open(dir, &pebble.Options{})
	_ = db.Set([]byte(keySchema), u64Value(SchemaVersion+1), pebble.Sync)
	_ = db.Close()
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("newer schema: %v", err)
	}
}

func TestCloseIsIdempotentAndRefusesWork(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(context.Background(), func(*Txn) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("got %v", err)
	}
}

func TestAuxPrefix(t *testing.T) {
	s := open(t, t.TempDir(), nil)
	err := s.Update(context.Background(), func(tx *Txn) error {
		tx.SetAux("planner_closed/a", []byte{1})
		tx.SetAux("planner_closed/b", []byte{0})
		tx.SetAux("other/c", []byte{1})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.AuxPrefix("planner_closed/")
	if err != nil || len(got) != 2 || got["planner_closed/a"][0] != 1 || got["planner_closed/b"][0] != 0 {
		t.Fatalf("AuxPrefix: %v %v", got, err)
	}
}

// A transaction reads back its own writes, the last one winning, however
// many it made (past indexFrom they are looked up by index), and a rollback
// to a savepoint forgets what followed it for the reads too.
func TestALargeTransactionReadsItsOwnWrites(t *testing.T) {
	s := open(t, t.TempDir(), nil)
	name := func(i int) string { return fmt.Sprintf("big/%03d", i) }
	want := func(tx *Txn, i int, v []byte) {
		t.Helper()
		got, err := tx.GetAux(name(i))
		switch {
		case v == nil && !errors.Is(err, ErrNotFound):
			t.Fatalf("%s: %v %v, want not found", name(i), got, err)
		case v != nil && (err != nil || !bytes.Equal(got, v)):
			t.Fatalf("%s: %v %v, want %v", name(i), got, err, v)
		}
	}
	err := s.Update(context.Background(), func(tx *Txn) error {
		for i := range 3 * indexFrom {
			tx.SetAux(name(i), []byte{byte(i)})
			want(tx, i, []byte{byte(i)})
		}
		tx.SetAux(name(5), []byte{200})
		tx.DeleteAux(name(6))
		want(tx, 5, []byte{200})
		want(tx, 6, nil)
		sp := tx.Savepoint()
		tx.SetAux(name(7), []byte{201})
		tx.DeleteAux(name(8))
		tx.SetAux(name(999), []byte{1})
		want(tx, 7, []byte{201})
		want(tx, 8, nil)
		tx.RollbackTo(sp)
		want(tx, 7, []byte{7})
		want(tx, 8, []byte{8})
		want(tx, 999, nil)
		want(tx, 5, []byte{200})
		want(tx, 6, nil)
		tx.SetAux(name(9), []byte{202})
		want(tx, 9, []byte{202})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.Aux(name(9)); err != nil || !bytes.Equal(v, []byte{202}) {
		t.Fatalf("after the commit: %v %v", v, err)
	}
}

// TestLingerFor: a round waits for company only when operations come fast
// (lingerRate a second or more) and it is small, for the time the missing
// ones take at that rate, at most lingerMax.
func TestLingerFor(t *testing.T) {
	for _, c := range []struct {
		n    int
		rate float64
		want time.Duration
	}{
		{1, 0, 0},
		{1, 1000, 0},                        // light load: latency first
		{1, 100000, 310 * time.Microsecond}, // 31 more at 100,000/s
		{1, 5000, lingerMax},                // 31 more at 5,000/s take longer than lingerMax
		{lingerRound, 5000, 0},              // full enough
		{500, 100000, 0},                    // full rate
	} {
		if got := lingerFor(c.n, c.rate); got != c.want {
			t.Errorf("lingerFor(%d, %v) = %v, want %v", c.n, c.rate, got, c.want)
		}
	}
}

// TestCountersReadTheirLastWrite: a transaction's counters read what it
// last wrote of them, however written (SetCounter, Next, a write of the
// key made anew, a delete), and a rollback takes back what came after the
// savepoint; more counters than the transaction remembers at once are read
// right too.
func TestCountersReadTheirLastWrite(t *testing.T) {
	s := open(t, t.TempDir(), nil)
	ctx := context.Background()
	if err := s.Update(ctx, func(tx *Txn) error { tx.SetCounter("x", 3); return nil }); err != nil {
		t.Fatal(err)
	}
	err := s.Update(ctx, func(tx *Txn) error {
		want := func(name string, v uint64) {
			t.Helper()
			if got, err := tx.CounterValue(name); err != nil || got != v {
				t.Fatalf("%s: %d (%v), want %d", name, got, err, v)
			}
		}
		want("x", 3) // from the store
		tx.SetCounter("x", 5)
		want("x", 5)
		sp := tx.Savepoint()
		tx.SetCounter("x", 7)
		if n, _ := tx.Next("x"); n != 8 {
			t.Fatalf("next after 7: %d", n)
		}
		tx.RollbackTo(sp)
		want("x", 5)
		tx.set(k(keyCtrPrefix).str("x"), u64Value(9)) // not the shared key
		want("x", 9)
		tx.del(k(keyCtrPrefix).str("x"))
		want("x", 0)
		for i := range 6 { // more than the memo holds
			tx.SetCounter(fmt.Sprint("c", i), uint64(10+i))
		}
		for i := range 6 {
			want(fmt.Sprint("c", i), uint64(10+i))
		}
		if n, _ := tx.Next("x"); n != 1 {
			t.Fatalf("next after a delete: %d", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]uint64{"x": 1, "c0": 10, "c5": 15} {
		if got, err := s.Counter(name); err != nil || got != v {
			t.Fatalf("%s on disk: %d (%v), want %d", name, got, err, v)
		}
	}
}

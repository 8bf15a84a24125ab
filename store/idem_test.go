package store

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func lookup(t *testing.T, s *Store, op, key string) (IdemRecord, bool) {
	t.Helper()
	var rec IdemRecord
	var found bool
	if err := s.Update(context.Background(), func(tx *Txn) error {
		var err error
		rec, found, err = tx.Idempotency(op, key)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return rec, found
}

// TestIdempotencyWindowAndExpiry: a key is found within the window, across
// a restart, not after it; expiry deletes old records and their index
// entries and keeps newer ones, including a key written again later.
func TestIdempotencyWindowAndExpiry(t *testing.T) {
	key, _ := newKey(t)
	dir := t.TempDir()
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	o := Options{Signer: key, Now: c.now, IdempotencyWindow: time.Minute}
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	put := func(s *Store, op, k, answer string) {
		t.Helper()
		if err := s.Update(ctx, func(tx *Txn) error {
			return tx.PutIdempotency(op, k, sha256.Sum256([]byte(answer)), []byte(answer))
		}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		put(s, "propagate", fmt.Sprintf("old-%d", i), `{"v":1}`)
	}
	put(s, "propagate", "again", `{"v":1}`)
	c.add(40 * time.Second)
	put(s, "propagate", "new", `{"v":2}`)
	put(s, "review.submit", "new", `{"v":3}`)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rec, ok := lookup(t, s, "propagate", "old-7")
	if !ok || string(rec.Answer) != `{"v":1}` || rec.Hash != sha256.Sum256([]byte(`{"v":1}`)) {
		t.Fatalf("a key within the window after a restart: %v %+v", ok, rec)
	}
	if rec, ok := lookup(t, s, "review.submit", "new"); !ok || string(rec.Answer) != `{"v":3}` {
		t.Fatalf("ops keep their own keys: %v %+v", ok, rec)
	}
	c.add(30 * time.Second) // old ones are 70 s old, new ones 30 s
	if _, ok := lookup(t, s, "propagate", "old-7"); ok {
		t.Fatal("a key older than the window is still found")
	}
	put(s, "propagate", "again", `{"v":4}`) // the same key, reused after its window
	n, err := s.ExpireIdempotency(ctx, c.now(), 20)
	if err != nil || n != 20 {
		t.Fatalf("first expiry pass: %d %v, want 20", n, err)
	}
	for {
		n, err := s.ExpireIdempotency(ctx, c.now(), 20)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	count := func(prefix string) int {
		n := 0
		if err := s.scan([]byte(prefix), prefixEnd([]byte(prefix)), false, func(_, _ []byte) (bool, error) { n++; return true, nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := count(pIdem); got != 3 {
		t.Fatalf("%d records after expiry, want 3 (new twice, again)", got)
	}
	if got := count(pIdemIndex); got != 3 {
		t.Fatalf("%d index entries after expiry, want 3", got)
	}
	if rec, ok := lookup(t, s, "propagate", "again"); !ok || string(rec.Answer) != `{"v":4}` {
		t.Fatalf("a key written again after its window was expired with the old one: %v %+v", ok, rec)
	}
}

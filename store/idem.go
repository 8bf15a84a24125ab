package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble"
)

// Idempotency keys: an app that retries a request (after a timeout, or an
// `unavailable` answer whose change had in fact been written) names it with
// a key, and a repeat within the window gets the first answer. The record is
// written in the same transaction as the change it answers, so a crash can
// never keep one without the other.
//
//	ik/<op>/<key>                   record: created (8 bytes, unix nanos), SHA-256 of the request, the answer
//	it/<created>/<op>/<key>         time index, for expiry by range
//
// op and key are length-prefixed like every variable key part.
const (
	pIdem      = "ik/"
	pIdemIndex = "it/"
)

// DefaultIdempotencyWindow is how long a key is remembered (JetStream's
// default duplicate window).
const DefaultIdempotencyWindow = 2 * time.Minute

// MaxIdempotencyKeyBytes bounds a key (it is part of a store key).
const MaxIdempotencyKeyBytes = 200

// IdemRecord is what a key remembers.
type IdemRecord struct {
	Created time.Time
	Hash    [32]byte // of the request, so a key reused for another request is told apart
	Answer  []byte   // the first answer's fields, JSON
}

func idemKey(op, key string) key { return k(pIdem).str(op).str(key) }

func idemIndexKey(created int64, op, key string) key {
	return k(pIdemIndex).u64(uint64(created)).str(op).str(key)
}

// IdempotencyWindow is how long keys are remembered.
func (s *Store) IdempotencyWindow() time.Duration {
	if s.opts.IdempotencyWindow > 0 {
		return s.opts.IdempotencyWindow
	}
	return DefaultIdempotencyWindow
}

// Idempotency reads the record of (op, key) inside a transaction; found is
// false when there is none or it is older than the window.
func (t *Txn) Idempotency(op, key string) (rec IdemRecord, found bool, err error) {
	v, err := t.get(idemKey(op, key))
	if errors.Is(err, ErrNotFound) {
		return IdemRecord{}, false, nil
	}
	if err != nil {
		return IdemRecord{}, false, err
	}
	rec, err = decodeIdem(v)
	if err != nil {
		return IdemRecord{}, false, err
	}
	if t.now.Sub(rec.Created) > t.s.IdempotencyWindow() {
		return IdemRecord{}, false, nil
	}
	return rec, true, nil
}

// PutIdempotency records the answer of (op, key) in this transaction.
func (t *Txn) PutIdempotency(op, key string, hash [32]byte, answer []byte) error {
	if len(key) == 0 || len(key) > MaxIdempotencyKeyBytes || len(op) == 0 || len(op) > 255 {
		return fmt.Errorf("idempotency key of %d bytes (op %q): want 1-%d", len(key), op, MaxIdempotencyKeyBytes)
	}
	now := t.now.UnixNano()
	v := make([]byte, 0, 40+len(answer))
	v = binary.BigEndian.AppendUint64(v, uint64(now))
	v = append(v, hash[:]...)
	v = append(v, answer...)
	t.set(idemKey(op, key), v)
	t.set(idemIndexKey(now, op, key), nil)
	return nil
}

func decodeIdem(v []byte) (IdemRecord, error) {
	if len(v) < 40 {
		return IdemRecord{}, fmt.Errorf("idempotency record of %d bytes", len(v))
	}
	r := IdemRecord{Created: time.Unix(0, int64(binary.BigEndian.Uint64(v))), Answer: append([]byte(nil), v[40:]...)}
	copy(r.Hash[:], v[8:40])
	return r, nil
}

// ExpireIdempotency forgets keys created before now minus the window, at
// most max of them per call (so one call stays short); it returns how many
// it looked at. Records are deleted in one lazy commit (a crash only
// delays their expiry), each only if it was not rewritten since; their
// index entries go with one range delete.
func (s *Store) ExpireIdempotency(ctx context.Context, now time.Time, max int) (int, error) {
	cutoff := now.Add(-s.IdempotencyWindow()).UnixNano()
	if cutoff <= 0 {
		return 0, nil
	}
	type entry struct{ op, key string }
	var expired []entry
	var last []byte
	lo := []byte(pIdemIndex)
	err := s.scan(lo, k(pIdemIndex).u64(uint64(cutoff)+1), false, func(key, _ []byte) (bool, error) {
		op, k2, ok := parseIdemIndex(key)
		if ok {
			expired = append(expired, entry{op, k2})
		}
		last = append(last[:0], key...)
		return len(expired) < max, nil
	})
	if err != nil || last == nil {
		return 0, err
	}
	err = s.updateLazy(ctx, func(tx *Txn) error {
		for _, e := range expired {
			v, err := tx.get(idemKey(e.op, e.key))
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if rec, err := decodeIdem(v); err != nil || rec.Created.UnixNano() <= cutoff {
				tx.del(idemKey(e.op, e.key))
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	// Index entries up to and including the last one looked at. Nothing
	// writes there concurrently: new entries are newer than the cutoff.
	if err := s.db.DeleteRange(lo, append(last, 0), pebble.NoSync); err != nil {
		return 0, fmt.Errorf("expire idempotency index: %w", err)
	}
	return len(expired), nil
}

// parseIdemIndex reads op and key from it/<created>/<op>/<key>.
func parseIdemIndex(b []byte) (op, key string, ok bool) {
	b = b[len(pIdemIndex):]
	if len(b) < 9 {
		return "", "", false
	}
	b = b[8:]
	n := int(b[0])
	if len(b) < 1+n+1 {
		return "", "", false
	}
	op, b = string(b[1:1+n]), b[1+n:]
	m := int(b[0])
	if len(b) != 1+m {
		return "", "", false
	}
	return op, string(b[1:]), true
}

// updateLazy is Update for work a crash may lose without harm (no fsync of
// its own).
func (s *Store) updateLazy(ctx context.Context, fn func(*Txn) error) error {
	ch := make(chan error, 1)
	s.SubmitLazy(ctx, fn, func(err error) { ch <- err })
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return fmt.Errorf("wait for commit: %w", ctx.Err())
	}
}

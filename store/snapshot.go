package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/cockroachdb/pebble"

	"github.com/ferrynet/ferry/store/storepb"
)

// Snapshot is a consistent read view of the store at one moment: what a
// reviewer serves a new member as the shared tables at one decision
// sequence. It may include a round whose fsync is still in flight; callers
// that hand it out wait for the durable mark to pass what it shows.
type Snapshot struct {
	snap *pebble.Snapshot
	s    *Store
}

// NewSnapshot opens a read view; Close releases it.
func (s *Store) NewSnapshot() *Snapshot { return &Snapshot{snap: s.db.NewSnapshot(), s: s} }

// Close releases the view.
func (sn *Snapshot) Close() error { return sn.snap.Close() }

func (sn *Snapshot) get(key []byte) ([]byte, error) {
	v, c, err := sn.snap.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, sn.s.check(fmt.Errorf("read %q: %w", key, err))
	}
	out := append([]byte(nil), v...)
	_ = c.Close()
	return out, nil
}

// Counter reads a named counter in the view.
func (sn *Snapshot) Counter(name string) (uint64, error) {
	v, err := sn.get(k(keyCtrPrefix).str(name))
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	return parseU64(v), err
}

// Decision is the local version of the decision with seq in the view.
func (sn *Snapshot) Decision(seq uint64) (uint64, bool, error) {
	v, err := sn.get(k(pDecision).u64(seq))
	if errors.Is(err, ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return decisionVersion(v), true, nil
}

// TableRows calls fn for every row of every shared table, in key order
// (table name, then row id), until fn returns false.
func (sn *Snapshot) TableRows(fn func(table string, id uint64, row []byte) (bool, error)) error {
	return sn.scan([]byte(pTable), func(k, v []byte) (bool, error) {
		key := k[len(pTable):]
		if len(key) < 1 || len(key) != 1+int(key[0])+8 {
			return false, errShortKey
		}
		id, _ := tailU64(key)
		return fn(string(key[1:1+key[0]]), id, v)
	})
}

// ClearTables deletes every row of every shared table (a member about to
// take the tables from a snapshot).
func (t *Txn) ClearTables() error {
	// The round view first (rows written earlier in this round), then
	// what is on disk.
	for key, w := range t.view {
		if len(key) > len(pTable) && key[:len(pTable)] == pTable && !w.del {
			t.del([]byte(key))
		}
	}
	it, err := t.s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(pTable), UpperBound: prefixEnd([]byte(pTable))})
	if err != nil {
		return fmt.Errorf("iterate: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		t.del(append([]byte(nil), it.Key()...))
	}
	return t.s.check(it.Error())
}

// scan calls fn for every key with prefix in the view, in key order, until
// fn returns false.
func (sn *Snapshot) scan(prefix []byte, fn func(k, v []byte) (bool, error)) error {
	it, err := sn.snap.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return fmt.Errorf("iterate: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		more, err := fn(it.Key(), it.Value())
		if err != nil {
			return err
		}
		if !more {
			break
		}
	}
	if err := it.Error(); err != nil {
		return sn.s.check(fmt.Errorf("iterate: %w", err))
	}
	return nil
}

// Requests calls fn for every request row in the view, in id order, until
// fn returns false.
func (sn *Snapshot) Requests(fn func(*storepb.Request) (bool, error)) error {
	return sn.scan([]byte(pRequest), func(_, v []byte) (bool, error) {
		r := &storepb.Request{}
		if err := unmarshal(v, r); err != nil {
			return false, err
		}
		return fn(r)
	})
}

// Decisions calls fn for every decision record in the view (its sequence,
// the local version of its change and its fingerprint), in sequence order,
// until fn returns false.
func (sn *Snapshot) Decisions(fn func(seq, version, hash uint64) (bool, error)) error {
	return sn.scan([]byte(pDecision), func(key, v []byte) (bool, error) {
		seq, err := tailU64(key)
		if err != nil {
			return false, err
		}
		var hash uint64
		if len(v) >= 16 {
			hash = binary.BigEndian.Uint64(v[8:16])
		}
		return fn(seq, decisionVersion(v), hash)
	})
}

// AuxPrefix calls fn for every service value (Txn.SetAux) in the view whose
// name starts with prefix, in name order, until fn returns false.
func (sn *Snapshot) AuxPrefix(prefix string, fn func(name string, v []byte) (bool, error)) error {
	if len(prefix) > 255 {
		return fmt.Errorf("aux prefix of %d bytes", len(prefix))
	}
	// Names are length-prefixed: scan every one and keep those that match.
	return sn.scan([]byte(pAux), func(key, v []byte) (bool, error) {
		if len(key) < len(pAux)+1 {
			return true, nil
		}
		name := string(key[len(pAux)+1:])
		if !strings.HasPrefix(name, prefix) {
			return true, nil
		}
		return fn(name, v)
	})
}

// ClearTableRows deletes up to limit rows of the shared tables as they are
// on disk (not those written earlier in this round) and reports how many
// it deleted: a caller clears large tables in bounded transactions, calling
// it until it returns 0.
func (t *Txn) ClearTableRows(limit int) (int, error) {
	it, err := t.s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(pTable), UpperBound: prefixEnd([]byte(pTable))})
	if err != nil {
		return 0, fmt.Errorf("iterate: %w", err)
	}
	defer it.Close()
	n := 0
	for ok := it.First(); ok && n < limit; ok = it.Next() {
		t.del(append([]byte(nil), it.Key()...))
		n++
	}
	return n, t.s.check(it.Error())
}

package store

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble"
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
	it, err := sn.snap.NewIter(&pebble.IterOptions{LowerBound: []byte(pTable), UpperBound: prefixEnd([]byte(pTable))})
	if err != nil {
		return fmt.Errorf("iterate: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		key := it.Key()[len(pTable):]
		if len(key) < 1 || len(key) != 1+int(key[0])+8 {
			return errShortKey
		}
		table := string(key[1 : 1+key[0]])
		id, _ := tailU64(key)
		more, err := fn(table, id, it.Value())
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

package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble"
)

// Rebuilding a corrupt store. Pebble cannot rewrite a damaged sst in place,
// and every read of a range (an iterator) and every compaction that meets
// the damaged block fails again, whatever newer copies of its keys exist.
// So when a read met a corruption (corrupt.go marked the data directory),
// the next Open rebuilds the store:
//
//  1. it opens the damaged store read-only and copies every key it can
//     read, in order, into a new store beside it (<dir>.rebuild): forward
//     from the first key until a read fails, then backward from the last
//     key down to the last one copied. The keys strictly between the last
//     key read forward and the first read backward are lost (one damaged
//     region: a few blocks of one file);
//  2. when a read failed, it writes the repair mark (m/repair: the lost
//     span, and the version of this node's own changes after which it asks
//     its partners for them again) into the new store; it flushes it and
//     closes both (a damaged filter or index block fails point reads but
//     not a scan: then nothing is lost, and the new files are whole);
//  3. it moves the damaged directory aside (<dir>.damaged-<unix time>, for
//     the operator: nothing is deleted) and the new one in its place.
//
// A crash in 1 or 2 leaves the damaged store in place and the mark: the
// next Open starts over. A crash between the two renames of 3 leaves no
// <dir> and a complete <dir>.rebuild (it holds rebuiltMark): Open finishes
// the move.
//
// The node then takes its own changes in the lost span back from its
// partners (node/restore.go) and drops the mark (RepairDone). Changes of
// other origins, rows and counters that were in the lost span are not
// fetched again: see docs/operations.md, "A corrupt store".

// rebuiltMark is written into <dir>.rebuild once it is complete.
const rebuiltMark = "FERRY-REBUILT"

// keyRepair holds the RepairMark of a rebuilt store until its own changes
// are taken back.
const keyRepair = "m/repair"

// rebuildBatchBytes bounds one batch of the copy.
const rebuildBatchBytes = 4 << 20

// RepairMark says what a rebuild lost and what the node still has to take
// back from its partners.
type RepairMark struct {
	At time.Time `json:"at"`
	// After and Before are the last key read before the damage and the
	// first read after it (quoted); everything between them was dropped.
	After  string `json:"after"`
	Before string `json:"before"`
	// OwnFrom: this node's own changes after this version are asked for
	// again (0: all of them).
	OwnFrom uint64 `json:"own_from"`
	Kept    int    `json:"kept_keys"`
	// Damaged is where the damaged copy was kept; Reason the corruption.
	Damaged string `json:"damaged"`
	Reason  string `json:"reason"`
}

// rebuildIfMarked runs the rebuild when dir holds corruptMark, and
// finishes an interrupted one.
func rebuildIfMarked(dir string, mk func(readOnly bool) *pebble.Options, log *slog.Logger, now time.Time) error {
	tmp := dir + ".rebuild"
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(tmp, rebuiltMark)); err == nil {
			log.Warn("finishing an interrupted rebuild of the store", "dir", dir)
			return finishRebuild(tmp, dir)
		}
		return nil
	}
	reason, err := os.ReadFile(filepath.Join(dir, corruptMark))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the corruption mark: %w", err)
	}
	log.Error("the store was found corrupt in an earlier run: rebuilding it from what is readable", "dir", dir, "reason", string(bytes.TrimSpace(reason)))
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove an unfinished rebuild: %w", err)
	}
	old, err := pebble.Open(dir, mk(true))
	if err != nil {
		return fmt.Errorf("open the damaged store %s: %w", dir, err)
	}
	nw, err := pebble.Open(tmp, mk(false))
	if err != nil {
		_ = old.Close()
		return fmt.Errorf("open a store to rebuild into (%s): %w", tmp, err)
	}
	m, lost, err := salvage(old, nw)
	m.At, m.Reason = now.UTC(), string(bytes.TrimSpace(reason))
	m.Damaged = fmt.Sprintf("%s.damaged-%d", dir, now.Unix())
	if err == nil && lost {
		var b []byte
		b, err = json.Marshal(m)
		if err == nil {
			err = nw.Set([]byte(keyRepair), b, pebble.Sync)
		}
	}
	if err == nil {
		err = nw.Flush()
	}
	if cerr := nw.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if cerr := old.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("rebuild the store: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(tmp, rebuiltMark), []byte(m.Damaged+"\n")); err != nil {
		return fmt.Errorf("rebuild the store: %w", err)
	}
	if err := os.Rename(dir, m.Damaged); err != nil {
		return fmt.Errorf("rebuild the store: move the damaged copy aside: %w", err)
	}
	if err := finishRebuild(tmp, dir); err != nil {
		return err
	}
	if !lost {
		// A damaged filter or index block: point reads failed, a full scan
		// did not. The rebuilt files are whole; nothing was dropped.
		log.Warn("store rebuilt: every key was readable; nothing was dropped; the damaged copy is kept", "kept_keys", m.Kept, "damaged_copy", m.Damaged)
		return nil
	}
	log.Error("store rebuilt: the keys between the last one read before the damage and the first one read after it were unreadable and are dropped; this node takes its own changes in that range back from its partners; the damaged copy is kept",
		"kept_keys", m.Kept, "after", m.After, "before", m.Before, "own_changes_after", m.OwnFrom, "damaged_copy", m.Damaged)
	return nil
}

// finishRebuild moves the rebuilt store into place, with the directories
// of the damaged copy, which are not Pebble's: the change log (its segment
// files move as they are) and the embedded NATS server's JetStream store
// (the node's events stream, <data>/jetstream).
func finishRebuild(tmp, dir string) error {
	if damaged, err := os.ReadFile(filepath.Join(tmp, rebuiltMark)); err == nil {
		old := strings.TrimSpace(string(damaged))
		ents, err := os.ReadDir(old)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rebuild the store: %w", err)
		}
		for _, e := range ents {
			if !e.IsDir() {
				continue
			}
			from, to := filepath.Join(old, e.Name()), filepath.Join(tmp, e.Name())
			if _, err := os.Stat(to); errors.Is(err, os.ErrNotExist) {
				if err := os.Rename(from, to); err != nil {
					return fmt.Errorf("rebuild the store: move %s back: %w", e.Name(), err)
				}
			}
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("rebuild the store: move the rebuilt store into place: %w", err)
	}
	if err := os.Remove(filepath.Join(dir, rebuiltMark)); err != nil {
		return fmt.Errorf("rebuild the store: %w", err)
	}
	d, err := os.Open(filepath.Dir(dir))
	if err != nil {
		return fmt.Errorf("rebuild the store: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("rebuild the store: sync %s: %w", filepath.Dir(dir), err)
	}
	return nil
}

// salvage copies every readable key of old into nw: forward until a read
// fails, then backward down to the last key copied. lost: a read failed.
func salvage(old, nw *pebble.DB) (m RepairMark, lost bool, err error) {
	b := nw.NewBatch()
	put := func(k, v []byte) error {
		if err := b.Set(k, v, nil); err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		m.Kept++
		if b.Len() < rebuildBatchBytes {
			return nil
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		b = nw.NewBatch()
		return nil
	}
	var after, before []byte
	it, err := old.NewIter(nil)
	if err != nil {
		return m, false, fmt.Errorf("read the damaged store: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		if err := put(it.Key(), it.Value()); err != nil {
			_ = it.Close()
			return m, false, err
		}
		after = append(after[:0], it.Key()...)
	}
	ferr := it.Error()
	_ = it.Close()
	if ferr != nil && !pebble.IsCorruptionError(ferr) {
		return m, false, fmt.Errorf("read the damaged store: %w", ferr)
	}
	if ferr != nil {
		var lo []byte
		if after != nil {
			lo = append(append([]byte(nil), after...), 0)
		}
		it, err := old.NewIter(&pebble.IterOptions{LowerBound: lo})
		if err != nil {
			return m, false, fmt.Errorf("read the damaged store: %w", err)
		}
		for ok := it.Last(); ok; ok = it.Prev() {
			if err := put(it.Key(), it.Value()); err != nil {
				_ = it.Close()
				return m, false, err
			}
			before = append(before[:0], it.Key()...)
		}
		berr := it.Error()
		_ = it.Close()
		if berr != nil && !pebble.IsCorruptionError(berr) {
			return m, false, fmt.Errorf("read the damaged store: %w", berr)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return m, false, fmt.Errorf("copy: %w", err)
	}
	m.After, m.Before = strconv.Quote(string(after)), strconv.Quote(string(before))
	m.OwnFrom = ownFrom(after, before)
	return m, ferr != nil, nil
}

// ownFrom is the version after which own changes may have been lost: the
// version of the last change log entry read before the damage, when the
// lost span is inside the change log; 0 (all) otherwise.
func ownFrom(after, before []byte) uint64 {
	if len(after) == len(pChange)+8 && string(after[:len(pChange)]) == pChange &&
		(before == nil || string(before) > string(after)) {
		v, err := tailU64(after)
		if err == nil {
			return v
		}
	}
	return 0
}

// Repair is the mark of a rebuild whose own changes are not yet taken back.
func (s *Store) Repair() (RepairMark, bool, error) {
	v, err := s.getRaw([]byte(keyRepair))
	if errors.Is(err, ErrNotFound) {
		return RepairMark{}, false, nil
	}
	if err != nil {
		return RepairMark{}, false, err
	}
	var m RepairMark
	if err := json.Unmarshal(v, &m); err != nil {
		return RepairMark{}, false, fmt.Errorf("decode the repair mark: %w", err)
	}
	return m, true, nil
}

// RepairDone drops the repair mark: the node took its own changes back.
func (t *Txn) RepairDone() { t.del([]byte(keyRepair)) }

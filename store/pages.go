package store

import (
	"fmt"

	"github.com/ferrynet/ferry/store/storepb"
)

// Paged reads for the admin API's listings: each returns at most limit
// rows after a cursor and the cursor of the next page (zero or nil: no
// more). A page with a filter stops after maxScan keys even if it found
// fewer than limit rows, so one call stays short; its cursor goes on from
// there.

// maxScan bounds the keys one filtered page looks at.
const maxScan = 100_000

// RequestsPage lists request rows with an id after `after`, in id order,
// all or those with one status.
func (s *Store) RequestsPage(status string, after uint64, limit int) (rows []*storepb.Request, next uint64, err error) {
	lo := k(pRequest).u64(after + 1)
	if after == ^uint64(0) {
		return nil, 0, nil
	}
	scanned, last := 0, uint64(0)
	full := false
	err = s.scan(lo, prefixEnd([]byte(pRequest)), false, func(key, v []byte) (bool, error) {
		id, err := tailU64(key)
		if err != nil {
			return false, err
		}
		if len(rows) == limit || scanned == maxScan {
			full = true
			return false, nil
		}
		scanned++
		last = id
		r := &storepb.Request{}
		if err := unmarshal(v, r); err != nil {
			return false, err
		}
		if status == "" || r.Status == status {
			rows = append(rows, r)
		}
		return true, nil
	})
	if err != nil || !full {
		return rows, 0, err
	}
	return rows, last, nil
}

// RowsPage lists a table's rows with an id after `after`, in id order.
func (s *Store) RowsPage(table string, after uint64, limit int) (rows []Row, next uint64, err error) {
	if after == ^uint64(0) {
		return nil, 0, nil
	}
	prefix := k(pTable).str(table)
	full := false
	err = s.scan(prefix.u64(after+1), prefixEnd(prefix), false, func(key, v []byte) (bool, error) {
		id, err := tailU64(key)
		if err != nil {
			return false, err
		}
		if len(rows) == limit {
			full = true
			return false, nil
		}
		rows = append(rows, Row{ID: id, JSON: append([]byte(nil), v...)})
		return true, nil
	})
	if err != nil || !full {
		return rows, 0, err
	}
	return rows, rows[len(rows)-1].ID, nil
}

// ResourcesPage lists resources, of one data type or ("") of all, deleted
// ones included, in key order (data type, creator, id), after the cursor
// (nil: from the start). The cursor is opaque.
func (s *Store) ResourcesPage(dataType string, after []byte, limit int) (rows []*storepb.Resource, next []byte, err error) {
	prefix := k(pResource)
	if dataType != "" {
		prefix = prefix.str(dataType)
	}
	lo := []byte(prefix)
	if after != nil {
		// The cursor is a key below r/; the page starts just after it.
		lo = append(append(k(pResource), after...), 0)
	}
	full := false
	var last []byte
	err = s.scan(lo, prefixEnd(prefix), false, func(key, v []byte) (bool, error) {
		if len(rows) == limit {
			full = true
			return false, nil
		}
		r, err := resourceFromKey(key, v)
		if err != nil {
			return false, err
		}
		rows = append(rows, r)
		last = append(last[:0], key[len(pResource):]...)
		return true, nil
	})
	if err != nil {
		return nil, nil, err
	}
	for _, r := range rows {
		if len(r.Json) == 0 && r.Version > 0 {
			b, err := s.ChangeBody(r.Version)
			if err != nil {
				return nil, nil, fmt.Errorf("resource %s/%s: change %d: %w", r.DataType, r.Id, r.Version, err)
			}
			r.Json = b.Payload
		}
	}
	if !full {
		return rows, nil, nil
	}
	return rows, last, nil
}

package store

import (
	"errors"
	"fmt"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store/seglog"
)

// WatchDurable registers fn to hear of each move of the durable mark
// (DurableVersion), after the round is on disk and before its commit hooks
// run. fn runs on the store's completer and must not block (a send on a
// buffered channel that drops when full is the way). Watchers register as
// they are built, before writes start.
func (s *Store) WatchDurable(fn func(version uint64)) {
	s.followMu.Lock()
	defer s.followMu.Unlock()
	var ws []func(uint64)
	if old := s.durableWatchers.Load(); old != nil {
		ws = append(ws, *old...)
	}
	ws = append(ws, fn)
	s.durableWatchers.Store(&ws)
}

// notifyDurable tells the watchers the durable mark moved to v.
func (s *Store) notifyDurable(v uint64) {
	if ws := s.durableWatchers.Load(); ws != nil {
		for _, fn := range *ws {
			fn(v)
		}
	}
}

// LogBodies calls fn with the body of each change the segment log holds
// after version `after`, in version order, as far as the durable mark and
// at most max of them, until fn returns false. It reads bodies only (no
// envelope is rebuilt, no proof checked beyond each record's CRC). Changes
// kept in Pebble (a schema-2 store's, and own changes taken back from
// peers) are not read: they are not in the log's order.
func (s *Store) LogBodies(after uint64, max int, fn func(version uint64, body *pb.Body) bool) error {
	durable := s.DurableVersion()
	if after >= durable || max <= 0 {
		return nil
	}
	n := 0
	var ferr error
	err := s.clog.Iter(after+1, func(r seglog.Record) bool {
		if r.Version > durable {
			return false
		}
		body, err := s.recordBody(r)
		if err != nil {
			ferr = err
			return false
		}
		n++
		return fn(r.Version, body) && n < max
	})
	if err = errors.Join(s.checkLog(err), ferr); err != nil {
		return fmt.Errorf("read the change log after %d: %w", after, err)
	}
	return nil
}

package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store/seglog"
)

// WatchDurable registers fn to hear of each move of the durable mark
// (DurableVersion), after the round is on disk and its commit hooks ran (the
// mark itself moves before the hooks run). fn runs on the store's completer and must not block (a send on a
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
// peers) are not read: they are not in the log's order. skipOwn, when set,
// is asked the kind of each of this node's own changes first (read from
// the record without decoding the body): a change it skips reaches fn
// with a nil body (an origin's own resource changes have no event). known,
// when set, is asked each version before anything else: a version it knows
// (the caller holds what it needs of it) reaches fn with a nil body, its
// record not decoded.
func (s *Store) LogBodies(after uint64, max int, known func(uint64) bool, skipOwn func(pb.Kind) bool, fn func(version uint64, body *pb.Body) bool) error {
	durable := s.DurableVersion()
	if after >= durable || max <= 0 {
		return nil
	}
	n := 0
	var ferr error
	// A version the caller knows is passed over in the log unread.
	var skip func(uint64) bool
	if known != nil {
		skip = func(v uint64) bool { return v <= durable && known(v) }
	}
	err := s.clog.IterSkip(after+1, skip, func(r seglog.Record) bool {
		if r.Version > durable {
			return false
		}
		n++
		if r.Skipped { // known
			return fn(r.Version, nil) && n < max
		}
		if skipOwn != nil && r.Type == recOwn {
			if k, ok := ownRecordKind(r.Data); ok && skipOwn(k) {
				return fn(r.Version, nil) && n < max
			}
		}
		body, err := s.recordBody(r)
		if err != nil {
			ferr = err
			return false
		}
		return fn(r.Version, body) && n < max
	})
	if err = errors.Join(s.checkLog(err), ferr); err != nil {
		return fmt.Errorf("read the change log after %d: %w", after, err)
	}
	return nil
}

// ownRecordKind reads the kind of an own change from its record without
// decoding the body: past the record's varints and signature, the body's
// fields before kind (origin, origin version) when it was stored whole.
// ok false when it cannot tell (then the body is decoded).
func ownRecordKind(d []byte) (pb.Kind, bool) {
	var f [5]uint64
	for i := range f {
		v, n := binary.Uvarint(d)
		if n <= 0 {
			return 0, false
		}
		f[i], d = v, d[n:]
	}
	if f[4] > uint64(len(d)) {
		return 0, false
	}
	body := d[f[4]:]
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			return 0, false
		}
		body = body[n:]
		if num == 3 && typ == protowire.VarintType { // Body.kind
			k, m := protowire.ConsumeVarint(body)
			if m < 0 {
				return 0, false
			}
			return pb.Kind(k), true
		}
		m := protowire.ConsumeFieldValue(num, typ, body)
		if m < 0 {
			return 0, false
		}
		body = body[m:]
	}
	return 0, false // the kind is 0 (not written) or absent
}

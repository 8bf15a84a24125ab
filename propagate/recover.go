package propagate

import (
	"errors"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// RecoverOwn puts back one of this node's own changes that a peer held and
// this node's store lost (its data directory was restored from an older
// copy): at its original version, with the resource row it set if nothing
// newer is held, and owed again to partners that may lack it. It reports
// whether the change was missing.
func (s *Service) RecoverOwn(tx *store.Txn, in *stream.Inbound) (bool, error) {
	body := in.Body
	ok, err := tx.PutOwnRecovered(body, in.Hash, in.EnvelopeRaw())
	if err != nil || !isResource(body.Kind) {
		return ok, err
	}
	if !ok {
		// Held: its log record is there. A rebuild of a corrupt store may
		// still have lost the row it set (rows are in Pebble, changes in
		// the log): it is put back when missing or older.
		return false, s.restoreRow(tx, body)
	}
	id, _, err := checkResource(body.Payload)
	if err != nil {
		return true, nil // kept in the log; it never made a row
	}
	self := s.roles.Self()
	cur, err := tx.GetResource(body.DataType, self, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return false, err
	}
	if cur == nil {
		s.noteOwn(body.DataType, id)
	}
	first := false // the row holds a later create of the same resource: this one was first
	if body.Kind == pb.Kind_KIND_RESOURCE_CREATE && cur != nil && !cur.Deleted && cur.OriginVersion > body.OriginVersion {
		if b, err := tx.ChangeBody(cur.Version); err == nil && b.Kind == pb.Kind_KIND_RESOURCE_CREATE {
			first = true
			s.log.Error("this node created a resource again after its store lost the first create (trust_store let a write through before a partner had told what it holds): the first is kept, the later create is refused by partners",
				"data_type", body.DataType, "id", id, "first_version", body.OriginVersion, "later_version", cur.OriginVersion)
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			return false, err
		}
	}
	switch {
	case cur != nil && (cur.OriginVersion < body.OriginVersion || first):
		tx.Supersede(cur.OriginVersion)
	case cur != nil && cur.OriginVersion > body.OriginVersion:
		tx.Supersede(body.OriginVersion)
	}
	if cur == nil || cur.OriginVersion < body.OriginVersion || first {
		tx.PutResource(&storepb.Resource{DataType: body.DataType, Id: id, Creator: []byte(self), OriginVersion: body.OriginVersion,
			Version: body.OriginVersion, Deleted: body.Kind == pb.Kind_KIND_RESOURCE_DELETE, UpdatedAt: tx.Now().UnixNano()})
	}
	head, err := tx.CounterValue(CtrResourceHead)
	if err != nil {
		return false, err
	}
	if body.OriginVersion > head {
		tx.SetCounter(CtrResourceHead, body.OriginVersion)
	}
	proto, _ := protocols.ProtocolFor(body.Kind, "")
	e := store.OwnEntry{Version: body.OriginVersion, Lane: uint8(stream.LaneResource), Kind: body.Kind, Protocol: proto,
		CreatedAt: body.CreatedAtUnixNano}
	tx.AddOwnEntry(e, nil)
	return true, nil
}

// restoreRow puts back the resource row an own change set, when the row is
// missing or holds an older change.
func (s *Service) restoreRow(tx *store.Txn, body *pb.Body) error {
	id, _, err := checkResource(body.Payload)
	if err != nil {
		return nil // it never made a row
	}
	self := s.roles.Self()
	cur, err := tx.GetResource(body.DataType, self, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if cur != nil && cur.OriginVersion >= body.OriginVersion {
		return nil
	}
	if cur != nil {
		tx.Supersede(cur.OriginVersion)
	}
	tx.PutResource(&storepb.Resource{DataType: body.DataType, Id: id, Creator: []byte(self), OriginVersion: body.OriginVersion,
		Version: body.OriginVersion, Deleted: body.Kind == pb.Kind_KIND_RESOURCE_DELETE, UpdatedAt: tx.Now().UnixNano()})
	return nil
}

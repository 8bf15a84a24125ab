package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store/storepb"
)

// builtinMigrations are the format changes this build knows; self is the
// node's peer id (nil signer: none, and a store that needs them refuses to
// open).
func builtinMigrations(self peer.ID) []Migration {
	// Schema 2 to 3: the change log moves to segment files for what is
	// written from now on; the changes already in Pebble (c/) stay there
	// and are read from there (log.go): nothing is rewritten.
	v2 := Migration{From: 2, Apply: func(*pebble.DB, *pebble.Batch) error { return nil }}
	// Schema 3 to 4: the log may hold commit records from now on (a
	// round's Pebble batch); nothing is rewritten. It runs before the log
	// is opened: no commit record can be waiting for replay in a schema-3
	// store (none writes them).
	v3 := Migration{From: 3, Apply: func(*pebble.DB, *pebble.Batch) error { return nil }}
	if self == "" {
		return []Migration{v2, v3}
	}
	return []Migration{{From: 1, Apply: func(db *pebble.DB, b *pebble.Batch) error { return migrateV1(db, b, self) }}, v2, v3}
}

// Lane numbers of schema 2 (package stream's), for the migration.
const (
	laneResource  = 1
	laneConsider  = 2
	lanePlanner   = 3
	laneRequest   = 4
	laneDecision  = 5
	laneRejection = 6
)

func laneOfKind(k pb.Kind, to []byte) uint8 {
	if k == pb.Kind_KIND_REVIEW_DECISION && len(to) > 0 {
		return laneRejection
	}
	switch k {
	case pb.Kind_KIND_CONSIDERS:
		return laneConsider
	case pb.Kind_KIND_PLANNER:
		return lanePlanner
	case pb.Kind_KIND_REVIEW_REQUEST:
		return laneRequest
	case pb.Kind_KIND_REVIEW_DECISION:
		return laneDecision
	}
	return laneResource
}

// migrateV1 turns a schema-1 store (a delivery row per change and receiver,
// link sequence numbers) into schema 2 (the log is the outbox: delivery
// records per own change, ack floors per receiver and lane, positions in
// versions):
//
//   - the origin index gains each change's body hash and time;
//   - every own change that went to receivers gets its delivery record
//     (resource changes and applied decisions broadcast, the rest addressed
//     to the receivers of its delivery rows or its body);
//   - each receiver's floor of a lane is the last version it acknowledged
//     before its first pending row (or its last acknowledged one);
//     rejected rows become refusals;
//   - the link state received from a sender becomes a position: the highest
//     version of that sender held in the lane;
//   - decision records gain the decision's hash;
//   - own resource changes that are not their resource's latest are marked
//     superseded;
//   - delivery rows, the pending index and link state are deleted.
func migrateV1(db *pebble.DB, b *pebble.Batch, self peer.ID) error {
	get := func(key []byte) ([]byte, error) {
		v, c, err := db.Get(key)
		if errors.Is(err, pebble.ErrNotFound) {
			return nil, ErrNotFound
		}
		if err != nil {
			return nil, err
		}
		out := append([]byte(nil), v...)
		_ = c.Close()
		return out, nil
	}
	each := func(prefix string, fn func(key, v []byte) error) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: prefixEnd([]byte(prefix))})
		if err != nil {
			return err
		}
		defer it.Close()
		for ok := it.First(); ok; ok = it.Next() {
			if err := fn(append([]byte(nil), it.Key()...), append([]byte(nil), it.Value()...)); err != nil {
				return err
			}
		}
		return it.Error()
	}
	change := func(ver uint64) (*pb.Envelope, *pb.Body, error) {
		v, err := get(k(pChange).u64(ver))
		if err != nil {
			return nil, nil, fmt.Errorf("change %d: %w", ver, err)
		}
		c, err := decodeChange(ver, v)
		return c.Envelope, c.Body, err
	}

	// Delivery rows: receivers, request ids, floors and refusals.
	type laneKey struct {
		p    peer.ID
		lane uint8
	}
	type floorAcc struct {
		minPending, maxAcked uint64
		ackedAt              int64
	}
	receivers := map[uint64][]peer.ID{}
	requestIDs := map[uint64]uint64{}
	floors := map[laneKey]*floorAcc{}
	err := each(pDeliveryV1, func(_, v []byte) error {
		d := &storepb.Delivery{}
		if err := proto.Unmarshal(v, d); err != nil {
			return fmt.Errorf("delivery row: %w", err)
		}
		p := peer.ID(d.Receiver)
		receivers[d.ChangeVersion] = append(receivers[d.ChangeVersion], p)
		if d.RequestId != 0 {
			requestIDs[d.ChangeVersion] = d.RequestId
		}
		lk := laneKey{p, uint8(d.Lane)}
		if lk.lane == laneDecision {
			// Schema 1 carried rejections in the decision lane; they have
			// a lane of their own now.
			if _, body, err := change(d.ChangeVersion); err == nil && len(body.To) > 0 {
				lk.lane = laneRejection
			}
		}
		f := floors[lk]
		if f == nil {
			f = &floorAcc{}
			floors[lk] = f
		}
		switch d.State {
		case storepb.Delivery_STATE_PENDING:
			if f.minPending == 0 || d.ChangeVersion < f.minPending {
				f.minPending = d.ChangeVersion
			}
		default:
			f.maxAcked = max(f.maxAcked, d.ChangeVersion)
			f.ackedAt = max(f.ackedAt, d.AckedAt)
			if d.State == storepb.Delivery_STATE_REJECTED {
				if err := b.Set(k(pRefused).str(string(p)).u64(d.ChangeVersion), []byte(d.Error), nil); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for lk, f := range floors {
		floor := f.maxAcked
		if f.minPending != 0 {
			floor = f.minPending - 1 // everything before the first pending row
		}
		if floor == 0 {
			continue
		}
		if err := b.Set(floorKey(lk.p, lk.lane), marshal(&storepb.Floor{Version: floor, AckedAt: f.ackedAt}), nil); err != nil {
			return err
		}
	}

	// The latest change of each own resource: the others are marked
	// superseded (retention may drop their delivery records).
	latest := map[uint64]bool{}
	err = each(pResource, func(_, v []byte) error {
		r := &storepb.Resource{}
		if err := proto.Unmarshal(v, r); err != nil {
			return err
		}
		if peer.ID(r.Creator) == self {
			latest[r.Version] = true
		}
		return nil
	})
	if err != nil {
		return err
	}

	// The origin index, and the delivery records of own changes.
	err = each(pOrigin, func(key, v []byte) error {
		if len(v) < 8 {
			return nil
		}
		ver := binary.BigEndian.Uint64(v[:8])
		env, body, err := change(ver)
		if err != nil {
			return err
		}
		if err := b.Set(key, originValue(ver, body.Kind, BodyHash(env.Body), time.Unix(0, body.CreatedAtUnixNano)), nil); err != nil {
			return err
		}
		if peer.ID(body.Origin) != self {
			return nil
		}
		e := OwnEntry{Version: ver, Lane: laneOfKind(body.Kind, body.To), Kind: body.Kind, CreatedAt: body.CreatedAtUnixNano,
			RequestID: requestIDs[ver]}
		var reviewType string
		switch body.Kind {
		case pb.Kind_KIND_REVIEW_REQUEST:
			rr := &pb.ReviewRequest{}
			if proto.Unmarshal(body.Payload, rr) == nil {
				reviewType = rr.Type
			}
		case pb.Kind_KIND_REVIEW_DECISION:
			d := &pb.ReviewDecision{}
			if proto.Unmarshal(body.Payload, d) == nil && d.Request != nil {
				reviewType = d.Request.Type
			}
		}
		e.Protocol, _ = protocols.ProtocolFor(body.Kind, reviewType)
		switch {
		case body.Kind == pb.Kind_KIND_RESOURCE_CREATE || body.Kind == pb.Kind_KIND_RESOURCE_UPDATE || body.Kind == pb.Kind_KIND_RESOURCE_DELETE:
		case body.Kind == pb.Kind_KIND_REVIEW_DECISION && len(body.To) == 0:
		case len(body.To) > 0:
			e.To = []peer.ID{peer.ID(body.To)}
		default: // considers: the receivers of its rows
			e.To = receivers[ver]
			if len(e.To) == 0 {
				return nil // no record left of who it went to
			}
		}
		if err := b.Set(k(pOwn).u64(ver), encodeOwn(e), nil); err != nil {
			return err
		}
		if e.Lane == laneResource && !latest[ver] {
			if err := b.Set(k(pSuperseded).u64(ver), nil, nil); err != nil {
				return err
			}
		}
		for _, p := range e.To {
			if err := b.Set(addressedKey(p, e.Lane).u64(ver), []byte{byte(e.Kind), protocols.ProtocolCode(e.Protocol)}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}

	// Link state becomes positions.
	err = each(pLinkInV1, func(key, v []byte) error {
		rest := key[len(pLinkInV1):]
		if len(rest) < 2 || len(rest) != 1+int(rest[0])+1 {
			return errShortKey
		}
		sender, lane := peer.ID(rest[1:1+rest[0]]), rest[len(rest)-1]
		ls := &storepb.LinkState{}
		if err := proto.Unmarshal(v, ls); err != nil || ls.LastSeq == 0 {
			return err
		}
		// The position of each lane the link carried: the sender's last
		// change of that lane held here (schema 1's decision lane is now
		// the decision and the rejection lanes).
		want := map[uint8]uint64{lane: 0}
		if lane == laneDecision {
			want[laneRejection] = 0
		}
		prefix := k(pOrigin).str(string(sender))
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
		if err != nil {
			return err
		}
		found := 0
		for ok := it.Last(); ok && found < len(want); ok = it.Prev() {
			val := it.Value()
			if len(val) < 9 {
				continue
			}
			kind := pb.Kind(val[8])
			var to []byte
			if kind == pb.Kind_KIND_REVIEW_DECISION {
				if _, body, err := change(binary.BigEndian.Uint64(val[:8])); err == nil {
					to = body.To
				}
			}
			l := laneOfKind(kind, to)
			if v, ok := want[l]; ok && v == 0 {
				want[l], _ = tailU64(it.Key())
				found++
			}
		}
		if err := it.Close(); err != nil {
			return err
		}
		for l, pos := range want {
			if pos == 0 {
				continue
			}
			if err := b.Set(positionKey(sender, l), marshal(&storepb.Position{Epoch: ls.Epoch, Version: pos}), nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}

	// Decision records gain their hash.
	err = each(pDecision, func(key, v []byte) error {
		ver := decisionVersion(v)
		env, _, err := change(ver)
		if err != nil {
			return err
		}
		return b.Set(key, binary.BigEndian.AppendUint64(u64Value(ver), BodyHash(env.Body)), nil)
	})
	if err != nil {
		return err
	}

	for _, p := range []string{pDeliveryV1, pPendingV1, pLinkOutV1, pLinkInV1} {
		if err := b.DeleteRange([]byte(p), prefixEnd([]byte(p)), nil); err != nil {
			return err
		}
	}
	return b.Delete(k(keyCtrPrefix).str("delivery"), nil)
}

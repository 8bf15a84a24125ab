package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store/storepb"
)

// MaxNameBytes bounds data types, table names and resource ids, which are
// parts of keys.
const MaxNameBytes = 255

// ---- change log ----

// AppendOwn gives body the next store version as its origin version, writes
// it to the change log and registers it for sealing with this commit's
// signature. body.Origin must be this node.
func (t *Txn) AppendOwn(body *pb.Body) (uint64, *Sealed, error) {
	ver, err := t.Next(CtrVersion)
	if err != nil {
		return 0, nil, err
	}
	body.OriginVersion = ver
	b, err := proto.Marshal(body)
	if err != nil {
		return 0, nil, fmt.Errorf("encode body: %w", err)
	}
	s := &Sealed{key: k(pChange).u64(ver), body: b}
	t.sealed = append(t.sealed, s)
	t.set(k(pOrigin).bytes(body.Origin).u64(ver), indexValue(ver, body.Kind))
	return ver, s, nil
}

// The origin index maps (origin, origin version) to the local version and
// the change's kind, so scans for one kind skip the rest without loading
// them.
func indexValue(ver uint64, kind pb.Kind) []byte { return append(u64Value(ver), byte(kind)) }

func parseIndex(v []byte) (uint64, pb.Kind) {
	if len(v) < 8 {
		return 0, 0
	}
	var kind pb.Kind
	if len(v) > 8 {
		kind = pb.Kind(v[8])
	}
	return binary.BigEndian.Uint64(v[:8]), kind
}

// HasOrigin reports whether the change (origin, originVersion) is held, and
// at which local version.
func (t *Txn) HasOrigin(origin peer.ID, originVersion uint64) (uint64, bool, error) {
	v, err := t.get(k(pOrigin).str(string(origin)).u64(originVersion))
	if errors.Is(err, ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	ver, _ := parseIndex(v)
	return ver, true, nil
}

// AppendReceived stores an envelope that came from body's origin under
// the next store version. It reports dup (and writes nothing) when the
// change is held.
func (t *Txn) AppendReceived(body *pb.Body, env *pb.Envelope) (ver uint64, dup bool, err error) {
	if v, ok, err := t.HasOrigin(peer.ID(body.Origin), body.OriginVersion); err != nil || ok {
		return v, ok, err
	}
	b, err := proto.Marshal(env)
	if err != nil {
		return 0, false, fmt.Errorf("encode envelope: %w", err)
	}
	ver, err = t.AppendFresh(body, b)
	return ver, false, err
}

// AppendFresh stores an envelope the caller knows is not held yet (a new
// link sequence from its origin, beyond anything sync brought), without the
// read AppendReceived makes to find out.
func (t *Txn) AppendFresh(body *pb.Body, env []byte) (uint64, error) {
	ver, err := t.Next(CtrVersion)
	if err != nil {
		return 0, err
	}
	t.set(k(pChange).u64(ver), env)
	t.set(k(pOrigin).bytes(body.Origin).u64(body.OriginVersion), indexValue(ver, body.Kind))
	return ver, nil
}

// Change is one entry of the change log.
type Change struct {
	Version  uint64
	Envelope *pb.Envelope
	Body     *pb.Body
}

func decodeChange(ver uint64, v []byte) (Change, error) {
	env := &pb.Envelope{}
	if err := unmarshal(v, env); err != nil {
		return Change{}, err
	}
	body := &pb.Body{}
	if err := unmarshal(env.Body, body); err != nil {
		return Change{}, err
	}
	return Change{Version: ver, Envelope: env, Body: body}, nil
}

// Change reads the change at a store version.
func (s *Store) Change(ver uint64) (Change, error) {
	v, err := s.getRaw(k(pChange).u64(ver))
	if err != nil {
		return Change{}, err
	}
	return decodeChange(ver, v)
}

// ChangeEnvelope reads the raw envelope bytes of a change.
func (s *Store) ChangeEnvelope(ver uint64) ([]byte, error) {
	return s.getRaw(k(pChange).u64(ver))
}

// Changes returns up to limit changes after version since, in version order.
func (s *Store) Changes(since uint64, limit int) ([]Change, error) {
	if since == math.MaxUint64 {
		return nil, nil
	}
	var out []Change
	err := s.scan(k(pChange).u64(since+1), prefixEnd([]byte(pChange)), false, func(key, v []byte) (bool, error) {
		ver, err := tailU64(key)
		if err != nil {
			return false, err
		}
		if ver > s.DurableVersion() {
			return false, nil // not on disk yet
		}
		c, err := decodeChange(ver, v)
		if err != nil {
			return false, err
		}
		out = append(out, c)
		return len(out) < limit, nil
	})
	return out, err
}

// OriginChanges returns up to limit changes of origin with an origin version
// after `after`, in origin-version order; with kinds, only changes of those
// kinds. It also returns the origin version the scan reached, so a caller
// asking again starts after what was skipped.
func (s *Store) OriginChanges(origin peer.ID, after uint64, limit int, kinds ...pb.Kind) ([]Change, uint64, error) {
	if after == math.MaxUint64 {
		return nil, after, nil
	}
	prefix := k(pOrigin).str(string(origin))
	var vers []uint64
	durable := s.DurableVersion()
	reached := after
	err := s.scan(prefix.u64(after+1), prefixEnd(prefix), false, func(key, v []byte) (bool, error) {
		ver, kind := parseIndex(v)
		if ver > durable {
			return false, nil // not on disk yet
		}
		if ov, err := tailU64(key); err == nil {
			reached = ov
		}
		if len(kinds) > 0 && !slices.Contains(kinds, kind) {
			return true, nil
		}
		vers = append(vers, ver)
		return len(vers) < limit, nil
	})
	if err != nil {
		return nil, reached, err
	}
	out := make([]Change, 0, len(vers))
	for _, v := range vers {
		c, err := s.Change(v)
		if err != nil {
			return nil, reached, fmt.Errorf("change %d: %w", v, err)
		}
		out = append(out, c)
	}
	return out, reached, nil
}

// LastOriginVersion is the highest origin version held from origin (0: none).
func (s *Store) LastOriginVersion(origin peer.ID) (uint64, error) {
	prefix := k(pOrigin).str(string(origin))
	var last uint64
	err := s.scan(prefix, prefixEnd(prefix), true, func(key, _ []byte) (bool, error) {
		v, err := tailU64(key)
		last = v
		return false, err
	})
	return last, err
}

// CounterValue reads a named counter inside a transaction.
func (t *Txn) CounterValue(name string) (uint64, error) {
	v, err := t.get(k(keyCtrPrefix).str(name))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return 0, err
	}
	return parseU64(v), nil
}

// SetCounter sets a named counter.
func (t *Txn) SetCounter(name string, v uint64) { t.set(k(keyCtrPrefix).str(name), u64Value(v)) }

// ---- resources ----

func resourceKey(dataType string, creator []byte, id string) key {
	return k(pResource).str(dataType).bytes(creator).str(id)
}

// GetResource reads a resource inside a transaction.
func (t *Txn) GetResource(dataType string, creator peer.ID, id string) (*storepb.Resource, error) {
	v, err := t.get(resourceKey(dataType, []byte(creator), id))
	if err != nil {
		return nil, err
	}
	r := &storepb.Resource{}
	return r, unmarshal(v, r)
}

// PutResource writes a resource's current state. Its JSON is not stored
// twice: the row points at the change (r.Version) whose payload it is, and
// Resources reads it from there.
func (t *Txn) PutResource(r *storepb.Resource) {
	row := &storepb.Resource{DataType: r.DataType, Id: r.Id, Creator: r.Creator, OriginVersion: r.OriginVersion,
		Version: r.Version, Deleted: r.Deleted, UpdatedAt: r.UpdatedAt}
	t.set(resourceKey(r.DataType, r.Creator, r.Id), marshal(row))
}

// Resources lists resources, of one data type or ("") of all, deleted ones
// included (callers filter).
func (s *Store) Resources(dataType string) ([]*storepb.Resource, error) {
	prefix := k(pResource)
	if dataType != "" {
		prefix = prefix.str(dataType)
	}
	var out []*storepb.Resource
	err := s.scan(prefix, prefixEnd(prefix), false, func(_, v []byte) (bool, error) {
		r := &storepb.Resource{}
		if err := unmarshal(v, r); err != nil {
			return false, err
		}
		out = append(out, r)
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	for _, r := range out {
		if len(r.Json) == 0 && r.Version > 0 {
			c, err := s.Change(r.Version)
			if err != nil {
				return nil, fmt.Errorf("resource %s/%s: change %d: %w", r.DataType, r.Id, r.Version, err)
			}
			r.Json = c.Body.Payload
		}
	}
	return out, nil
}

// ---- deliveries ----

// AddDelivery gives d an id and the next link seq of its receiver's lane and
// writes it pending.
func (t *Txn) AddDelivery(d *storepb.Delivery) error {
	id, err := t.Next(CtrDelivery)
	if err != nil {
		return err
	}
	lk := k(pLinkOut).bytes(d.Receiver).u8(byte(d.Lane))
	v, err := t.get(lk)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	seq := parseU64(v) + 1
	t.set(lk, u64Value(seq))
	d.Id, d.LinkSeq = id, seq
	d.State = storepb.Delivery_STATE_PENDING
	if d.CreatedAt == 0 {
		d.CreatedAt = t.now.UnixNano()
	}
	if d.NextAttemptAt == 0 {
		d.NextAttemptAt = d.CreatedAt
	}
	t.set(k(pDelivery).u64(id), marshal(d))
	t.set(pendingKey(d), u64Value(id))
	return nil
}

func pendingKey(d *storepb.Delivery) key {
	return k(pPending).bytes(d.Receiver).u8(byte(d.Lane)).u64(d.LinkSeq)
}

// GetDelivery reads a delivery inside a transaction.
func (t *Txn) GetDelivery(id uint64) (*storepb.Delivery, error) {
	v, err := t.get(k(pDelivery).u64(id))
	if err != nil {
		return nil, err
	}
	d := &storepb.Delivery{}
	return d, unmarshal(v, d)
}

// PutDelivery rewrites a delivery, keeping the pending index in step with its state.
func (t *Txn) PutDelivery(d *storepb.Delivery) {
	t.set(k(pDelivery).u64(d.Id), marshal(d))
	if d.State == storepb.Delivery_STATE_PENDING {
		t.set(pendingKey(d), u64Value(d.Id))
	} else {
		t.del(pendingKey(d))
	}
}

// DeleteDelivery removes a delivery row (retention pruning).
func (t *Txn) DeleteDelivery(d *storepb.Delivery) {
	t.del(k(pDelivery).u64(d.Id))
	t.del(pendingKey(d))
}

// Delivery reads one delivery.
func (s *Store) Delivery(id uint64) (*storepb.Delivery, error) {
	v, err := s.getRaw(k(pDelivery).u64(id))
	if err != nil {
		return nil, err
	}
	d := &storepb.Delivery{}
	return d, unmarshal(v, d)
}

// Deliveries calls fn for every delivery from id `from` on, in id order,
// until fn returns false.
func (s *Store) Deliveries(from uint64, fn func(*storepb.Delivery) bool) error {
	return s.scanDeliveries(false, k(pDelivery).u64(from), fn)
}

// DeliveriesNewestFirst calls fn for every delivery, newest first, until
// fn returns false.
func (s *Store) DeliveriesNewestFirst(fn func(*storepb.Delivery) bool) error {
	return s.scanDeliveries(true, []byte(pDelivery), fn)
}

func (s *Store) scanDeliveries(reverse bool, lo []byte, fn func(*storepb.Delivery) bool) error {
	return s.scan(lo, prefixEnd([]byte(pDelivery)), reverse, func(_, v []byte) (bool, error) {
		d := &storepb.Delivery{}
		if err := unmarshal(v, d); err != nil {
			return false, err
		}
		return fn(d), nil
	})
}

// PendingCount counts pending deliveries from the pending index alone.
func (s *Store) PendingCount() (int, error) {
	n := 0
	err := s.scan([]byte(pPending), prefixEnd([]byte(pPending)), false, func(_, _ []byte) (bool, error) {
		n++
		return true, nil
	})
	return n, err
}

// PendingReceivers lists the receivers that have pending deliveries.
func (s *Store) PendingReceivers() ([]peer.ID, error) {
	var out []peer.ID
	lo := []byte(pPending)
	hi := prefixEnd(lo)
	for {
		var found []byte
		err := s.scan(lo, hi, false, func(key, _ []byte) (bool, error) {
			found = append([]byte(nil), key...)
			return false, nil
		})
		if err != nil || found == nil {
			return out, err
		}
		n := int(found[len(pPending)])
		if len(found) < len(pPending)+1+n {
			return out, errShortKey
		}
		id := peer.ID(found[len(pPending)+1 : len(pPending)+1+n])
		out = append(out, id)
		lo = prefixEnd(k(pPending).str(string(id)))
	}
}

// ---- link state (receiver side) ----

// LinkIn reads what this node holds of a sender's lane.
func (t *Txn) LinkIn(sender peer.ID, lane uint32) (*storepb.LinkState, error) {
	v, err := t.get(k(pLinkIn).str(string(sender)).u8(byte(lane)))
	if errors.Is(err, ErrNotFound) {
		return &storepb.LinkState{}, nil
	}
	if err != nil {
		return nil, err
	}
	l := &storepb.LinkState{}
	return l, unmarshal(v, l)
}

// SetLinkIn records a sender lane's state.
func (t *Txn) SetLinkIn(sender peer.ID, lane uint32, l *storepb.LinkState) {
	t.set(k(pLinkIn).str(string(sender)).u8(byte(lane)), marshal(l))
}

// LinkIn reads committed link state.
func (s *Store) LinkIn(sender peer.ID, lane uint32) (*storepb.LinkState, error) {
	v, err := s.getRaw(k(pLinkIn).str(string(sender)).u8(byte(lane)))
	if errors.Is(err, ErrNotFound) {
		return &storepb.LinkState{}, nil
	}
	if err != nil {
		return nil, err
	}
	l := &storepb.LinkState{}
	return l, unmarshal(v, l)
}

// ---- review requests and decisions ----

// PutRequest writes a request row and its origin index.
func (t *Txn) PutRequest(r *storepb.Request) {
	t.set(k(pRequest).u64(r.Id), marshal(r))
	if r.Origin != "" {
		t.set(k(pReqOrigin).str(r.Origin), u64Value(r.Id))
	}
}

// GetRequest reads a request row inside a transaction.
func (t *Txn) GetRequest(id uint64) (*storepb.Request, error) {
	v, err := t.get(k(pRequest).u64(id))
	if err != nil {
		return nil, err
	}
	r := &storepb.Request{}
	return r, unmarshal(v, r)
}

// RequestByOrigin finds a request row by its origin inside a transaction.
func (t *Txn) RequestByOrigin(origin string) (*storepb.Request, error) {
	v, err := t.get(k(pReqOrigin).str(origin))
	if err != nil {
		return nil, err
	}
	return t.GetRequest(parseU64(v))
}

// Request reads one request row.
func (s *Store) Request(id uint64) (*storepb.Request, error) {
	v, err := s.getRaw(k(pRequest).u64(id))
	if err != nil {
		return nil, err
	}
	r := &storepb.Request{}
	return r, unmarshal(v, r)
}

// RequestByOrigin finds a committed request row by its origin.
func (s *Store) RequestByOrigin(origin string) (*storepb.Request, error) {
	v, err := s.getRaw(k(pReqOrigin).str(origin))
	if err != nil {
		return nil, err
	}
	return s.Request(parseU64(v))
}

// Requests lists request rows in id order, all or those with one status.
func (s *Store) Requests(status string) ([]*storepb.Request, error) {
	var out []*storepb.Request
	err := s.scan([]byte(pRequest), prefixEnd([]byte(pRequest)), false, func(_, v []byte) (bool, error) {
		r := &storepb.Request{}
		if err := unmarshal(v, r); err != nil {
			return false, err
		}
		if status == "" || r.Status == status {
			out = append(out, r)
		}
		return true, nil
	})
	return out, err
}

// PutDecision records that the decision with a sequence is the change at a
// local version.
func (t *Txn) PutDecision(seq, version uint64) { t.set(k(pDecision).u64(seq), u64Value(version)) }

// HasDecision reports whether the decision with seq is held.
func (t *Txn) HasDecision(seq uint64) (bool, error) {
	_, err := t.get(k(pDecision).u64(seq))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Decisions returns up to limit decision changes after sequence `after`.
func (s *Store) Decisions(after uint64, limit int) ([]Change, error) {
	if after == math.MaxUint64 {
		return nil, nil
	}
	var vers []uint64
	durable := s.DurableVersion()
	err := s.scan(k(pDecision).u64(after+1), prefixEnd([]byte(pDecision)), false, func(_, v []byte) (bool, error) {
		if parseU64(v) > durable {
			return false, nil // not on disk yet
		}
		vers = append(vers, parseU64(v))
		return len(vers) < limit, nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]Change, 0, len(vers))
	for _, v := range vers {
		c, err := s.Change(v)
		if err != nil {
			return nil, fmt.Errorf("decision change %d: %w", v, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// LastDecision is the highest decision sequence held.
func (s *Store) LastDecision() (uint64, error) {
	var last uint64
	err := s.scan([]byte(pDecision), prefixEnd([]byte(pDecision)), true, func(key, _ []byte) (bool, error) {
		v, err := tailU64(key)
		last = v
		return false, err
	})
	return last, err
}

// ---- shared tables ----

func rowKey(table string, id uint64) key { return k(pTable).str(table).u64(id) }

// GetRow reads a table row (a JSON object) inside a transaction.
func (t *Txn) GetRow(table string, id uint64) ([]byte, error) { return t.get(rowKey(table, id)) }

// PutRow writes a table row.
func (t *Txn) PutRow(table string, id uint64, row []byte) { t.set(rowKey(table, id), row) }

// DeleteRow removes a table row.
func (t *Txn) DeleteRow(table string, id uint64) { t.del(rowKey(table, id)) }

// Row reads one committed table row.
func (s *Store) Row(table string, id uint64) ([]byte, error) { return s.getRaw(rowKey(table, id)) }

// Row is one table row.
type Row struct {
	ID   uint64
	JSON []byte
}

// Rows lists a table's rows in id order.
func (s *Store) Rows(table string) ([]Row, error) {
	prefix := k(pTable).str(table)
	var out []Row
	err := s.scan(prefix, prefixEnd(prefix), false, func(key, v []byte) (bool, error) {
		id, err := tailU64(key)
		if err != nil {
			return false, err
		}
		out = append(out, Row{ID: id, JSON: append([]byte(nil), v...)})
		return true, nil
	})
	return out, err
}

// ---- peer book and partners ----

// PutPeer writes a peer book entry.
func (t *Txn) PutPeer(p *storepb.Peer) { t.set(k(pPeer).bytes(p.Id), marshal(p)) }

// GetPeer reads a peer book entry inside a transaction.
func (t *Txn) GetPeer(id peer.ID) (*storepb.Peer, error) {
	v, err := t.get(k(pPeer).str(string(id)))
	if err != nil {
		return nil, err
	}
	p := &storepb.Peer{}
	return p, unmarshal(v, p)
}

// Peer reads a peer book entry.
func (s *Store) Peer(id peer.ID) (*storepb.Peer, error) {
	v, err := s.getRaw(k(pPeer).str(string(id)))
	if err != nil {
		return nil, err
	}
	p := &storepb.Peer{}
	return p, unmarshal(v, p)
}

// Peers lists the peer book.
func (s *Store) Peers() ([]*storepb.Peer, error) {
	var out []*storepb.Peer
	err := s.scan([]byte(pPeer), prefixEnd([]byte(pPeer)), false, func(_, v []byte) (bool, error) {
		p := &storepb.Peer{}
		if err := unmarshal(v, p); err != nil {
			return false, err
		}
		out = append(out, p)
		return true, nil
	})
	return out, err
}

// SetPartner records an operator's partner add (true) or remove (false).
func (t *Txn) SetPartner(id peer.ID, partner bool) {
	v := []byte{0}
	if partner {
		v[0] = 1
	}
	t.set(k(pPartner).str(string(id)), v)
}

// PartnerOverrides returns the operator's partner adds and removes.
func (s *Store) PartnerOverrides() (map[peer.ID]bool, error) {
	out := map[peer.ID]bool{}
	err := s.scan([]byte(pPartner), prefixEnd([]byte(pPartner)), false, func(key, v []byte) (bool, error) {
		out[peer.ID(key[len(pPartner)+1:])] = len(v) == 1 && v[0] == 1
		return true, nil
	})
	return out, err
}

// ---- auxiliary values for services ----

// SetAux writes a service's own value under x/<name>.
func (t *Txn) SetAux(name string, v []byte) { t.set(k(pAux).str(name), v) }

// DeleteAux removes a service's value.
func (t *Txn) DeleteAux(name string) { t.del(k(pAux).str(name)) }

// GetAux reads a service's value inside a transaction.
func (t *Txn) GetAux(name string) ([]byte, error) { return t.get(k(pAux).str(name)) }

// AuxPrefix returns every committed service value whose name starts with prefix.
func (s *Store) AuxPrefix(prefix string) (map[string][]byte, error) {
	out := map[string][]byte{}
	lo := []byte(pAux)
	err := s.scan(lo, prefixEnd(lo), false, func(key, v []byte) (bool, error) {
		if len(key) < len(pAux)+1 {
			return true, nil
		}
		name := string(key[len(pAux)+1:])
		if strings.HasPrefix(name, prefix) {
			out[name] = append([]byte(nil), v...)
		}
		return true, nil
	})
	return out, err
}

// Aux reads a committed service value.
func (s *Store) Aux(name string) ([]byte, error) { return s.getRaw(k(pAux).str(name)) }

// PendingFrom returns up to limit pending deliveries of one receiver lane
// with a link seq after `after`, in link order.
func (s *Store) PendingFrom(receiver peer.ID, lane uint32, after uint64, limit int) ([]*storepb.Delivery, error) {
	if after == math.MaxUint64 {
		return nil, nil
	}
	prefix := k(pPending).str(string(receiver)).u8(byte(lane))
	durable := s.DurableDelivery()
	var ids []uint64
	err := s.scan(prefix.u64(after+1), prefixEnd(prefix), false, func(_, v []byte) (bool, error) {
		if parseU64(v) > durable {
			return false, nil // not on disk yet
		}
		ids = append(ids, parseU64(v))
		return len(ids) < limit, nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]*storepb.Delivery, 0, len(ids))
	for _, id := range ids {
		d, err := s.Delivery(id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/store/storepb"
)

// MaxNameBytes bounds data types, table names and resource ids, which are
// parts of keys.
const MaxNameBytes = 255

// CounterValue reads a named counter inside a transaction.
func (t *Txn) CounterValue(name string) (uint64, error) { return t.counter(t.s.counterKey(name)) }

// SetCounter sets a named counter.
func (t *Txn) SetCounter(name string, v uint64) { t.setCounter(t.s.counterKey(name), v) }

// counterKey is the key of a named counter, made once per name: the
// busiest counters are read and written by every change (the version, the
// chains), and a key is never written once made, so one serves every
// write. The cache is the writer's own (transactions and commitRound run
// on it alone): no lock.
func (s *Store) counterKey(name string) key {
	if name == CtrVersion {
		return s.ctrVersionKey
	}
	if ck, ok := s.ctrKeys[name]; ok {
		return ck
	}
	ck := k(keyCtrPrefix).str(name)
	if s.ctrKeys == nil {
		s.ctrKeys = map[string]key{}
	}
	s.ctrKeys[strings.Clone(name)] = ck
	return ck
}

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
	return decodeResource(dataType, []byte(creator), id, v)
}

// decodeResource decodes a resource row; its data type, creator and id
// are those of its key (a row written since schema 3 holds only the rest).
func decodeResource(dataType string, creator []byte, id string, v []byte) (*storepb.Resource, error) {
	r := &storepb.Resource{}
	if err := unmarshal(v, r); err != nil {
		return nil, err
	}
	r.DataType, r.Creator, r.Id = dataType, creator, id
	if r.Version == 0 {
		r.Version = r.OriginVersion // an own row: the two are the same (PutResource)
	}
	return r, nil
}

// resourceFromKey decodes a row read with its key.
func resourceFromKey(key, v []byte) (*storepb.Resource, error) {
	parts, err := resourceKeyParts(key)
	if err != nil {
		return nil, err
	}
	return decodeResource(parts[0], []byte(parts[1]), parts[2], v)
}

// resourceKeyParts splits a resource key into data type, creator and id.
func resourceKeyParts(key []byte) ([3]string, error) {
	var parts [3]string
	rest := key[len(pResource):]
	for i := range parts {
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return parts, errShortKey
		}
		parts[i], rest = string(rest[1:1+rest[0]]), rest[1+rest[0]:]
	}
	return parts, nil
}

// ResourceKeys calls fn with the data type, creator and id of every
// resource row, reading keys only, until fn returns false.
func (s *Store) ResourceKeys(fn func(dataType string, creator peer.ID, id string) bool) error {
	return s.scan([]byte(pResource), prefixEnd([]byte(pResource)), false, func(key, _ []byte) (bool, error) {
		parts, err := resourceKeyParts(key)
		if err != nil {
			return false, err
		}
		return fn(parts[0], peer.ID(parts[1]), parts[2]), nil
	})
}

// Resource reads one committed resource row.
func (s *Store) Resource(dataType string, creator peer.ID, id string) (*storepb.Resource, error) {
	v, err := s.getRaw(resourceKey(dataType, []byte(creator), id))
	if err != nil {
		return nil, err
	}
	return decodeResource(dataType, []byte(creator), id, v)
}

// PutResource writes a resource's current state. Nothing is stored twice:
// the row points at the change (r.Version) whose payload its JSON is, and
// Resources reads it from there; its data type, creator and id are its key,
// and the version of an own row is its origin version.
func (t *Txn) PutResource(r *storepb.Resource) {
	row := &storepb.Resource{OriginVersion: r.OriginVersion, Version: r.Version, Deleted: r.Deleted, UpdatedAt: r.UpdatedAt}
	if row.Version == row.OriginVersion {
		row.Version = 0 // a row of an own change: read back as its origin version
	}
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
	err := s.scan(prefix, prefixEnd(prefix), false, func(key, v []byte) (bool, error) {
		r, err := resourceFromKey(key, v)
		if err != nil {
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
			b, err := s.ChangeBody(r.Version)
			if err != nil {
				return nil, fmt.Errorf("resource %s/%s: change %d: %w", r.DataType, r.Id, r.Version, err)
			}
			r.Json = b.Payload
		}
	}
	return out, nil
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
// local version, with its body's fingerprint (store.BodyHash).
func (t *Txn) PutDecision(seq, version, hash uint64) {
	t.set(k(pDecision).u64(seq), binary.BigEndian.AppendUint64(u64Value(version), hash))
}

// Decision reports whether the decision with seq is held, at which local
// version and with which fingerprint (0 when not recorded).
func (t *Txn) Decision(seq uint64) (version, hash uint64, ok bool, err error) {
	v, err := t.get(k(pDecision).u64(seq))
	if errors.Is(err, ErrNotFound) {
		return 0, 0, false, nil
	}
	if err != nil {
		return 0, 0, false, err
	}
	version = decisionVersion(v)
	if len(v) >= 16 {
		hash = binary.BigEndian.Uint64(v[8:16])
	}
	return version, hash, true, nil
}

func decisionVersion(v []byte) uint64 {
	if len(v) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v[:8])
}

// DecisionVersion is the local version of the decision with sequence seq
// (ErrNotFound: none held).
func (s *Store) DecisionVersion(seq uint64) (uint64, error) {
	v, err := s.getRaw(k(pDecision).u64(seq))
	if err != nil {
		return 0, err
	}
	return decisionVersion(v), nil
}

// Decisions returns up to limit decision changes after sequence `after`.
func (s *Store) Decisions(after uint64, limit int) ([]Change, error) {
	if after == math.MaxUint64 {
		return nil, nil
	}
	var vers []uint64
	durable := s.DurableVersion()
	err := s.scan(k(pDecision).u64(after+1), prefixEnd([]byte(pDecision)), false, func(_, v []byte) (bool, error) {
		if decisionVersion(v) > durable {
			return false, nil // not on disk yet
		}
		vers = append(vers, decisionVersion(v))
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

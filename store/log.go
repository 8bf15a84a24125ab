package store

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/cockroachdb/pebble"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store/seglog"
	"github.com/ferrynet/ferry/store/storepb"
)

// The change log is the outbox: every change this node makes or receives
// is one record of it (changelog.go), and what goes to receivers is read from it,
// per receiver and lane, after that receiver's ack floor. Nothing is written
// per (change, receiver) when a change is committed or acknowledged.

// ---- versions ----

// NextVersion gives the next store version: one more than the last, and
// never below the commit's clock in microseconds. A node restored from an
// older copy of its data directory therefore never hands out again a version
// its peers have seen (they were all given before now), even before it has
// heard from them.
func (t *Txn) NextVersion() (uint64, error) {
	key := t.s.ctrVersionKey
	v, err := t.counter(key)
	if err != nil {
		return 0, err
	}
	n := max(v+1, uint64(max(t.now.UnixMicro(), 0)))
	t.setCounter(key, n)
	return n, nil
}

// RaiseVersion makes every later version greater than v (a peer holds this
// node's changes up to v: its store was restored from an older copy).
func (t *Txn) RaiseVersion(v uint64) error {
	cur, err := t.CounterValue(CtrVersion)
	if err != nil {
		return err
	}
	if v > cur {
		t.SetCounter(CtrVersion, v)
	}
	return nil
}

// ---- the change log and the origin index ----

// BodyHash fingerprints a change's signed body: the same (origin, version)
// with another fingerprint is an equivocation, not a resend. It is the
// first 8 bytes of the body's Merkle leaf hash, which sealing and
// verification compute anyway (HashOfLeaf).
func BodyHash(body []byte) uint64 { return HashOfLeaf(protocols.LeafHash(body)) }

// HashOfLeaf is BodyHash from a body's leaf hash.
func HashOfLeaf(leaf [32]byte) uint64 { return binary.BigEndian.Uint64(leaf[:8]) }

// OriginEntry is what the origin index holds of one change: where it is in
// this node's log, its kind, its fingerprint and when it was committed here.
type OriginEntry struct {
	LocalVersion uint64
	Kind         pb.Kind
	Hash         uint64
	AppliedAt    time.Time
}

func originValue(ver uint64, kind pb.Kind, hash uint64, at time.Time) []byte {
	b := make([]byte, 0, 25)
	b = binary.BigEndian.AppendUint64(b, ver)
	b = append(b, byte(kind))
	b = binary.BigEndian.AppendUint64(b, hash)
	return binary.BigEndian.AppendUint64(b, uint64(at.UnixNano()))
}

func parseOrigin(v []byte) OriginEntry {
	var e OriginEntry
	if len(v) >= 8 {
		e.LocalVersion = binary.BigEndian.Uint64(v)
	}
	if len(v) >= 9 {
		e.Kind = pb.Kind(v[8])
	}
	if len(v) >= 17 {
		e.Hash = binary.BigEndian.Uint64(v[9:])
	}
	if len(v) >= 25 {
		e.AppliedAt = time.Unix(0, int64(binary.BigEndian.Uint64(v[17:])))
	}
	return e
}

func originKey(origin []byte, ver uint64) key { return k(pOrigin).bytes(origin).u64(ver) }

// AppendOwn gives body the next store version as its origin version, writes
// it to the change log and registers it for sealing with this commit's
// signature. body.Origin must be this node.
func (t *Txn) AppendOwn(body *pb.Body) (uint64, *Sealed, error) {
	ver, err := t.NextVersion()
	if err != nil {
		return 0, nil, err
	}
	s, err := t.AppendOwnAt(ver, body)
	return ver, s, err
}

// AppendOwnAt is AppendOwn for a version the caller took from NextVersion
// (it needed it inside the body's payload).
func (t *Txn) AppendOwnAt(ver uint64, body *pb.Body) (*Sealed, error) {
	body.OriginVersion = ver
	if !utf8.ValidString(body.DataType) {
		return nil, fmt.Errorf("encode body: data type %q is not UTF-8", body.DataType)
	}
	b := protocols.AppendBody(make([]byte, 0, protocols.BodySize(body)), body)
	s := &Sealed{version: ver, body: b, leaf: protocols.LeafHash(b)}
	s.Hash = HashOfLeaf(s.leaf)
	t.sealed = append(t.sealed, s)
	if string(body.Origin) != string(t.s.self) {
		t.set(originKey(body.Origin, ver), originValue(ver, body.Kind, s.Hash, t.now))
	} // an own change's origin entry is its log record (ownOrigin)
	return s, nil
}

// HeldOrigin reports whether the change (origin, originVersion) is held,
// and what the index knows of it.
func (t *Txn) HeldOrigin(origin peer.ID, originVersion uint64) (OriginEntry, bool, error) {
	v, err := t.get(originKey([]byte(origin), originVersion))
	if errors.Is(err, ErrNotFound) && t.s.isSelf(origin) {
		return t.s.ownOrigin(originVersion)
	}
	if errors.Is(err, ErrNotFound) {
		return OriginEntry{}, false, nil
	}
	if err != nil {
		return OriginEntry{}, false, err
	}
	return parseOrigin(v), true, nil
}

// HasOrigin reports whether the change (origin, originVersion) is held, and
// at which local version.
func (t *Txn) HasOrigin(origin peer.ID, originVersion uint64) (uint64, bool, error) {
	e, ok, err := t.HeldOrigin(origin, originVersion)
	return e.LocalVersion, ok, err
}

// AppendReceived stores an envelope (its encoded bytes, env) that came from
// body's origin under the next store version. hash is BodyHash of its body.
// The caller has checked that the change is not held.
func (t *Txn) AppendReceived(body *pb.Body, hash uint64, env []byte) (uint64, error) {
	ver, err := t.NextVersion()
	if err != nil {
		return 0, err
	}
	t.logged = append(t.logged, seglog.Record{Version: ver, Type: recEnvelope, Data: env})
	t.set(originKey(body.Origin, body.OriginVersion), originValue(ver, body.Kind, hash, t.now))
	return ver, nil
}

// PartLeaf is leaf I of a received part of a tree (protocols.Part: bodies
// with their places in the tree, the signature and the proof hashes once),
// verified by the caller (Opened: what opening it gave).
type PartLeaf struct {
	Part   *protocols.Part
	Opened *protocols.OpenedPart
	I      int
}

// Envelope is the leaf as a self-contained encoded envelope, for when the
// store cannot keep the part as it came.
func (pl PartLeaf) Envelope() []byte {
	return protocols.MarshalEnvelope(pl.Part.Envelope(pl.Opened, pl.I))
}

// AppendReceivedPart is AppendReceived for a change that came in a part of
// its tree: the round stores the part as it came (recPart records: the
// bodies, the signature and the proof once) when every leaf of it is
// logged in the round, without encoding each change as a self-contained
// envelope and parsing it again; else each change as its envelope, as
// AppendReceived does (compactTrees).
func (t *Txn) AppendReceivedPart(body *pb.Body, hash uint64, leaf PartLeaf) (uint64, error) {
	ver, err := t.NextVersion()
	if err != nil {
		return 0, err
	}
	if t.parts == nil {
		t.parts = make(map[uint64]PartLeaf, t.changes)
	}
	t.parts[ver] = leaf
	t.logged = append(t.logged, seglog.Record{Version: ver, Type: recPending})
	t.set(originKey(body.Origin, body.OriginVersion), originValue(ver, body.Kind, hash, t.now))
	return ver, nil
}

// partLeafOf is the part leaf of a record AppendReceivedPart logged in this
// round (recPending).
func (t *Txn) partLeafOf(r seglog.Record) (PartLeaf, bool) {
	if r.Type != recPending {
		return PartLeaf{}, false
	}
	if pl, ok := t.parts[r.Version]; ok {
		return pl, true
	}
	pl, ok := t.roundParts[r.Version]
	return pl, ok
}

// PutOwnRecovered stores one of this node's own changes at its original
// version (recovered from a peer after a restore from an older copy). It
// reports false, writing nothing, when that version is taken.
func (t *Txn) PutOwnRecovered(body *pb.Body, hash uint64, env []byte) (bool, error) {
	// Out of the log's order: it goes to Pebble, where the changes of a
	// schema-2 store are too.
	ck := k(pChange).u64(body.OriginVersion)
	if _, err := t.get(ck); err == nil {
		return false, nil
	} else if !errors.Is(err, ErrNotFound) {
		return false, err
	}
	if _, err := t.s.clog.Read(body.OriginVersion); err == nil {
		return false, nil
	} else if !errors.Is(err, seglog.ErrNotFound) {
		return false, t.s.checkLog(err)
	}
	t.set(ck, env)
	t.set(originKey(body.Origin, body.OriginVersion), originValue(body.OriginVersion, body.Kind, hash, t.now))
	return true, t.RaiseVersion(body.OriginVersion)
}

// OriginEntry reads what the origin index holds of a change.
func (s *Store) OriginEntry(origin peer.ID, originVersion uint64) (OriginEntry, error) {
	v, err := s.getRaw(originKey([]byte(origin), originVersion))
	if errors.Is(err, ErrNotFound) && s.isSelf(origin) {
		e, ok, err := s.ownOrigin(originVersion)
		if err == nil && !ok {
			err = ErrNotFound
		}
		return e, err
	}
	if err != nil {
		return OriginEntry{}, err
	}
	return parseOrigin(v), nil
}

func (s *Store) isSelf(origin peer.ID) bool {
	return len(s.self) > 0 && string(origin) == string(s.self)
}

// ownOrigin is the origin entry of one of this node's own changes, read
// from its log record (the origin index holds only those of a schema-2
// store and those recovered from peers).
func (s *Store) ownOrigin(ver uint64) (OriginEntry, bool, error) {
	r, err := s.clog.Read(ver)
	if errors.Is(err, seglog.ErrNotFound) {
		return OriginEntry{}, false, nil
	}
	if err != nil {
		return OriginEntry{}, false, s.checkLog(err)
	}
	if r.Type != recOwn {
		return OriginEntry{}, false, nil
	}
	return s.ownEntry(r)
}

func (s *Store) ownEntry(r seglog.Record) (OriginEntry, bool, error) {
	o, err := s.parseOwnRecord(r.Version, r.Data)
	if err != nil {
		return OriginEntry{}, false, s.checkLog(fmt.Errorf("%w: change %d: %w", seglog.ErrCorrupt, r.Version, err))
	}
	body := &pb.Body{}
	if err := unmarshal(o.body, body); err != nil {
		return OriginEntry{}, false, err
	}
	return OriginEntry{LocalVersion: r.Version, Kind: body.Kind, Hash: BodyHash(o.body),
		AppliedAt: time.Unix(0, body.CreatedAtUnixNano)}, true, nil
}

// ownKind reads the kind of an own change from its log record.
func (s *Store) ownKind(r seglog.Record) (pb.Kind, error) {
	b, err := s.recordBody(r)
	if err != nil {
		return 0, err
	}
	return b.Kind, nil
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
	env, err := s.ChangeEnvelope(ver)
	if err != nil {
		return Change{}, err
	}
	return decodeChange(ver, env)
}

// ChangeBody reads the body of the change at a store version (no proof).
func (s *Store) ChangeBody(ver uint64) (*pb.Body, error) {
	r, err := s.clog.Read(ver)
	if err == nil {
		return s.recordBody(r)
	}
	if !errors.Is(err, seglog.ErrNotFound) {
		return nil, s.checkLog(err)
	}
	c, err := s.legacyChange(ver)
	return c.Body, err
}

func (s *Store) legacyChange(ver uint64) (Change, error) {
	v, err := s.getRaw(k(pChange).u64(ver))
	if err != nil {
		return Change{}, err
	}
	return decodeChange(ver, v)
}

// ChangeBody reads the body of the change at a store version inside a
// transaction: one of an earlier round (a round's own changes are logged
// when it is sealed, so a transaction does not read those of its round).
func (t *Txn) ChangeBody(ver uint64) (*pb.Body, error) {
	for _, rs := range [][]seglog.Record{t.logged, t.prior} {
		for _, r := range rs {
			if r.Version != ver {
				continue
			}
			if pl, ok := t.partLeafOf(r); ok {
				body := &pb.Body{}
				if err := unmarshal(pl.Part.Bodies[pl.I], body); err != nil {
					return nil, fmt.Errorf("change %d: %w", ver, err)
				}
				return body, nil
			}
			return t.s.recordBody(r)
		}
	}
	r, err := t.s.clog.Read(ver)
	if err == nil {
		return t.s.recordBody(r)
	}
	if !errors.Is(err, seglog.ErrNotFound) {
		return nil, t.s.checkLog(err)
	}
	v, err := t.get(k(pChange).u64(ver))
	if err != nil {
		return nil, err
	}
	c, err := decodeChange(ver, v)
	return c.Body, err
}

// ChangeEnvelope reads the encoded envelope of a change: one received alone
// is read as it came; one of this node's own, or received with others of
// its tree (recTree, recPart), is rebuilt from the bodies, signature and
// proof hashes stored (the tree or part is cached: a sender reads a tree's
// changes one after another).
func (s *Store) ChangeEnvelope(ver uint64) ([]byte, error) {
	r, err := s.clog.Read(ver)
	if errors.Is(err, seglog.ErrNotFound) {
		return s.getRaw(k(pChange).u64(ver))
	}
	if err != nil {
		return nil, s.checkLog(err)
	}
	return s.envelopeOf(r)
}

func (s *Store) envelopeOf(r seglog.Record) ([]byte, error) {
	switch r.Type {
	case recEnvelope:
		return r.Data, nil
	case recOwn, recTree:
		o, err := s.parseOwnRecord(r.Version, r.Data)
		if err != nil {
			return nil, s.checkLog(fmt.Errorf("%w: change %d: %w", seglog.ErrCorrupt, r.Version, err))
		}
		return s.trees.envelope(s, o.tree, r.Version, s.buildTree)
	case recPart:
		p, err := parsePartRecord(r.Version, r.Data)
		if err != nil {
			return nil, s.checkLog(fmt.Errorf("%w: change %d: %w", seglog.ErrCorrupt, r.Version, err))
		}
		return s.trees.envelope(s, p.first, r.Version, s.buildPart)
	}
	return nil, s.checkLog(fmt.Errorf("%w: change %d: record type %d", seglog.ErrCorrupt, r.Version, r.Type))
}

// Changes returns up to limit changes after version since, in version order,
// as far as they are on disk.
func (s *Store) Changes(since uint64, limit int) ([]Change, error) {
	if since == math.MaxUint64 || limit <= 0 {
		return nil, nil
	}
	durable := s.DurableVersion()
	// The changes of a schema-2 store, and own changes recovered from a
	// peer, are in Pebble; the rest is in the log.
	var out []Change
	err := s.scan(k(pChange).u64(since+1), k(pChange).u64(durable+1), false, func(key, v []byte) (bool, error) {
		ver, err := tailU64(key)
		if err != nil {
			return false, err
		}
		c, err := decodeChange(ver, v)
		if err != nil {
			return false, err
		}
		out = append(out, c)
		return len(out) < limit, nil
	})
	if err != nil {
		return nil, err
	}
	var logged []Change
	var lerr error
	err = s.clog.Iter(since+1, func(r seglog.Record) bool {
		if r.Version > durable {
			return false
		}
		env, err := s.envelopeOf(r)
		if err != nil {
			lerr = err
			return false
		}
		c, err := decodeChange(r.Version, env)
		if err != nil {
			lerr = err
			return false
		}
		logged = append(logged, c)
		return len(logged) < limit
	})
	if err = errors.Join(s.checkLog(err), lerr); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return logged, nil
	}
	out = append(out, logged...)
	slices.SortFunc(out, func(a, b Change) int { return cmp.Compare(a.Version, b.Version) })
	return out[:min(len(out), limit)], nil
}

// OriginChanges returns up to limit changes of origin with an origin version
// after `after`, in origin-version order; with kinds, only changes of those
// kinds. It also returns the origin version the scan reached, so a caller
// asking again starts after what was skipped. It stops at the durable mark.
func (s *Store) OriginChanges(origin peer.ID, after uint64, limit int, kinds ...pb.Kind) ([]Change, uint64, error) {
	if after == math.MaxUint64 || limit <= 0 {
		return nil, after, nil
	}
	indexed, reached, err := s.indexedOriginChanges(origin, after, limit, kinds...)
	if err != nil || !s.isSelf(origin) {
		return indexed, reached, err
	}
	// This node's own: from the log (and the index's, of a schema-2 store
	// or recovered from peers, merged in).
	durable := s.DurableVersion()
	var own []Change
	logReached := after
	var bad error
	err = s.clog.Iter(after+1, func(r seglog.Record) bool {
		if r.Version > durable {
			return false
		}
		if r.Type != recOwn {
			return true
		}
		logReached = r.Version
		if len(kinds) > 0 {
			k, err := s.ownKind(r)
			if err != nil {
				bad = err
				return false
			}
			if !slices.Contains(kinds, k) {
				return true
			}
		}
		env, err := s.envelopeOf(r)
		if err == nil {
			var c Change
			if c, err = decodeChange(r.Version, env); err == nil {
				own = append(own, c)
			}
		}
		if err != nil {
			bad = err
			return false
		}
		return len(own) < limit
	})
	if err := errors.Join(s.checkLog(err), bad); err != nil {
		return nil, after, err
	}
	// A source that filled its limit was read only up to its reach: the
	// merge keeps nothing beyond the nearer of those.
	bound := uint64(math.MaxUint64)
	if len(indexed) == limit {
		bound = reached
	}
	if len(own) == limit {
		bound = min(bound, logReached)
	}
	all := append(indexed, own...)
	slices.SortFunc(all, func(a, b Change) int { return cmp.Compare(a.Version, b.Version) })
	all = slices.CompactFunc(all, func(a, b Change) bool { return a.Version == b.Version })
	n := 0
	for n < len(all) && all[n].Version <= bound {
		n++
	}
	all = all[:n]
	switch {
	case len(all) > limit:
		all = all[:limit]
		return all, all[limit-1].Version, nil
	case bound != math.MaxUint64:
		return all, bound, nil
	}
	return all, max(reached, logReached), nil
}

// indexedOriginChanges is OriginChanges from the origin index.
func (s *Store) indexedOriginChanges(origin peer.ID, after uint64, limit int, kinds ...pb.Kind) ([]Change, uint64, error) {
	prefix := k(pOrigin).str(string(origin))
	var vers []uint64
	durable := s.DurableVersion()
	reached := after
	err := s.scan(prefix.u64(after+1), prefixEnd(prefix), false, func(key, v []byte) (bool, error) {
		e := parseOrigin(v)
		if e.LocalVersion > durable {
			return false, nil // not on disk yet
		}
		if ov, err := tailU64(key); err == nil {
			reached = ov
		}
		if len(kinds) > 0 && !slices.Contains(kinds, e.Kind) {
			return true, nil
		}
		vers = append(vers, e.LocalVersion)
		return len(vers) < limit, nil
	})
	if err != nil {
		return nil, reached, err
	}
	out := make([]Change, 0, len(vers))
	for _, v := range vers {
		c, err := s.Change(v)
		if errors.Is(err, ErrNotFound) {
			continue // an index entry without its change: not expected (retention never drops c/)
		}
		if err != nil {
			return nil, reached, fmt.Errorf("change %d: %w", v, err)
		}
		out = append(out, c)
	}
	return out, reached, nil
}

// LastOriginVersion is the highest origin version held from origin (0: none).
func (s *Store) LastOriginVersion(origin peer.ID) (uint64, error) {
	if s.isSelf(origin) {
		return s.LastOriginVersionBelow(origin, math.MaxUint64)
	}
	prefix := k(pOrigin).str(string(origin))
	var last uint64
	err := s.scan(prefix, prefixEnd(prefix), true, func(key, _ []byte) (bool, error) {
		v, err := tailU64(key)
		last = v
		return false, err
	})
	return last, err
}

// LastOriginVersionBelow is the highest origin version held from origin
// that is at most limit (0: none).
func (s *Store) LastOriginVersionBelow(origin peer.ID, limit uint64) (uint64, error) {
	last, err := s.lastIndexedBelow(origin, limit)
	if err != nil || !s.isSelf(origin) {
		return last, err
	}
	r, ok, err := s.clog.LastAtMost(min(limit, s.DurableVersion()), func(r seglog.Record) bool { return r.Type == recOwn })
	if err != nil {
		return 0, s.checkLog(err)
	}
	if ok {
		last = max(last, r.Version)
	}
	return last, nil
}

func (s *Store) lastIndexedBelow(origin peer.ID, limit uint64) (uint64, error) {
	prefix := k(pOrigin).str(string(origin))
	hi := prefixEnd(prefix)
	if limit < math.MaxUint64 {
		hi = k(pOrigin).str(string(origin)).u64(limit + 1)
	}
	var last uint64
	err := s.scan(prefix, hi, true, func(key, _ []byte) (bool, error) {
		v, err := tailU64(key)
		last = v
		return false, err
	})
	return last, err
}

// ---- own deliveries ----

// OwnEntry is one of this node's changes that goes to receivers: the
// receivers of a broadcast entry are those of its lane when it is sent
// (partners for resources, members for decisions); an addressed entry goes
// to To.
type OwnEntry struct {
	Version   uint64
	Lane      uint8
	Kind      pb.Kind
	Protocol  protocol.ID
	RequestID uint64 // review messages: the local request id
	CreatedAt int64  // unix nanoseconds
	To        []peer.ID
	// Superseded: a later own change of the same resource exists (read
	// from U/ by OwnEntriesFrom; see Txn.Supersede).
	Superseded bool
	// Env is the sealed envelope, encoded, when the entry carries it
	// encoded; Shape is its fields with its path, when the entry is handed
	// over in memory right after its commit (AddOwnEntry; not stored with
	// the record): Envelope encodes it only for a follower that needs the
	// bytes (a sender writing compact batches does not).
	Env   []byte
	Shape *protocols.EnvelopeShape
}

// Envelope is the entry's sealed envelope, encoded (nil: it carries none).
func (e *OwnEntry) Envelope() []byte {
	if e.Env == nil && e.Shape != nil {
		return e.Shape.Marshal()
	}
	return e.Env
}

// EnvelopeSize is the length of Envelope's bytes, without encoding them.
func (e *OwnEntry) EnvelopeSize() int {
	if e.Env == nil && e.Shape != nil {
		return e.Shape.EncodedSize()
	}
	return len(e.Env)
}

const ownAddressed = 1

func encodeOwn(e OwnEntry) []byte {
	b := make([]byte, 0, 24+len(e.To)*40)
	flags := byte(0)
	if len(e.To) > 0 {
		flags |= ownAddressed
	}
	b = append(b, e.Lane, byte(e.Kind), protocols.ProtocolCode(e.Protocol), flags)
	b = binary.BigEndian.AppendUint64(b, uint64(e.CreatedAt))
	b = binary.AppendUvarint(b, e.RequestID)
	b = binary.AppendUvarint(b, uint64(len(e.To)))
	for _, p := range e.To {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
	}
	return b
}

var errBadOwn = errors.New("malformed delivery index entry")

func decodeOwn(ver uint64, v []byte) (OwnEntry, error) {
	if len(v) < 12 {
		return OwnEntry{}, errBadOwn
	}
	e := OwnEntry{Version: ver, Lane: v[0], Kind: pb.Kind(v[1]), Protocol: protocols.ProtocolByCode(v[2]),
		CreatedAt: int64(binary.BigEndian.Uint64(v[4:12]))}
	rest := v[12:]
	var n int
	if e.RequestID, n = binary.Uvarint(rest); n <= 0 {
		return OwnEntry{}, errBadOwn
	}
	rest = rest[n:]
	count, n := binary.Uvarint(rest)
	if n <= 0 || count > uint64(len(rest)) {
		return OwnEntry{}, errBadOwn
	}
	rest = rest[n:]
	for range count {
		l, n := binary.Uvarint(rest)
		if n <= 0 || uint64(len(rest)-n) < l {
			return OwnEntry{}, errBadOwn
		}
		e.To = append(e.To, peer.ID(rest[n:n+int(l)]))
		rest = rest[n+int(l):]
	}
	return e, nil
}

// broadcastOwn tells, from an encoded entry alone, its lane and whether it
// is addressed.
func broadcastOwn(v []byte) (lane uint8, addressed bool) {
	if len(v) < 4 {
		return 0, true
	}
	return v[0], v[3]&ownAddressed != 0
}

func addressedKey(to peer.ID, lane uint8) key { return k(pAddressed).str(string(to)).u8(lane) }

// AddOwnEntry records one of this node's changes as owed to receivers.
// Once the commit is on disk the store tells its followers (Follow), in
// commit order, with Env set to sealed's envelope when sealed is not nil
// (the change was sealed by this transaction; a recovered one was not).
func (t *Txn) AddOwnEntry(e OwnEntry, sealed *Sealed) {
	if e.CreatedAt == 0 {
		e.CreatedAt = t.now.UnixNano()
	}
	t.set(k(pOwn).u64(e.Version), encodeOwn(e))
	for _, p := range e.To {
		t.set(addressedKey(p, e.Lane).u64(e.Version), []byte{byte(e.Kind), protocols.ProtocolCode(e.Protocol)})
	}
	if fs := t.s.followers.Load(); fs != nil {
		t.OnCommit(func() {
			if sealed != nil {
				e.Shape = sealed.Shape
			}
			for _, fn := range *fs {
				fn(e)
			}
		})
	}
}

// Follow registers fn to hear of each own entry (AddOwnEntry) once its
// commit is on disk, in commit order: the log announces what it committed
// to those that deliver it (the stream sender, gossip of decisions), so
// the services that write need not know them. fn runs on the store's
// completer and must not block; it hears only of commits prepared after
// Follow returned (what came before is read from the log: Backlog,
// OwnEntriesFrom). Followers register as they are built, before writes
// start.
func (s *Store) Follow(fn func(OwnEntry)) {
	s.followMu.Lock()
	defer s.followMu.Unlock()
	var fs []func(OwnEntry)
	if old := s.followers.Load(); old != nil {
		fs = append(fs, *old...)
	}
	fs = append(fs, fn)
	s.followers.Store(&fs)
}

// OwnEntry reads the delivery record of one of this node's changes.
func (s *Store) OwnEntry(ver uint64) (OwnEntry, error) {
	v, err := s.getRaw(k(pOwn).u64(ver))
	if err != nil {
		return OwnEntry{}, err
	}
	return decodeOwn(ver, v)
}

// OwnEntries calls fn for this node's delivery records with a version below
// `before` (0: all), newest first, until fn returns false. It sees only
// what is on disk.
func (s *Store) OwnEntries(before uint64, fn func(OwnEntry) bool) error {
	hi := k(pOwn).u64(s.DurableVersion() + 1)
	if before > 0 && before <= s.DurableVersion() {
		hi = k(pOwn).u64(before)
	}
	return s.scan([]byte(pOwn), hi, true, func(key, v []byte) (bool, error) {
		ver, err := tailU64(key)
		if err != nil {
			return false, err
		}
		e, err := decodeOwn(ver, v)
		if err != nil {
			return false, fmt.Errorf("delivery record %d: %w", ver, err)
		}
		return fn(e), nil
	})
}

// Entry is one change of a receiver's backlog, ready to send.
type Entry struct {
	Version  uint64
	Kind     pb.Kind
	Protocol protocol.ID
	Env      []byte // the sealed envelope, encoded (nil when Shape holds its path: protocols.ShapeOf)
	// Shape is Env's fields, when the reader parsed it already
	// (protocols.ParseEnvelope) or the sealer gave them; nil otherwise.
	Shape *protocols.EnvelopeShape
}

// Backlog returns the entries of one receiver's lane after version `after`,
// in version order, at most maxEntries and about maxBytes of envelopes (at
// least one entry), as far as they are on disk. With broadcast, the lane's
// broadcast entries are included (the receiver is one of the lane's
// receivers); the entries addressed to the receiver always are.
func (s *Store) Backlog(recv peer.ID, lane uint8, broadcast bool, after uint64, maxEntries, maxBytes int) ([]Entry, error) {
	if after == math.MaxUint64 {
		return nil, nil
	}
	durable := s.DurableVersion()
	if after >= durable {
		return nil, nil
	}
	heads, err := s.backlogHeads(recv, lane, broadcast, after, durable, maxEntries)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(heads))
	size := 0
	// One pass over the log from the first entry: the entries are in
	// version order, mostly near one another.
	i := 0
	skipped := 0 // records passed since the last entry: a sparse lane reads entry by entry below
	var lerr error
	take := func(e Entry, env []byte) bool {
		if len(out) > 0 && size+len(env) > maxBytes {
			return false
		}
		e.Env = env
		size += len(env)
		out = append(out, e)
		return true
	}
	if len(heads) > 0 {
		err = s.clog.Iter(heads[0].Version, func(r seglog.Record) bool {
			for i < len(heads) && heads[i].Version < r.Version {
				// Not in the log: a change of a schema-2 store, or one
				// taken back from a peer (in Pebble).
				env, err := s.getRaw(k(pChange).u64(heads[i].Version))
				if err == nil && !take(heads[i], env) {
					return false
				}
				if err != nil && !errors.Is(err, ErrNotFound) {
					lerr = err
					return false
				}
				i++
			}
			if i == len(heads) || len(out) == maxEntries {
				return false
			}
			if heads[i].Version != r.Version {
				skipped++
				return skipped < 64
			}
			skipped = 0
			env, err := s.envelopeOf(r)
			if err != nil {
				lerr = err
				return false
			}
			if !take(heads[i], env) {
				i = len(heads)
				return false
			}
			i++
			return i < len(heads)
		})
		if err = errors.Join(s.checkLog(err), lerr); err != nil {
			return nil, err
		}
	}
	for ; i < len(heads) && (len(out) == 0 || size < maxBytes); i++ {
		env, err := s.ChangeEnvelope(heads[i].Version)
		if errors.Is(err, ErrNotFound) {
			continue // a delivery record without its change: not expected (retention never drops changes)
		}
		if err != nil {
			return nil, err
		}
		if !take(heads[i], env) {
			break
		}
	}
	return out, nil
}

// backlogHeads lists up to max entries of a receiver's lane in (after,
// until], merging the broadcast entries of D/ with those of A/.
func (s *Store) backlogHeads(recv peer.ID, lane uint8, broadcast bool, after, until uint64, max int) ([]Entry, error) {
	var out []Entry
	if broadcast {
		err := s.scan(k(pOwn).u64(after+1), k(pOwn).u64(until+1), false, func(key, v []byte) (bool, error) {
			l, addressed := broadcastOwn(v)
			if l != lane || addressed {
				return true, nil
			}
			ver, err := tailU64(key)
			if err != nil {
				return false, err
			}
			out = append(out, Entry{Version: ver, Kind: pb.Kind(v[1]), Protocol: protocols.ProtocolByCode(v[2])})
			return len(out) < max, nil
		})
		if err != nil {
			return nil, err
		}
	}
	var addressed []Entry
	hi := addressedKey(recv, lane).u64(until + 1)
	if len(out) == max {
		hi = addressedKey(recv, lane).u64(out[len(out)-1].Version) // nothing beyond the broadcast ones is needed
	}
	err := s.scan(addressedKey(recv, lane).u64(after+1), hi, false, func(key, v []byte) (bool, error) {
		ver, err := tailU64(key)
		if err != nil || len(v) < 2 {
			return false, errors.Join(err, errBadOwn)
		}
		addressed = append(addressed, Entry{Version: ver, Kind: pb.Kind(v[0]), Protocol: protocols.ProtocolByCode(v[1])})
		return len(addressed) < max, nil
	})
	if err != nil {
		return nil, err
	}
	if len(addressed) == 0 {
		return out, nil
	}
	out = append(out, addressed...)
	slices.SortFunc(out, func(a, b Entry) int {
		switch {
		case a.Version < b.Version:
			return -1
		case a.Version > b.Version:
			return 1
		}
		return 0
	})
	return out[:min(len(out), max)], nil
}

// BacklogCount counts, up to max, the entries of a receiver's lane after
// `after` on disk, and returns the first of them.
func (s *Store) BacklogCount(recv peer.ID, lane uint8, broadcast bool, after uint64, max int) (int, uint64, error) {
	durable := s.DurableVersion()
	if after >= durable {
		return 0, 0, nil
	}
	heads, err := s.backlogHeads(recv, lane, broadcast, after, durable, max)
	if err != nil || len(heads) == 0 {
		return 0, 0, err
	}
	return len(heads), heads[0].Version, nil
}

// LaneHead is the last entry on disk of a receiver's lane (0: none). For a
// broadcast lane it scans back through the delivery records to the lane's
// last one.
func (s *Store) LaneHead(recv peer.ID, lane uint8, broadcast bool) (uint64, error) {
	var head uint64
	if broadcast {
		err := s.scan([]byte(pOwn), k(pOwn).u64(s.DurableVersion()+1), true, func(key, v []byte) (bool, error) {
			if l, addressed := broadcastOwn(v); l != lane || addressed {
				return true, nil
			}
			var err error
			head, err = tailU64(key)
			return false, err
		})
		if err != nil {
			return 0, err
		}
	}
	prefix := addressedKey(recv, lane)
	err := s.scan(prefix, prefix.u64(s.DurableVersion()+1), true, func(key, _ []byte) (bool, error) {
		v, err := tailU64(key)
		head = max(head, v)
		return false, err
	})
	return head, err
}

// AddressedReceivers lists the peers with entries addressed to them.
func (s *Store) AddressedReceivers() ([]peer.ID, error) {
	var out []peer.ID
	lo := []byte(pAddressed)
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
		n := int(found[len(pAddressed)])
		if len(found) < len(pAddressed)+1+n {
			return out, errShortKey
		}
		id := peer.ID(found[len(pAddressed)+1 : len(pAddressed)+1+n])
		out = append(out, id)
		lo = prefixEnd(k(pAddressed).str(string(id)))
	}
}

// ---- ack floors (sender side) ----

// FloorKey names one receiver's lane.
type FloorKey struct {
	Receiver peer.ID
	Lane     uint8
}

func floorKey(recv peer.ID, lane uint8) key { return k(pFloor).str(string(recv)).u8(lane) }

// SetFloor records that a receiver acknowledged a lane through f.Version.
func (t *Txn) SetFloor(recv peer.ID, lane uint8, f *storepb.Floor) {
	t.set(floorKey(recv, lane), marshal(f))
}

// Floors reads every ack floor.
func (s *Store) Floors() (map[FloorKey]*storepb.Floor, error) {
	out := map[FloorKey]*storepb.Floor{}
	err := s.scan([]byte(pFloor), prefixEnd([]byte(pFloor)), false, func(key, v []byte) (bool, error) {
		rest := key[len(pFloor):]
		if len(rest) < 1 || len(rest) != 1+int(rest[0])+1 {
			return false, errShortKey
		}
		f := &storepb.Floor{}
		if err := unmarshal(v, f); err != nil {
			return false, err
		}
		out[FloorKey{Receiver: peer.ID(rest[1 : 1+rest[0]]), Lane: rest[len(rest)-1]}] = f
		return true, nil
	})
	return out, err
}

// SetRefused records that a receiver refused one of this node's changes for good.
func (t *Txn) SetRefused(recv peer.ID, ver uint64, reason string) {
	t.set(k(pRefused).str(string(recv)).u64(ver), []byte(reason))
}

// Refusals returns the changes a receiver refused, by version.
func (s *Store) Refusals(recv peer.ID) (map[uint64]string, error) {
	out := map[uint64]string{}
	prefix := k(pRefused).str(string(recv))
	err := s.scan(prefix, prefixEnd(prefix), false, func(key, v []byte) (bool, error) {
		ver, err := tailU64(key)
		out[ver] = string(v)
		return true, err
	})
	return out, err
}

// Refusal returns why a receiver refused one of this node's changes for
// good, and whether it did.
func (s *Store) Refusal(recv peer.ID, ver uint64) (string, bool, error) {
	v, err := s.getRaw(k(pRefused).str(string(recv)).u64(ver))
	if errors.Is(err, ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return string(v), true, nil
}

// ---- positions (receiver side) ----

func positionKey(sender peer.ID, lane uint8) key { return k(pPosition).str(string(sender)).u8(lane) }

// Position reads how far this node applied a sender's lane.
func (t *Txn) Position(sender peer.ID, lane uint8) (*storepb.Position, error) {
	v, err := t.get(positionKey(sender, lane))
	if errors.Is(err, ErrNotFound) {
		return &storepb.Position{}, nil
	}
	if err != nil {
		return nil, err
	}
	p := &storepb.Position{}
	return p, unmarshal(v, p)
}

// SetPosition records how far this node applied a sender's lane.
func (t *Txn) SetPosition(sender peer.ID, lane uint8, p *storepb.Position) {
	t.set(positionKey(sender, lane), marshal(p))
}

// Position reads committed position of a sender's lane.
func (s *Store) Position(sender peer.ID, lane uint8) (*storepb.Position, error) {
	v, err := s.getRaw(positionKey(sender, lane))
	if errors.Is(err, ErrNotFound) {
		return &storepb.Position{}, nil
	}
	if err != nil {
		return nil, err
	}
	p := &storepb.Position{}
	return p, unmarshal(v, p)
}

// OwnEntriesFrom calls fn for this node's delivery records from version
// `from` on, oldest first, as far as they are on disk, until fn returns
// false.
func (s *Store) OwnEntriesFrom(from uint64, fn func(OwnEntry) bool) error {
	// The superseded marks are read alongside, in the same version order.
	marks, err := s.db.NewIter(&pebble.IterOptions{LowerBound: k(pSuperseded).u64(from), UpperBound: prefixEnd([]byte(pSuperseded))})
	if err != nil {
		return fmt.Errorf("iterate: %w", err)
	}
	defer marks.Close()
	more := marks.First()
	err = s.scan(k(pOwn).u64(from), k(pOwn).u64(s.DurableVersion()+1), false, func(key, v []byte) (bool, error) {
		ver, err := tailU64(key)
		if err != nil {
			return false, err
		}
		e, err := decodeOwn(ver, v)
		if err != nil {
			return false, fmt.Errorf("delivery record %d: %w", ver, err)
		}
		for more {
			m, err := tailU64(marks.Key())
			if err != nil {
				return false, err
			}
			if m > ver {
				break
			}
			e.Superseded = m == ver
			more = marks.Next()
		}
		return fn(e), nil
	})
	if err == nil {
		err = s.check(marks.Error())
	}
	return err
}

// Supersede marks the own resource change at version as superseded by a
// later one of the same resource: retention may drop its delivery record
// (the latest change of a resource stays, for partners added later).
func (t *Txn) Supersede(version uint64) {
	t.set(k(pSuperseded).u64(version), []byte{})
}

// DropOwnEntry deletes the delivery record of an own change its receivers
// acknowledged (retention), with their refusals of it; the change itself
// stays in the log.
func (t *Txn) DropOwnEntry(e OwnEntry, receivers []peer.ID) {
	t.del(k(pOwn).u64(e.Version))
	t.del(k(pSuperseded).u64(e.Version))
	for _, p := range e.To {
		t.del(addressedKey(p, e.Lane).u64(e.Version))
	}
	for _, p := range receivers {
		t.del(k(pRefused).str(string(p)).u64(e.Version))
	}
}

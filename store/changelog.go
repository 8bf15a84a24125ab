package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store/seglog"
)

// The change log's records (package seglog) and how the store reads them.
//
// Every change this node makes or receives is one record, at its store
// version, in <dir>/changes:
//
//	recOwn       one of this node's own changes, as uvarints: flags |
//	             version minus its tree's first leaf's | leaf index | tree
//	             size | signature length; then the signature (in the tree's
//	             last leaf only) and the body (without the origin and origin
//	             version it starts with, when flags say so: ownRecord)
//	recEnvelope  a change received from another origin: its envelope as the
//	             origin sealed it (body, audit path, root signature)
//	recTree      a change received from another origin with every other
//	             leaf of its tree in the same round: recOwn's layout, the
//	             body whole; the envelope is rebuilt as an own one is
//
// So an own change is written once, without its audit path: a tree's
// signature is stored once, and an envelope is rebuilt from the tree's
// bodies when it is sent (treeCache). Pebble holds, per round, how far the
// log is durable (m/logend) and its active segment (m/logseg); Open cuts
// the log's records after m/logend (a round the completer had not made
// durable: nobody was answered) and refuses a log that ends before it.
const (
	recOwn      byte = 1
	recEnvelope byte = 2
	// recTree: a change received from another origin whose whole tree
	// came in one round: stored as an own change is (recOwn's layout,
	// body whole), the tree's signature once (compactTrees).
	recTree byte = 3

	keyLogEnd     = "m/logend"
	keyLogSegment = "m/logseg"
)

// openLog opens the change log in dir/changes, in line with what Pebble
// recorded of it.
func (s *Store) openLog(dir string, o Options) error {
	end, err := s.metaU64(keyLogEnd)
	if err != nil {
		return err
	}
	seg, err := s.metaU64(keyLogSegment)
	if err != nil {
		return err
	}
	fs := o.Health.FS
	if fs == nil {
		fs = vfs.Default
	}
	lo := seglog.Options{FS: fs, Dir: filepath.Join(dir, LogDir), SegmentBytes: o.SegmentBytes,
		Keep: end, LastSegment: seg, Logger: s.log}
	_, rebuilt, err := s.Repair()
	if err != nil {
		return err
	}
	if rebuilt {
		// A rebuild of Pebble may have dropped the marks: the log keeps
		// every whole record, and the version counter is raised past it.
		lo.KeepAll, lo.LastSegment = true, 0
	}
	l, err := seglog.Open(lo)
	if err != nil {
		if errors.Is(err, seglog.ErrCorrupt) {
			s.log.Error("store corrupt: the change log is damaged; the node cannot serve its changes (restore the data directory from a backup, or start over and take the changes from partners)",
				"dir", filepath.Join(dir, LogDir), "err", err.Error())
			return fmt.Errorf("open store %s: %w: %w", dir, ferry.ErrCorrupt, err)
		}
		return fmt.Errorf("open store %s: %w", dir, err)
	}
	s.clog = l
	s.trees.max = 8
	if rebuilt {
		cur, err := s.Counter(CtrVersion)
		if err != nil {
			return err
		}
		if last := l.Last(); last > cur || end < last {
			b := s.db.NewBatch()
			_ = b.Set(k(keyCtrPrefix).str(CtrVersion), u64Value(max(cur, last)), nil)
			_ = b.Set([]byte(keyLogEnd), u64Value(last), nil)
			_ = b.Set([]byte(keyLogSegment), u64Value(l.Active()), nil)
			if err := b.Commit(pebble.Sync); err != nil {
				return fmt.Errorf("open store %s: %w", dir, err)
			}
		}
	}
	return nil
}

// metaU64 reads an 8-byte value of the meta table (0: absent).
func (s *Store) metaU64(key string) (uint64, error) {
	v, err := s.getRaw([]byte(key))
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	return parseU64(v), err
}

// checkLog turns damage met in the change log into an error wrapping
// ferry.ErrCorrupt, and records it (the node's health is then not OK).
// The damaged record is never served. Other errors pass unchanged.
func (s *Store) checkLog(err error) error {
	if err == nil || !errors.Is(err, seglog.ErrCorrupt) || errors.Is(err, ferry.ErrCorrupt) {
		return err
	}
	s.h.logCorrupt(err)
	return fmt.Errorf("%w: %w", ferry.ErrCorrupt, err)
}

// logCorrupt records damage in the change log: once, as the health reason,
// with an ERROR line. Unlike a damaged Pebble file it marks nothing for a
// rebuild: the log cannot be rebuilt from Pebble.
func (h *health) logCorrupt(err error) {
	h.mu.Lock()
	if h.corruptFiles == nil {
		h.corruptFiles = map[string]bool{}
	}
	seen := h.corruptFiles[err.Error()]
	h.corruptFiles[err.Error()] = true
	h.mu.Unlock()
	if seen {
		return
	}
	reason := fmt.Sprintf("store corrupt: %s; the damaged records are not served (restore the data directory from a backup, or start over and take the changes from partners)", err.Error())
	h.corruptReason.CompareAndSwap(nil, &reason)
	h.log.Error("store corrupt: a record of the change log failed its checksum; it is not served", "err", err.Error())
}

// ownRec is a decoded recOwn record.
type ownRec struct {
	tree       uint64
	leaf, size uint16
	sig, body  []byte
}

// ownStripped flags an own record whose body was stored without its first
// two fields (origin: this node; origin version: the record's version),
// which every own body starts with; they are put back when it is read, so
// the body read is the one signed, byte for byte.
const ownStripped = 1

// ownPrefix is what an own body of this node at version ver starts with.
func ownPrefix(self []byte, ver uint64) []byte {
	b := make([]byte, 0, 2+len(self)+11)
	b = append(b, 0x0a, byte(len(self)))
	b = append(b, self...)
	b = append(b, 0x10)
	return binary.AppendUvarint(b, ver)
}

// ownRecord encodes an own change for the log: flags, the distance back to
// its tree's first leaf, its leaf index, the tree's size, the signature
// (in the tree's last leaf only) and the body, all but the body as varints.
func (s *Store) ownRecord(ver, tree uint64, leaf, size uint32, sig, body []byte) []byte {
	flags := uint64(0)
	if len(s.self) > 0 && len(s.self) < 128 {
		if p := ownPrefix(s.self, ver); bytes.HasPrefix(body, p) {
			flags |= ownStripped
			body = body[len(p):]
		}
	}
	b := make([]byte, 0, 20+len(sig)+len(body))
	b = binary.AppendUvarint(b, flags)
	b = binary.AppendUvarint(b, ver-tree)
	b = binary.AppendUvarint(b, uint64(leaf))
	b = binary.AppendUvarint(b, uint64(size))
	b = binary.AppendUvarint(b, uint64(len(sig)))
	b = append(b, sig...)
	return append(b, body...)
}

var errBadRecord = errors.New("malformed change record")

func (s *Store) parseOwnRecord(ver uint64, d []byte) (ownRec, error) {
	var f [5]uint64
	for i := range f {
		v, n := binary.Uvarint(d)
		if n <= 0 {
			return ownRec{}, errBadRecord
		}
		f[i], d = v, d[n:]
	}
	flags, back, leaf, size, sigLen := f[0], f[1], f[2], f[3], f[4]
	if back > ver || size == 0 || size > protocols.MaxTreeLeaves || leaf >= size || sigLen > uint64(len(d)) {
		return ownRec{}, errBadRecord
	}
	o := ownRec{tree: ver - back, leaf: uint16(leaf), size: uint16(size), sig: d[:sigLen], body: d[sigLen:]}
	if flags&ownStripped != 0 {
		if len(s.self) == 0 {
			return ownRec{}, fmt.Errorf("%w: an own body stored without its origin, and no signing key to name it", errBadRecord)
		}
		p := ownPrefix(s.self, ver)
		o.body = append(p, o.body...)
	}
	return o, nil
}

// recordBody decodes the body of a change record.
func (s *Store) recordBody(r seglog.Record) (*pb.Body, error) {
	var raw []byte
	switch r.Type {
	case recOwn, recTree:
		o, err := s.parseOwnRecord(r.Version, r.Data)
		if err != nil {
			return nil, fmt.Errorf("change %d: %w", r.Version, err)
		}
		raw = o.body
	case recEnvelope:
		env := &pb.Envelope{}
		if err := unmarshal(r.Data, env); err != nil {
			return nil, fmt.Errorf("change %d: %w", r.Version, err)
		}
		raw = env.Body
	default:
		return nil, fmt.Errorf("change %d: %w: type %d", r.Version, errBadRecord, r.Type)
	}
	body := &pb.Body{}
	if err := unmarshal(raw, body); err != nil {
		return nil, fmt.Errorf("change %d: %w", r.Version, err)
	}
	return body, nil
}

// treeCache keeps the envelopes of the trees rebuilt last: a sender reads
// a tree's changes one after another.
type treeCache struct {
	mu    sync.Mutex
	max   int
	order []uint64
	trees map[uint64]map[uint64][]byte // tree -> version -> encoded envelope
}

// envelope returns the encoded envelope of the own change at version ver,
// whose tree starts at version tree.
func (c *treeCache) envelope(s *Store, tree, ver uint64) ([]byte, error) {
	c.mu.Lock()
	if t, ok := c.trees[tree]; ok {
		env, ok := t[ver]
		c.mu.Unlock()
		if !ok {
			return nil, s.checkLog(fmt.Errorf("%w: change %d is not in its tree %d", seglog.ErrCorrupt, ver, tree))
		}
		return env, nil
	}
	c.mu.Unlock()
	t, err := s.buildTree(tree)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.trees == nil {
		c.trees = map[uint64]map[uint64][]byte{}
	}
	if _, ok := c.trees[tree]; !ok {
		c.order = append(c.order, tree)
		if len(c.order) > c.max {
			delete(c.trees, c.order[0])
			c.order = c.order[1:]
		}
	}
	c.trees[tree] = t
	c.mu.Unlock()
	env, ok := t[ver]
	if !ok {
		return nil, s.checkLog(fmt.Errorf("%w: change %d is not in its tree %d", seglog.ErrCorrupt, ver, tree))
	}
	return env, nil
}

// buildTree reads the bodies of the tree that starts at version tree and
// rebuilds their envelopes.
func (s *Store) buildTree(tree uint64) (map[uint64][]byte, error) {
	var bodies [][]byte
	var vers []uint64
	var sig []byte
	var bad error
	err := s.clog.Iter(tree, func(r seglog.Record) bool {
		if r.Type != recOwn && r.Type != recTree {
			return true
		}
		o, err := s.parseOwnRecord(r.Version, r.Data)
		if err != nil {
			bad = fmt.Errorf("%w: change %d: %w", seglog.ErrCorrupt, r.Version, err)
			return false
		}
		if o.tree != tree {
			return true
		}
		if int(o.leaf) != len(bodies) {
			bad = fmt.Errorf("%w: tree %d: leaf %d where %d was due", seglog.ErrCorrupt, tree, o.leaf, len(bodies))
			return false
		}
		bodies = append(bodies, o.body)
		vers = append(vers, r.Version)
		if int(o.leaf) == int(o.size)-1 {
			sig = o.sig
			return false
		}
		return true
	})
	if err := errors.Join(err, bad); err != nil {
		return nil, s.checkLog(err)
	}
	if sig == nil {
		return nil, s.checkLog(fmt.Errorf("%w: tree %d: its last leaf is missing (%d read)", seglog.ErrCorrupt, tree, len(bodies)))
	}
	envs, err := protocols.TreeEnvelopes(bodies, nil, sig)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64][]byte, len(envs))
	for i, e := range envs {
		out[vers[i]] = protocols.MarshalEnvelope(e)
	}
	return out, nil
}

// reindexOrigins puts back the origin index entries a rebuild of Pebble
// dropped (repair.go): every change is still in the log, and its record
// says its origin, origin version, kind and fingerprint. Entries present
// are left as they are.
func (s *Store) reindexOrigins() (int, error) {
	b := s.db.NewBatch()
	defer b.Close()
	added := 0
	var bad error
	err := s.clog.Iter(0, func(r seglog.Record) bool {
		var raw []byte
		switch r.Type {
		case recEnvelope:
			env := &pb.Envelope{}
			if err := unmarshal(r.Data, env); err != nil {
				bad = err
				return false
			}
			raw = env.Body
		case recTree:
			o, err := s.parseOwnRecord(r.Version, r.Data)
			if err != nil {
				bad = err
				return false
			}
			raw = o.body
		default:
			return true // an own change's origin entry is its record (ownOrigin)
		}
		body := &pb.Body{}
		if err := unmarshal(raw, body); err != nil {
			bad = err
			return false
		}
		hash := BodyHash(raw)
		key := originKey(body.Origin, body.OriginVersion)
		if _, err := s.getRaw(key); err == nil {
			return true
		} else if !errors.Is(err, ErrNotFound) {
			bad = err
			return false
		}
		_ = b.Set(key, originValue(r.Version, body.Kind, hash, time.Unix(0, body.CreatedAtUnixNano)), nil)
		added++
		return true
	})
	if err := errors.Join(s.checkLog(err), bad); err != nil {
		return 0, fmt.Errorf("re-index the change log: %w", err)
	}
	if added == 0 {
		return 0, nil
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return 0, fmt.Errorf("re-index the change log: %w", err)
	}
	return added, nil
}

// envelopeShape reads what compactTrees needs of an encoded envelope
// without decoding it: its body, leaf index, tree size and signature.
func envelopeShape(raw []byte) (body []byte, leaf, size uint32, sig []byte, ok bool) {
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return nil, 0, 0, nil, false
		}
		raw = raw[n:]
		switch {
		case typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(raw)
			if n < 0 {
				return nil, 0, 0, nil, false
			}
			switch num {
			case 1:
				body = v
			case 5:
				sig = v
			}
			raw = raw[n:]
		case typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(raw)
			if n < 0 {
				return nil, 0, 0, nil, false
			}
			switch num {
			case 2:
				leaf = uint32(v)
			case 3:
				size = uint32(v)
			}
			raw = raw[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, raw)
			if n < 0 {
				return nil, 0, 0, nil, false
			}
			raw = raw[n:]
		}
	}
	return body, leaf, size, sig, len(body) > 0 && size > 0 && leaf < size && len(sig) > 0
}

// compactTrees rewrites the received envelopes of a round (recs, in version
// order) whose whole tree is among them, in leaf order, as recTree records:
// the body and its place in the tree, the signature once. The envelopes
// read back are the ones received, byte for byte (the tree is the same).
// Trees that came in part stay as they came.
func (s *Store) compactTrees(recs []seglog.Record) {
	type leafAt struct {
		i    int // in recs
		leaf uint32
		body []byte
	}
	type group struct {
		size   uint32
		sig    []byte
		leaves []leafAt
	}
	var groups map[string]*group
	for i, r := range recs {
		if r.Type != recEnvelope {
			continue
		}
		body, leaf, size, sig, ok := envelopeShape(r.Data)
		if !ok || size < 2 {
			continue
		}
		if groups == nil {
			groups = map[string]*group{}
		}
		g := groups[string(sig)]
		if g == nil {
			g = &group{size: size, sig: sig}
			groups[string(sig)] = g
		}
		if g.size != size {
			g.size = 0 // not one tree: left as it came
		}
		g.leaves = append(g.leaves, leafAt{i: i, leaf: leaf, body: body})
	}
	for _, g := range groups {
		if g.size == 0 || len(g.leaves) != int(g.size) {
			continue
		}
		whole := true
		for j, l := range g.leaves { // in version order: leaves must be 0, 1, ... in it
			if l.leaf != uint32(j) {
				whole = false
				break
			}
		}
		if !whole {
			continue
		}
		tree := recs[g.leaves[0].i].Version
		for j, l := range g.leaves {
			var sig []byte
			if j == len(g.leaves)-1 {
				sig = g.sig
			}
			r := &recs[l.i]
			b := make([]byte, 0, 16+len(sig)+len(l.body))
			b = binary.AppendUvarint(b, 0) // flags: the body is whole
			b = binary.AppendUvarint(b, r.Version-tree)
			b = binary.AppendUvarint(b, uint64(j))
			b = binary.AppendUvarint(b, uint64(g.size))
			b = binary.AppendUvarint(b, uint64(len(sig)))
			b = append(b, sig...)
			r.Type, r.Data = recTree, append(b, l.body...)
		}
	}
}

package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"

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
//	             version it starts with, when flags say so: appendOwnHead)
//	recEnvelope  a change received from another origin: its envelope as the
//	             origin sealed it (body, audit path, root signature)
//	recTree      a change received from another origin with every other
//	             leaf of its tree in the same round: recOwn's layout, the
//	             body whole; the envelope is rebuilt as an own one is
//	recPart      a change received from another origin with at least one
//	             other leaf of its tree (or all of them) in the same round,
//	             the group's leaves increasing in version order: as uvarints,
//	             version minus the group's first record's | leaf index << 1
//	             | stripped | count; in the group's first record, when
//	             stripped, the origin's length and the origin; count is 0
//	             but in the group's last record (in version order), where it
//	             is the number of records of the group, and is followed by
//	             the tree size | signature length, the signature | number of
//	             proof hashes, the hashes (32 bytes each: protocols.PartProof
//	             of the group's leaves; none for a whole tree); then the
//	             body, without its first field (the origin) when stripped.
//	             The envelopes are rebuilt from the group's bodies, leaf
//	             indices and proof (protocols.PartRoot), byte for byte the
//	             ones received (compactTrees takes only envelopes encoded as
//	             AppendEnvelope writes them)
//
// So an own change is written once, without its audit path: a tree's
// signature is stored once, and an envelope is rebuilt from the tree's
// bodies when it is sent (treeCache). A received tree, whole or in part,
// is written so too: its bodies with a few bytes each, the origin, the
// signature and proof hashes once per group, where an envelope kept as it
// came adds ~410 bytes of audit path and signature to its body (a
// 1024-leaf tree). Part of 500 leaves of 1024 with 256-byte bodies: 261
// bytes of log a change for a random 500, 238 for a range, against 687 as
// envelopes (TestReceivedPartBytes). Pebble holds, per round, how far the
// log is durable (m/logend) and its active segment (m/logseg); Open cuts
// the log's records after m/logend (a round the completer had not made
// durable: nobody was answered) and refuses a log that ends before it.
const (
	recOwn      byte = 1
	recEnvelope byte = 2
	// recTree: a change received from another origin whose whole tree
	// came in one round: stored as an own change is (recOwn's layout,
	// body whole), the tree's signature once. Written by the release
	// before recPart, which now stores whole trees too; still read.
	recTree byte = 3
	// recPart: a change received from another origin, in a group of
	// leaves of one tree (not all of it) that came in one round: the body
	// and leaf index, the group's signature and proof hashes once
	// (compactTrees, buildPart).
	recPart byte = 4
	// recPending: in a round only, never written: a change logged as a
	// leaf of the part it came in (AppendReceivedPart), until compactTrees
	// makes it a recPart or recEnvelope record.
	recPending byte = 0xff

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
	rp := &replayer{s: s, end: end}
	lo := seglog.Options{FS: fs, Dir: filepath.Join(dir, LogDir), SegmentBytes: o.SegmentBytes,
		Keep: end, LastSegment: seg, Logger: s.log, Commit: rp.commit}
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
	if rp.err == nil && rp.replayed > 0 {
		rp.err = s.db.LogData(nil, pebble.Sync)
		s.log.Info("store: rounds replayed from the change log into Pebble", "rounds", rp.replayed, "through", rp.end)
	}
	if rp.err != nil {
		_ = l.Close()
		return fmt.Errorf("open store %s: %w", dir, rp.err)
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

// A round of a few changes (at most carryChanges, its Pebble batch at most
// carryBytes) is carried whole by the change log: its batch follows its
// changes as a commit record (seglog.TypeCommit: the log's last version
// before the round, then the batch's bytes), so the log's one fdatasync
// makes the round durable and Pebble's WAL is not synced for it. Light
// load is made of such rounds, each of which would otherwise pay a second
// sync whole. Pebble's WAL is synced once the completer is idle and
// carryBound has passed since its last sync (syncPebble), which bounds what
// Open replays: the commit records past Pebble's durable mark (m/logend),
// in log order, each only if the one before it in the chain is in Pebble
// (its first 8 bytes name Pebble's mark), so that a round is never applied
// on top of a state that lacks the round before it. Larger rounds (full
// rate) keep the two syncs: their batches would add more bytes to the log
// than the second sync costs them per change.
const (
	carryChanges = 16
	carryBytes   = 32 << 10
)

// carryBound: Pebble's WAL is synced once at least this long after the
// first carried round applied to it unsynced (a variable for tests).
var carryBound = time.Second

// carryRound tells whether a round of n logged changes with batch b is
// carried by the log. A round that starts a segment is not: Pebble records
// the new segment (m/logseg) durably with it, so that a segment missing
// after a crash is still found missing.
func (s *Store) carryRound(n int, b *pebble.Batch) bool {
	return n <= carryChanges && b.Len() <= carryBytes && !s.clog.Full()
}

// commitRecord is the data of a round's commit record: prev, the log's last
// version before the round, then its batch.
func commitRecord(prev uint64, b *pebble.Batch) []byte {
	repr := b.Repr()
	d := make([]byte, 8, 8+len(repr))
	binary.BigEndian.PutUint64(d, prev)
	return append(d, repr...)
}

// syncPebble syncs Pebble's WAL when carried rounds were applied to it
// unsynced, carryBound ago at least (or now, with force: at the end).
func (s *Store) syncPebble(force bool) {
	if !s.unsynced || (!force && time.Since(s.pebbleSynced) < carryBound) {
		return
	}
	if err := s.db.LogData(nil, pebble.Sync); err != nil {
		// Nothing is lost (the log holds the rounds): Open replays them.
		s.log.Warn("store: sync of Pebble's WAL failed; the change log holds the rounds since the last one", "err", err.Error())
		return
	}
	s.unsynced, s.pebbleSynced = false, time.Now()
}

// replayer offers Open's log the rounds to replay into Pebble: each commit
// record past Pebble's durable mark whose chain holds (commitRecord). Its
// error is one Pebble returned while applying one; the log is then kept as
// it is and Open fails.
type replayer struct {
	s        *Store
	end      uint64 // Pebble's mark: the last version of the last round it holds
	replayed int
	err      error
}

func (p *replayer) commit(r seglog.Record, segment uint64) bool {
	if p.err != nil {
		return true // keep the rest as it is: Open fails
	}
	if len(r.Data) < 8+12 || binary.BigEndian.Uint64(r.Data) != p.end {
		return false // a round before it is not in Pebble: cut from there
	}
	b := p.s.db.NewBatch()
	if err := b.SetRepr(slices.Clone(r.Data[8:])); err != nil {
		p.err = fmt.Errorf("replay the round of change %d from the change log: %w", r.Version, err)
		return true
	}
	_ = b.Set([]byte(keyLogSegment), u64Value(segment), nil)
	if err := p.s.db.Apply(b, pebble.NoSync); err != nil {
		p.err = fmt.Errorf("replay the round of change %d from the change log: %w", r.Version, err)
		return true
	}
	p.end = r.Version
	p.replayed++
	return true
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
	if h.corruptReason.CompareAndSwap(nil, &reason) {
		h.poke()
	}
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
	return appendOwnPrefix(make([]byte, 0, 2+len(self)+binary.MaxVarintLen64), self, ver)
}

// appendOwnPrefix appends ownPrefix(self, ver) to b.
func appendOwnPrefix(b, self []byte, ver uint64) []byte {
	b = append(b, 0x0a, byte(len(self)))
	b = append(b, self...)
	b = append(b, 0x10)
	return binary.AppendUvarint(b, ver)
}

// appendOwnHead appends to b an own change's log record but its body:
// flags, the distance back to its tree's first leaf, its leaf index, the
// tree's size, the signature's length (all varints) and the signature (in
// the tree's last leaf only); it returns that with the body as the record
// stores it (its prefix cut when it starts with it). The record is the two
// one after the other, which the log writes without joining them
// (seglog.Record.Head).
func (s *Store) appendOwnHead(b []byte, ver, tree uint64, leaf, size uint32, sig, body []byte) ([]byte, []byte) {
	flags := uint64(0)
	if n := ownPrefixLen(s.self, ver, body); n > 0 {
		flags |= ownStripped
		body = body[n:]
	}
	b = binary.AppendUvarint(b, flags)
	b = binary.AppendUvarint(b, ver-tree)
	b = binary.AppendUvarint(b, uint64(leaf))
	b = binary.AppendUvarint(b, uint64(size))
	b = binary.AppendUvarint(b, uint64(len(sig)))
	return append(b, sig...), body
}

// ownPrefixLen is the length of ownPrefix(self, ver) if body starts with
// it, and 0 if not (or self cannot be cut: empty or 128 bytes or more).
func ownPrefixLen(self []byte, ver uint64, body []byte) int {
	if len(self) == 0 || len(self) >= 128 {
		return 0
	}
	var buf [2 + 127 + 1 + binary.MaxVarintLen64]byte // on the stack: no slice a change
	if p := appendOwnPrefix(buf[:0], self, ver); bytes.HasPrefix(body, p) {
		return len(p)
	}
	return 0
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
			return nil, s.checkLog(fmt.Errorf("%w: change %d: %w", seglog.ErrCorrupt, r.Version, err))
		}
		raw = o.body
	case recPart:
		p, err := parsePartRecord(r.Version, r.Data)
		if err != nil {
			return nil, s.checkLog(fmt.Errorf("%w: change %d: %w", seglog.ErrCorrupt, r.Version, err))
		}
		if raw, err = s.partBody(r.Version, p); err != nil {
			return nil, err
		}
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

// treeCache keeps the envelopes of the trees (and received parts of trees)
// rebuilt last: a sender reads a tree's changes one after another. A tree
// or part is named by the version of its first record (each version is
// one record: an own tree, a received whole tree and a part never share
// it).
type treeCache struct {
	mu    sync.Mutex
	max   int
	order []uint64
	trees map[uint64]map[uint64][]byte // tree -> version -> encoded envelope
}

// envelope returns the encoded envelope of the change at version ver,
// whose tree (or part: recPart) starts at version tree, rebuilding it with
// build (Store.buildTree or Store.buildPart) when it is not cached.
func (c *treeCache) envelope(s *Store, tree, ver uint64, build func(uint64) (map[uint64][]byte, error)) ([]byte, error) {
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
	t, err := build(tree)
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

// partRec is a decoded recPart record.
type partRec struct {
	first       uint64 // the version of its group's first record
	leaf, count uint32 // count: 0 but in the group's last record
	stripped    bool   // the body lacks its origin field
	origin      []byte // the group's first record only, when stripped
	size        uint32 // the group's last record only, as sig and proof
	sig         []byte
	proof       [][]byte
	body        []byte
}

// appendPartHead appends to b a recPart record but its body (the layout
// is at the top of this file): origin is given (stripped) in the group's
// first record only, sig and proof in its last, whose count is the
// group's; count is 0 for the others. The body follows it in the record,
// which the log writes without joining the two (seglog.Record.Head).
func appendPartHead(b []byte, back uint64, leaf uint32, stripped bool, origin []byte, count, size uint32, sig []byte, proof [][]byte) []byte {
	b = binary.AppendUvarint(b, back)
	lf := uint64(leaf) << 1
	if stripped {
		lf |= 1
	}
	b = binary.AppendUvarint(b, lf)
	b = binary.AppendUvarint(b, uint64(count))
	if back == 0 && stripped {
		b = binary.AppendUvarint(b, uint64(len(origin)))
		b = append(b, origin...)
	}
	if count > 0 {
		b = binary.AppendUvarint(b, uint64(size))
		b = binary.AppendUvarint(b, uint64(len(sig)))
		b = append(b, sig...)
		b = binary.AppendUvarint(b, uint64(len(proof)))
		for _, h := range proof {
			b = append(b, h...)
		}
	}
	return b
}

// parsePartRecord decodes the recPart record at version ver (slices of d).
func parsePartRecord(ver uint64, d []byte) (partRec, error) {
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(d)
		if n <= 0 {
			return 0, false
		}
		d = d[n:]
		return v, true
	}
	back, ok1 := next()
	lf, ok2 := next()
	count, ok3 := next()
	leaf := lf >> 1
	if !ok1 || !ok2 || !ok3 || back > ver || leaf >= protocols.MaxTreeLeaves || count > protocols.MaxTreeLeaves {
		return partRec{}, errBadRecord
	}
	p := partRec{first: ver - back, leaf: uint32(leaf), count: uint32(count), stripped: lf&1 == 1}
	if back == 0 && p.stripped {
		n, ok := next()
		if !ok || n == 0 || n > 127 || n > uint64(len(d)) {
			return partRec{}, errBadRecord
		}
		p.origin, d = d[:n:n], d[n:]
	}
	if count > 0 {
		size, ok1 := next()
		sigLen, ok2 := next()
		if !ok1 || !ok2 || size == 0 || size > protocols.MaxTreeLeaves || leaf >= size || count > size || sigLen == 0 || sigLen > uint64(len(d)) {
			return partRec{}, errBadRecord
		}
		p.size, p.sig, d = uint32(size), d[:sigLen], d[sigLen:]
		hashes, ok := next()
		if !ok || hashes > uint64(len(d)/sha256.Size) {
			return partRec{}, errBadRecord
		}
		p.proof = make([][]byte, hashes)
		for i := range p.proof {
			p.proof[i], d = d[:sha256.Size:sha256.Size], d[sha256.Size:]
		}
	}
	if len(d) == 0 {
		return partRec{}, errBadRecord
	}
	p.body = d
	return p, nil
}

// originField is a body's first field when it names origin (what a
// stripped part record's body lacks).
func originField(origin []byte) []byte {
	return append([]byte{0x0a, byte(len(origin))}, origin...)
}

// partBody is the body of a part record as it was signed: the origin
// field put back when it was stripped (the group's first record has it).
func (s *Store) partBody(ver uint64, p partRec) ([]byte, error) {
	if !p.stripped {
		return p.body, nil
	}
	origin := p.origin
	if ver != p.first {
		var err error
		if origin, err = s.partOrigin(p.first); err != nil {
			return nil, err
		}
	}
	return append(originField(origin), p.body...), nil
}

// partOrigin reads the origin a part's first record (at version first)
// holds; the last few are cached.
func (s *Store) partOrigin(first uint64) ([]byte, error) {
	s.origins.mu.Lock()
	o, ok := s.origins.m[first]
	s.origins.mu.Unlock()
	if ok {
		return o, nil
	}
	var bad error
	found := false
	err := s.clog.Iter(first, func(r seglog.Record) bool {
		if r.Version != first || r.Type != recPart {
			bad = fmt.Errorf("%w: part %d: its first record is missing", seglog.ErrCorrupt, first)
			return false
		}
		p, err := parsePartRecord(r.Version, r.Data)
		if err != nil || p.first != first || !p.stripped {
			bad = fmt.Errorf("%w: part %d: its first record does not name the origin", seglog.ErrCorrupt, first)
			return false
		}
		o, found = bytes.Clone(p.origin), true
		return false
	})
	if err := errors.Join(err, bad); err != nil || !found {
		if err == nil {
			err = fmt.Errorf("%w: part %d: its first record is missing", seglog.ErrCorrupt, first)
		}
		return nil, s.checkLog(err)
	}
	s.origins.mu.Lock()
	if s.origins.m == nil || len(s.origins.m) >= 64 {
		s.origins.m = map[uint64][]byte{}
	}
	s.origins.m[first] = o
	s.origins.mu.Unlock()
	return o, nil
}

// buildPart reads the records of the received part that starts at version
// first (recPart: records of other groups may come between them) and
// rebuilds their envelopes, as they were received.
func (s *Store) buildPart(first uint64) (map[uint64][]byte, error) {
	var idx []uint32
	var bodies [][]byte
	var vers []uint64
	var last *partRec
	var bad error
	var origin []byte
	err := s.clog.Iter(first, func(r seglog.Record) bool {
		if r.Type != recPart {
			return true
		}
		p, err := parsePartRecord(r.Version, r.Data)
		if err != nil {
			bad = fmt.Errorf("%w: change %d: %w", seglog.ErrCorrupt, r.Version, err)
			return false
		}
		if p.first != first {
			return true
		}
		switch {
		case len(idx) == 0 && r.Version != first:
			bad = fmt.Errorf("%w: part %d: its first record is missing", seglog.ErrCorrupt, first)
		case len(idx) > 0 && p.leaf <= idx[len(idx)-1]:
			bad = fmt.Errorf("%w: part %d: leaf %d after leaf %d", seglog.ErrCorrupt, first, p.leaf, idx[len(idx)-1])
		case len(idx) == protocols.MaxTreeLeaves:
			bad = fmt.Errorf("%w: part %d: more than %d leaves", seglog.ErrCorrupt, first, protocols.MaxTreeLeaves)
		}
		if bad != nil {
			return false
		}
		if r.Version == first {
			origin = p.origin
		}
		body := p.body
		if p.stripped {
			if origin == nil {
				bad = fmt.Errorf("%w: part %d: its first record does not name the origin", seglog.ErrCorrupt, first)
				return false
			}
			body = append(originField(origin), body...)
		}
		idx = append(idx, p.leaf)
		bodies = append(bodies, body)
		vers = append(vers, r.Version)
		if p.count > 0 {
			last = &p
			return false
		}
		return true
	})
	if err := errors.Join(err, bad); err != nil {
		return nil, s.checkLog(err)
	}
	if last == nil {
		return nil, s.checkLog(fmt.Errorf("%w: part %d: its last record is missing (%d read)", seglog.ErrCorrupt, first, len(idx)))
	}
	if int(last.count) != len(idx) {
		return nil, s.checkLog(fmt.Errorf("%w: part %d: %d records, its last says %d", seglog.ErrCorrupt, first, len(idx), last.count))
	}
	leaves := make([][32]byte, len(bodies))
	for i, b := range bodies {
		leaves[i] = protocols.LeafHash(b)
	}
	_, paths, err := protocols.PartRoot(last.size, idx, leaves, last.proof, true)
	if err != nil {
		return nil, s.checkLog(fmt.Errorf("%w: part %d: %w", seglog.ErrCorrupt, first, err))
	}
	out := make(map[uint64][]byte, len(idx))
	for i, v := range vers {
		out[v] = protocols.MarshalEnvelope(&pb.Envelope{Body: bodies[i], LeafIndex: idx[i], TreeSize: last.size,
			Path: paths[i], RootSignature: last.sig})
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
		case recPart:
			p, err := parsePartRecord(r.Version, r.Data)
			if err != nil {
				bad = err
				return false
			}
			if raw, err = s.partBody(r.Version, p); err != nil {
				bad = err
				return false
			}
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

// compactTrees rewrites the received envelopes of a round (recs, in version
// order) that come in groups of one tree: each group of at least two
// envelopes under one signature and tree size, with increasing leaf
// indices in version order, is stored as recPart records: its bodies (the
// origin once, when every body starts with it) and their places in the
// tree, the signature and the part's proof hashes once (none for a whole
// tree). Only envelopes encoded as protocols.AppendEnvelope writes them are
// taken (so a read rebuilds them byte for byte: their audit paths are the
// tree's, which the proof gives back); a group whose paths do not fit one
// tree stays as it came, as does a lone envelope of its tree. The callers
// verified every envelope. A change logged as a leaf of a received part
// (AppendReceivedPart: recPending) joins the group of its part: when the
// group holds every leaf of the part, the part's own proof is stored;
// otherwise, or when it cannot be kept as a part, the change is encoded as
// its self-contained envelope (PartLeaf.Envelope).
func (s *Store) compactTrees(recs []seglog.Record, parts map[uint64]PartLeaf) {
	type group struct {
		size   uint32
		sig    []byte
		at     []int // in recs
		shapes []protocols.EnvelopeShape
		part   *protocols.Part // the received part its changes came in (nil: envelopes)
	}
	var groups []*group
	var open map[string]*group // the group that takes the next leaves of a (tree size, signature)
	var ofPart map[*protocols.Part]*group
	for i, r := range recs {
		if r.Type == recPending {
			pl := parts[r.Version]
			if pl.Part.Size < 2 || len(pl.Part.Index) < 2 {
				continue // encoded as its envelope below
			}
			g := ofPart[pl.Part]
			if g == nil {
				if ofPart == nil {
					ofPart = map[*protocols.Part]*group{}
				}
				n := len(pl.Part.Index) // the most of it the round can hold
				g = &group{size: pl.Part.Size, sig: pl.Part.Sig, part: pl.Part, at: make([]int, 0, n), shapes: make([]protocols.EnvelopeShape, 0, n)}
				ofPart[pl.Part] = g
				groups = append(groups, g)
			}
			g.at = append(g.at, i)
			g.shapes = append(g.shapes, protocols.EnvelopeShape{Body: pl.Part.Bodies[pl.I], Leaf: pl.Part.Index[pl.I],
				Size: pl.Part.Size, Sig: pl.Part.Sig, Canonical: true})
			continue
		}
		if r.Type != recEnvelope {
			continue
		}
		e, ok := protocols.ParseEnvelope(r.Data, false) // paths are read when a part's proof needs them
		if !ok || !e.Canonical || e.Size < 2 || e.Size > protocols.MaxTreeLeaves || e.Leaf >= e.Size || len(e.Sig) == 0 || e.Tree != 0 {
			continue
		}
		if open == nil {
			open = map[string]*group{}
		}
		key := string(binary.AppendUvarint(nil, uint64(e.Size))) + string(e.Sig)
		g := open[key]
		if g == nil || e.Leaf <= g.shapes[len(g.shapes)-1].Leaf {
			g = &group{size: e.Size, sig: e.Sig}
			open[key] = g
			groups = append(groups, g)
		}
		g.at = append(g.at, i)
		g.shapes = append(g.shapes, e)
	}
	// envelope makes a pending change its envelope's record.
	envelope := func(r *seglog.Record) {
		if r.Type == recPending {
			r.Type, r.Data = recEnvelope, parts[r.Version].Envelope()
		}
	}
	defer func() {
		for i := range recs {
			envelope(&recs[i])
		}
	}()
	for _, g := range groups {
		if len(g.at) < 2 {
			continue
		}
		idx := make([]uint32, len(g.at))
		for j, e := range g.shapes {
			idx[j] = e.Leaf
		}
		var proof [][]byte
		switch {
		case len(g.at) == int(g.size): // the whole tree: no proof
		case g.part != nil && slices.Equal(idx, g.part.Index):
			proof = g.part.Proof // the part as it came
		default:
			var err error
			proof, err = protocols.PartProofOf(g.size, idx, func(j int) [][]byte {
				r := &recs[g.at[j]]
				envelope(r)
				e, _ := protocols.ParseEnvelope(r.Data, true)
				return e.Path
			})
			if err != nil {
				continue
			}
		}
		// The origin is stored once when every body starts with it.
		var origin []byte
		if b := g.shapes[0].Body; len(b) > 2 && b[0] == 0x0a && b[1] > 0 && b[1] < 128 && len(b) > 2+int(b[1]) {
			origin = b[2 : 2+int(b[1])]
			prefix := b[:2+len(origin)]
			for _, e := range g.shapes[1:] {
				if !bytes.HasPrefix(e.Body, prefix) || len(e.Body) == len(prefix) {
					origin = nil
					break
				}
			}
		}
		stripped := origin != nil
		first := recs[g.at[0]].Version
		// The group's headers share one buffer; each body is written
		// from where it is (seglog.Record.Head).
		heads := make([]byte, 0, 8*len(g.at)+len(origin)+16+len(g.sig)+len(proof)*sha256.Size)
		for j, e := range g.shapes {
			r := &recs[g.at[j]]
			body := e.Body
			if stripped {
				body = body[2+len(origin):]
			}
			var o []byte
			if j == 0 {
				o = origin
			}
			at := len(heads)
			if j == len(g.at)-1 {
				heads = appendPartHead(heads, r.Version-first, e.Leaf, stripped, o, uint32(len(g.at)), g.size, g.sig, proof)
			} else {
				heads = appendPartHead(heads, r.Version-first, e.Leaf, stripped, o, 0, 0, nil, nil)
			}
			r.Type, r.Head, r.Data = recPart, heads[at:len(heads):len(heads)], body
		}
	}
}

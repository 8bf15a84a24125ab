// Package store is Ferry's durable ledger on Pebble: resources, the change
// log with store versions (it is the outbox), the delivery records of own
// changes with each receiver's ack floor and refusals (acknowledgement rows
// are derived from them), the positions of received lanes, review requests,
// decisions, shared tables and the peer book.
//
// The change log itself is not in Pebble: every change is one record of an
// append-only segment file (package seglog, log.go), written once and never
// rewritten; Pebble holds the tables and the indexes that point into it.
//
// One writer goroutine owns every commit. Callers hand it transactions
// (Update, Submit); it takes everything queued, runs the transactions one
// after another, seals the envelopes they created with one signature per
// tree, appends the round's changes to the log with one write, and hands
// the round on. The completer makes the round durable in order: one
// fdatasync of the log, then the round's Pebble batch (which records how far
// the log is durable) with one fsync; only then does it answer each caller
// and run its commit hooks, in submission order (the double queue of source
// 004). A round of a few changes carries its batch in the log too (a commit
// record after its changes, changelog.go): the log's fdatasync makes it
// durable whole, its batch goes to Pebble unsynced, and Open replays such
// rounds past Pebble's mark. While a round waits, the writer's next rounds
// read its writes from memory (Txn.get). So a crash leaves Pebble at a round
// whose log records are all on disk (or replayed from them); records after
// it were never answered, and Open cuts them. Reads go straight to Pebble
// and the log.
//
// The store knows nothing of the network; it must not call out to services
// except through the commit hooks that callers register.
package store

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/bloom"
	"github.com/cockroachdb/pebble/vfs"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/internal/promreg"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store/seglog"
)

// SchemaVersion is the on-disk format this build writes. Schema 3 keeps
// the change log in segment files (<dir>/changes); the changes a schema-2
// store holds stay in Pebble (c/) and are read from there. Schema 4 adds
// commit records to the log (a round's Pebble batch, changelog.go), which
// a schema-3 build would take for damage: it refuses the directory instead.
const SchemaVersion = 4

// Defaults of the commit pipeline.
const (
	DefaultQueue    = 8192
	DefaultMaxBatch = 4096
)

var (
	// ErrClosed is returned for work handed to a closed store.
	ErrClosed = errors.New("store closed")
	// ErrNotFound is returned by lookups of absent rows.
	ErrNotFound = errors.New("not found")
	// ErrNewerSchema is returned when the data directory was written by a newer Ferry.
	ErrNewerSchema = errors.New("store written by a newer schema")
	// ErrNoSigner is returned when a transaction seals without a signing key.
	ErrNoSigner = errors.New("store has no signing key")
)

// Migration upgrades the store from schema version From to From+1.
type Migration struct {
	From  uint64
	Apply func(db *pebble.DB, b *pebble.Batch) error
}

// Options configure Open.
type Options struct {
	// Signer seals the envelopes transactions create; nil refuses Seal.
	Signer crypto.PrivKey
	// Logger; nil uses slog.Default.
	Logger *slog.Logger
	// Registerer receives the store's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Queue is how many operations may wait for the writer; default DefaultQueue.
	Queue int
	// MaxBatch is the most operations one commit takes; default DefaultMaxBatch.
	MaxBatch int
	// Migrations replaces the built-in migration list (tests).
	Migrations []Migration
	// Now is the clock; nil uses time.Now.
	Now func() time.Time
	// CacheBytes sizes Pebble's block cache; default DefaultCacheBytes.
	CacheBytes int64
	// InMemory keeps the whole store in memory (unit tests of the layers
	// above): dir is then only a name, and nothing survives Close.
	InMemory bool
	// Health: the free-space reserve, the stall bound, the fatal hook (health.go).
	Health HealthOptions
	// IdempotencyWindow is how long idempotency keys are kept (idem.go);
	// default DefaultIdempotencyWindow.
	IdempotencyWindow time.Duration
	// SegmentBytes is the size at which the change log starts a new
	// segment; default seglog.DefaultSegmentBytes.
	SegmentBytes int64
}

// LogDir is the change log's directory inside a store's directory.
const LogDir = "changes"

// levels tunes the LSM for what Ferry writes there: tables and indexes
// under increasing keys, whose peer ids and prefixes repeat (Snappy takes a
// 256-byte change's Pebble share from about 64-87 bytes to 22-33; the
// changes themselves, signatures and bodies, are in the change log).
// Bloom filters answer the frequent "is this change new?" reads without
// reading blocks.
func levels() []pebble.LevelOptions {
	ls := make([]pebble.LevelOptions, 7)
	for i := range ls {
		ls[i] = pebble.LevelOptions{FilterPolicy: bloom.FilterPolicy(10), BlockSize: 32 << 10,
			Compression: pebble.SnappyCompression, TargetFileSize: 16 << 20 << min(i, 3)}
	}
	return ls
}

// memTableSize is Pebble's memtable size: a flush writes up to this much.
const memTableSize = 16 << 20

// DefaultCacheBytes is the block cache a store gets unless told otherwise.
const DefaultCacheBytes = 64 << 20

// Store is an open ledger.
type Store struct {
	// ctrVersionKey and ctrKeys: the counters' keys, made once
	// (counterKey); the writer's.
	ctrVersionKey key
	ctrKeys       map[string]key

	db      *pebble.DB
	clog    *seglog.Log // the change log (changelog.go)
	self    []byte      // this node's peer id (binary), from Options.Signer
	trees   treeCache   // envelopes rebuilt from the log, by tree (log.go)
	origins struct {    // the origin of a stripped received part, by its first version (partOrigin)
		mu sync.Mutex
		m  map[uint64][]byte
	}
	opts  Options
	log   *slog.Logger
	epoch uint64
	now   func() time.Time
	ops   chan *op
	done  chan *round
	// slot is held by the round the writer prepares and the one waiting
	// for the completer: at most one round waits (writer).
	slot   chan struct{}
	mu     sync.RWMutex // with closed: no send on ops once Close closed it
	closed bool
	failed atomic.Pointer[error] // set when a write or an fsync fails; every later commit fails
	h      *health               // free space, stalls, Pebble's failures (health.go)
	// hot caches small keys every transaction reads (counters, positions):
	// owned by the writer, updated after each round is prepared.
	hot map[string][]byte
	// pending are the rounds the writer prepared whose batches the completer
	// has not yet applied to Pebble (oldest first; writer-owned): their
	// writes are read from their views. applied is the last round applied.
	pending []*round
	rounds  uint64 // the writer's round counter
	// txn is the writer's transaction, made anew in place for each
	// operation: a transaction lives no longer than its round (its hooks,
	// writes and records are handed on before the next is made).
	txn     Txn
	applied atomic.Uint64
	g       lifecycle.Group // the writer, the completer and the flushes that kick compactions
	m       metrics
	// durableVersion is the version counter as of the last fsynced round.
	// Pebble makes a round visible to readers before its fsync ends; readers
	// that hand data to other nodes or apps (backlogs, changes, sync) stop
	// at it so nothing leaves before it is on disk.
	durableVersion atomic.Uint64
	// followers hear of each own entry once its commit is on disk (Follow).
	followers atomic.Pointer[[]func(OwnEntry)]
	followMu  sync.Mutex
	// durableWatchers hear of each move of the durable mark (WatchDurable).
	durableWatchers atomic.Pointer[[]func(uint64)]
	// unsynced: the completer applied carried rounds to Pebble without
	// syncing its WAL since pebbleSynced (completer-owned).
	unsynced     bool
	pebbleSynced time.Time
}

type op struct {
	fn    func(*Txn) error
	sync  bool
	ctx   context.Context
	cb    func(error)
	err   error
	hooks []func()
}

type round struct {
	seq   uint64
	ops   []*op
	batch *pebble.Batch // nil: nothing to wait for
	view  map[string]*kv
	// logged: the round appended to the change log (the completer syncs it
	// before the batch is applied).
	logged bool
	// carried: the log holds the round's batch too (a commit record after
	// its changes): the log's fdatasync makes the whole round durable and
	// the batch goes to Pebble unsynced (carryRound).
	carried bool
	sync    bool
	// the version counter after this round (0: unchanged)
	version uint64
}

type metrics struct {
	batches  prometheus.Counter
	ops      prometheus.Counter
	batchOps prometheus.Histogram
	prep     prometheus.Histogram
	sync     prometheus.Histogram
}

// Open opens or creates the store in dir.
func Open(dir string, o Options) (*Store, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Queue <= 0 {
		o.Queue = DefaultQueue
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.Migrations == nil {
		var self peer.ID
		if o.Signer != nil {
			var err error
			if self, err = peer.IDFromPrivateKey(o.Signer); err != nil {
				return nil, fmt.Errorf("store signer: %w", err)
			}
		}
		o.Migrations = builtinMigrations(self)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = DefaultCacheBytes
	}
	cache := pebble.NewCache(o.CacheBytes)
	defer cache.Unref()
	if o.InMemory {
		o.Health.FS = vfs.NewMem()
	}
	if o.Health.MinFreeBytes > 0 && o.Health.Headroom == 0 {
		o.Health.Headroom = 2 * memTableSize
	}
	if !o.InMemory {
		if err := ReleaseWALSpace(dir); err != nil {
			return nil, err
		}
	}
	h := newHealth(dir, o.Health, o.Logger)
	options := func() *pebble.Options {
		return &pebble.Options{
			Logger: pebbleLogger{o.Logger, h.fatal},
			Cache:  cache,
			// Most point reads ask for keys that are not there (is this change
			// new?); bloom filters answer them without reading blocks.
			Levels:                levels(),
			L0CompactionThreshold: 8,
			L0StopWritesThreshold: 64,
			MemTableSize:          memTableSize,
		}
	}
	if o.Health.FS == nil { // on the disk: a store found corrupt is rebuilt first (repair.go)
		err := rebuildIfMarked(dir, func(readOnly bool) *pebble.Options {
			po := options()
			po.ReadOnly = readOnly
			return po
		}, o.Logger, o.Now())
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	}
	po := options()
	h.pebbleOptions(po)    // the file system: o.Health.FS (in memory) or the disk's
	h.compactNeed.Store(1) // no compaction at open until gateAfterOpen has looked (space.go)
	db, err := pebble.Open(dir, po)
	if err != nil {
		if pid := lockHolder(dir); pid != 0 && pid != os.Getpid() {
			// Not Pebble's "resource temporarily unavailable": who, and why.
			return nil, fmt.Errorf("open store %s: another process (pid %d) has it open; a data directory belongs to one node (is it shared with another home?): %w", dir, pid, err)
		}
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	var self []byte
	if o.Signer != nil {
		id, err := peer.IDFromPrivateKey(o.Signer)
		if err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("store signer: %w", err)
		}
		self = []byte(id)
	}
	s := &Store{ctrVersionKey: k(keyCtrPrefix).str(CtrVersion), db: db, opts: o, log: o.Logger, now: o.Now, h: h, self: self,
		ops: make(chan *op, o.Queue), done: make(chan *round, 1), slot: make(chan struct{}, 1), hot: map[string][]byte{}}
	if err := s.prepare(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := s.openLog(dir, o); err != nil {
		_ = db.Close()
		return nil, err
	}
	s.pebbleSynced = time.Now()
	if _, marked, err := s.Repair(); err == nil && marked {
		// A rebuild dropped a span of Pebble's keys: the origin index is
		// derived from the log again (its changes were not in Pebble).
		n, err := s.reindexOrigins()
		if err != nil {
			_ = s.clog.Close()
			_ = db.Close()
			return nil, err
		}
		if n > 0 {
			s.log.Warn("store: origin index entries the rebuild dropped are taken back from the change log", "entries", n)
		}
	}
	v, err := s.Counter(CtrVersion)
	if err != nil {
		_ = s.clog.Close()
		_ = db.Close()
		return nil, err
	}
	s.durableVersion.Store(v)
	if err := s.initMetrics(o.Registerer); err != nil {
		_ = s.clog.Close()
		_ = db.Close()
		return nil, err
	}
	s.gateAfterOpen()
	s.g.Go(s.writer)
	s.g.Go(s.completer)
	return s, nil
}

// prepare writes or checks the schema version and runs migrations.
func (s *Store) prepare() error {
	v, err := s.getRaw([]byte(keySchema))
	switch {
	case errors.Is(err, ErrNotFound):
		var e [8]byte
		if _, err := rand.Read(e[:]); err != nil {
			return fmt.Errorf("store epoch: %w", err)
		}
		b := s.db.NewBatch()
		_ = b.Set([]byte(keySchema), u64Value(SchemaVersion), nil)
		_ = b.Set([]byte(keyEpoch), e[:], nil)
		if err := b.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("initialise store: %w", err)
		}
		s.epoch = binary.BigEndian.Uint64(e[:])
		return nil
	case err != nil:
		return err
	}
	schema := parseU64(v)
	if schema > SchemaVersion {
		return fmt.Errorf("%w: data is schema %d, this build knows %d", ErrNewerSchema, schema, SchemaVersion)
	}
	for schema < SchemaVersion {
		var m *Migration
		for i := range s.opts.Migrations {
			if s.opts.Migrations[i].From == schema {
				m = &s.opts.Migrations[i]
			}
		}
		if m == nil {
			return fmt.Errorf("no migration from store schema %d to %d: start this build on a new data directory, or run the Ferry release that wrote it", schema, SchemaVersion)
		}
		b := s.db.NewBatch()
		if err := m.Apply(s.db, b); err != nil {
			return fmt.Errorf("migrate store schema %d: %w", schema, err)
		}
		schema++
		_ = b.Set([]byte(keySchema), u64Value(schema), nil)
		if err := b.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("migrate store schema %d: %w", schema-1, err)
		}
		s.log.Info("store migrated", "schema", schema)
	}
	e, err := s.getRaw([]byte(keyEpoch))
	if err != nil {
		return fmt.Errorf("store epoch: %w", err)
	}
	s.epoch = parseU64(e)
	return nil
}

func (s *Store) initMetrics(reg prometheus.Registerer) error {
	s.m = metrics{
		batches: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "store", Name: "commits_total", Help: "Group commits (one batch each; fsynced unless every operation in it was lazy)."}),
		ops:     prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "store", Name: "operations_total", Help: "Transactions committed."}),
		batchOps: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "ferry", Subsystem: "store", Name: "commit_operations", Help: "Transactions per group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8)}),
		prep: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "ferry", Subsystem: "store", Name: "round_seconds", Help: "Time to run one group commit's transactions, seal them and append them to the change log.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14)}),
		sync: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "ferry", Subsystem: "store", Name: "fsync_wait_seconds", Help: "Time one group commit took to become durable: the change log's fdatasync, then the Pebble batch and its fsync.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14)}),
	}
	pebbleMem := pebbleMemory{s: s, desc: prometheus.NewDesc("ferry_store_pebble_memory_bytes",
		"Memory Pebble holds by part: its block cache (cache, up to 64 MiB by default) and its memtables (memtables: 16 MiB each, the one written and those waiting for a flush); outside the Go heap in a build with cgo, inside it in one without (the release's).",
		[]string{"part"}, nil)}
	if err := promreg.Register(reg, s.m.batches, s.m.ops, s.m.batchOps, s.m.prep, s.m.sync, pebbleMem); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// pebbleMemory reports Pebble's block cache and memtables, read at scrape
// time: with the Go heap, most of what a node's resident memory holds
// (they are outside the Go heap in a build with cgo).
type pebbleMemory struct {
	s    *Store
	desc *prometheus.Desc
}

func (c pebbleMemory) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c pebbleMemory) Collect(ch chan<- prometheus.Metric) {
	c.s.mu.RLock() // Close closes Pebble only after it set closed
	defer c.s.mu.RUnlock()
	if c.s.closed {
		return
	}
	m := c.s.db.Metrics()
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(m.BlockCache.Size), "cache")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(m.MemTable.Size), "memtables")
}

// DurableVersion is the highest store version known to be on disk.
func (s *Store) DurableVersion() uint64 { return s.durableVersion.Load() }

// Epoch is this store's incarnation number: random, fixed at creation.
func (s *Store) Epoch() uint64 { return s.epoch }

// Now is the store's clock.
func (s *Store) Now() time.Time { return s.now() }

// Update runs fn in the next group commit and returns once that commit is on
// disk (or fn failed; then nothing fn wrote is kept).
func (s *Store) Update(ctx context.Context, fn func(*Txn) error) error {
	ch := make(chan error, 1)
	s.submit(ctx, fn, true, func(err error) { ch <- err })
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		// The operation may still commit; the caller stops waiting.
		return fmt.Errorf("wait for commit: %w", ctx.Err())
	}
}

// Submit queues fn and returns at once; cb runs after the commit (or fn's
// failure), in submission order, on the store's completion goroutine. It
// must not block. Submit blocks while the queue is full (backpressure).
func (s *Store) Submit(ctx context.Context, fn func(*Txn) error, cb func(error)) {
	s.submit(ctx, fn, true, cb)
}

// SubmitLazy is Submit for changes that may be lost in a crash without harm
// (marks that only save a resend); a batch of only lazy operations is not
// fsynced.
func (s *Store) SubmitLazy(ctx context.Context, fn func(*Txn) error, cb func(error)) {
	s.submit(ctx, fn, false, cb)
}

func (s *Store) submit(ctx context.Context, fn func(*Txn) error, sync bool, cb func(error)) {
	if cb == nil {
		cb = func(error) {}
	}
	o := &op{fn: fn, sync: sync, ctx: ctx, cb: cb}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		cb(ErrClosed)
		return
	}
	s.h.enqueued()
	select {
	case s.ops <- o:
	case <-ctx.Done():
		s.h.queued.Add(-1)
		cb(fmt.Errorf("queue for commit: %w", ctx.Err()))
	}
}

// Waiting for company. A round pays its fsync, its signature and a frame
// to each receiver whole, so at a few thousand changes a second, rounds of
// a handful cost several times per change what full-rate rounds do. When
// operations have been coming at lingerRate a second or more (over the
// last rateWindow), a round smaller than lingerRound waits for more, up to
// the time they take at that rate and never more than lingerMax. Below that
// rate (1,000 a second: each change's latency counts) and at full rate
// (rounds are large anyway) nothing waits.
const (
	lingerRound = 32
	lingerRate  = 2500
	lingerMax   = 2 * time.Millisecond
	rateWindow  = 100 * time.Millisecond
)

// lingerFor is how long a round of n operations waits for company when
// operations came at rate a second.
func lingerFor(n int, rate float64) time.Duration {
	if n >= lingerRound || rate < lingerRate {
		return 0
	}
	return min(lingerMax, time.Duration(float64(lingerRound-n)/rate*float64(time.Second)))
}

// linger adds to batch what comes within wait, until it holds lingerRound
// operations (or the store closes).
func (s *Store) linger(batch []*op, wait time.Duration) []*op {
	t := time.NewTimer(wait)
	defer t.Stop()
	for len(batch) < min(lingerRound, s.opts.MaxBatch) {
		select {
		case o, ok := <-s.ops:
			if !ok {
				return batch
			}
			batch = append(batch, o)
		case <-t.C:
			return batch
		}
	}
	return batch
}

// writer owns every commit.
func (s *Store) writer() {
	defer close(s.done)
	defer s.h.recoverFatal()
	batch := make([]*op, 0, s.opts.MaxBatch)
	// The rate operations come at, over the last rateWindow (lingerFor).
	var rate float64
	winStart, winOps := time.Now(), 0
	for {
		first, ok := <-s.ops
		if !ok {
			return
		}
		// Prepare a round only once the completer has taken the one
		// before (it is syncing it now): what comes meanwhile joins this
		// round instead of making rounds of its own that would queue for
		// a sync each. A round still prepares while the previous one
		// syncs, and one alone is prepared at once: nothing waits for
		// company.
		s.slot <- struct{}{}
		batch = append(batch[:0], first)
	drain:
		for len(batch) < s.opts.MaxBatch {
			select {
			case o, ok := <-s.ops:
				if !ok {
					break drain
				}
				batch = append(batch, o)
			default:
				break drain
			}
		}
		// The rate is brought up to date before it is used: after a pause
		// the window that ends now is mostly the pause, so a lone change
		// after a burst does not wait for company that is not coming.
		if now := time.Now(); now.Sub(winStart) >= rateWindow {
			rate = float64(winOps) / now.Sub(winStart).Seconds()
			winStart, winOps = now, 0
		}
		if wait := lingerFor(len(batch), rate); wait > 0 {
			batch = s.linger(batch, wait)
		}
		winOps += len(batch)
		s.done <- s.commitRound(append([]*op(nil), batch...))
	}
}

// commitRound runs the transactions of one round, seals their envelopes,
// appends the round's changes to the log (one write) and stages its Pebble
// batch. The completer makes it durable and applies the batch; until then
// the writer's later rounds read this one's writes from its view.
func (s *Store) commitRound(ops []*op) *round {
	s.rounds++
	r := &round{seq: s.rounds, ops: ops}
	if f := s.failure(); f != nil {
		for _, o := range ops {
			o.err = *f
		}
		return r
	}
	// Rounds the completer has applied are read from Pebble again.
	applied := s.applied.Load()
	n := 0
	for n < len(s.pending) && s.pending[n].seq <= applied {
		n++
	}
	s.pending = s.pending[n:]
	start := time.Now()
	now := s.now()
	view := make(map[string]*kv, 4*len(ops)) // this round's writes, for reads by its later transactions
	var sealed []*Sealed
	var logged []seglog.Record
	var parts map[uint64]PartLeaf // AppendReceivedPart's, for compactTrees
	// slab holds the writes of the round's transactions, one after the
	// other (one allocation for many small transactions): each starts
	// with what is left of it, and one that outgrows it goes on in its
	// own (append). The view points into it, so it is never reused.
	var slab []kv
	count := 0
	for _, o := range ops {
		if err := o.ctx.Err(); err != nil {
			o.err = fmt.Errorf("operation abandoned before commit: %w", err)
			continue
		}
		if cap(slab)-len(slab) < 16 {
			slab = make([]kv, 0, min(max(8*len(ops), 64), 4096))
		}
		t := &s.txn
		*t = Txn{s: s, view: view, now: now, prior: logged, roundParts: parts, ops: slab[len(slab):len(slab):cap(slab)]}
		if err := safeRun(o.fn, t); err != nil {
			o.err = err
			continue
		}
		if n := len(t.ops); n > 0 && n <= cap(slab)-len(slab) && &t.ops[0] == &slab[:len(slab)+1][len(slab)] {
			slab = slab[:len(slab)+n] // written in place: the next one starts after
		}
		if len(view) == 0 && len(t.ops) > 4*len(ops) {
			// A first transaction larger than the view was made for (a
			// batch of changes): a view of its size, not one that
			// doubles as it is filled. No transaction holds the old one.
			view = make(map[string]*kv, len(t.ops)+4*len(ops))
		}
		t.flush(view)
		if len(t.parts) > 0 {
			if parts == nil {
				parts = t.parts
			} else {
				maps.Copy(parts, t.parts)
			}
		}
		o.hooks = t.hooks
		sealed = append(sealed, t.sealed...)
		logged = append(logged, t.logged...)
		r.sync = r.sync || o.sync
		count++
	}
	if count == 0 {
		return r
	}
	size := 0
	for key, w := range view {
		size += len(key) + len(w.v) + 16
	}
	b := s.db.NewBatchWithSize(size) // the changes themselves go to the log
	for _, x := range sealed {
		size += len(x.body) + 32
	}
	for _, x := range logged {
		size += len(x.Data) + 32
		if pl, ok := parts[x.Version]; ok && x.Type == recPending {
			size += len(pl.Part.Bodies[pl.I]) + 32
		}
	}
	fail := func(err error) *round {
		for _, o := range ops {
			if o.err == nil {
				o.err = err
				o.hooks = nil
			}
		}
		_ = b.Close()
		r.sync = false
		return r
	}
	// Below the free-space reserve nothing is written (health.go).
	if err := s.h.admit(size); err != nil {
		return fail(err)
	}
	if len(sealed) > 0 {
		recs, err := s.seal(sealed)
		if err != nil {
			return fail(err)
		}
		logged = append(logged, recs...)
	}
	// One write per key: a counter bumped by every transaction of the
	// round reaches the memtable once.
	for _, w := range view {
		var err error
		if w.del {
			err = b.Delete(w.k, nil)
		} else {
			err = b.Set(w.k, w.v, nil)
		}
		if err != nil {
			return fail(fmt.Errorf("stage write: %w", err))
		}
	}
	if len(logged) > 0 {
		slices.SortStableFunc(logged, func(a, b seglog.Record) int { return cmp.Compare(a.Version, b.Version) })
		s.compactTrees(logged, parts)
		// Pebble records how far the log is durable, and in which segment.
		end := logged[len(logged)-1].Version
		_ = b.Set([]byte(keyLogEnd), u64Value(end), nil)
		if s.carryRound(len(logged), b) {
			logged = append(logged, seglog.Record{Version: end, Type: seglog.TypeCommit, Data: commitRecord(s.clog.Last(), b)})
			r.carried = true
		}
		if err := s.clog.Append(logged); err != nil {
			// Nothing of the round is kept (Append undoes a partial write);
			// as a failed Pebble write did, it stops the store: the node
			// exits with the line, and starts again once there is space.
			if isDiskFull(err) {
				s.h.diskFullAt.CompareAndSwap(0, time.Now().UnixNano())
			}
			s.log.Error("store commit failed", "err", err.Error(), "operations", count)
			f := fmt.Errorf("store failed: %w", err)
			s.failed.Store(&f)
			s.h.fail(f)
			return fail(f)
		}
		r.logged = true
		_ = b.Set([]byte(keyLogSegment), u64Value(s.clog.Active()), nil) // a commit record's replay sets it from where it is
	}
	r.batch, r.view = b, view
	s.pending = append(s.pending, r)
	if w, ok := view[string(s.ctrVersionKey)]; ok && !w.del {
		r.version = parseU64(w.v)
	}
	for key, w := range view {
		if isHot(key) {
			if w.del {
				s.hot[key] = nil
			} else {
				s.hot[key] = w.v
			}
		}
	}
	s.m.batches.Inc()
	s.m.ops.Add(float64(count))
	s.m.batchOps.Observe(float64(count))
	s.m.prep.Observe(time.Since(start).Seconds())
	return r
}

// safeRun runs a transaction function, turning a panic into an error so one
// bad operation cannot take down the writer.
func safeRun(fn func(*Txn) error, t *Txn) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("transaction panicked: %v", r)
		}
	}()
	return fn(t)
}

// seal signs the round's own bodies, one signature per tree of up to
// protocols.MaxTreeLeaves, sets each Sealed's envelope (for the commit
// hooks), and returns their log records: the body, its place in its tree,
// and the signature once per tree (changelog.go, appendOwnHead).
func (s *Store) seal(sealed []*Sealed) ([]seglog.Record, error) {
	if s.opts.Signer == nil {
		return nil, ErrNoSigner
	}
	bodies := make([][]byte, len(sealed))
	leaves := make([][32]byte, len(sealed))
	for i, x := range sealed {
		bodies[i], leaves[i] = x.body, x.leaf
	}
	envs, err := protocols.SealLeaves(s.opts.Signer, bodies, leaves)
	if err != nil {
		return nil, err
	}
	recs := make([]seglog.Record, len(sealed))
	// The records' headers share one buffer (a signature once a tree);
	// each body is written from where it is (seglog.Record.Head).
	heads := make([]byte, 0, 12*len(sealed)+64*(len(sealed)/protocols.MaxTreeLeaves+1)) // an Ed25519 signature: 64 bytes
	for i, x := range sealed {
		e := envs[i]
		x.Envelope = e
		x.Shape = protocols.ShapeOf(e) // encoded only if a sender needs it self-contained
		tree := sealed[i-int(e.LeafIndex)].version
		var sig []byte
		if int(e.LeafIndex) == int(e.TreeSize)-1 {
			sig = e.RootSignature
		}
		at := len(heads)
		var body []byte
		heads, body = s.appendOwnHead(heads, x.version, tree, e.LeafIndex, e.TreeSize, sig, x.body)
		recs[i] = seglog.Record{Version: x.version, Type: recOwn, Head: heads[at:len(heads):len(heads)], Data: body}
	}
	return recs, nil
}

// completer makes each round durable (the log's fdatasync, then the Pebble
// batch with its fsync), then answers callers and runs their hooks in
// submission order.
func (s *Store) completer() {
	defer s.h.recoverFatal() // the batch is applied here (durable)
	// stopped is the failure of an earlier round: rounds after it were
	// prepared on top of it, and none of them is answered as committed (not
	// even one that wrote nothing).
	var stopped error
	for r := range s.done {
		<-s.slot // the writer may prepare the next round while this one syncs
		if stopped != nil {
			for _, o := range r.ops {
				if o.err == nil {
					o.err, o.hooks = stopped, nil
				}
			}
		}
		if r.batch != nil && stopped == nil {
			if err := s.durable(r); err != nil {
				// What is not on disk must never be handed out: the
				// durable marks stay, and the store takes no more work.
				s.log.Error("store fsync failed; the store stops taking work", "err", err.Error())
				f := fmt.Errorf("store failed: %w", err)
				s.failed.Store(&f)
				s.h.poke()
				stopped = f
				for _, o := range r.ops {
					if o.err == nil {
						o.err = f
						o.hooks = nil
					}
				}
			} else if r.version > 0 {
				s.durableVersion.Store(r.version)
			}
		}
		if r.batch != nil {
			_ = r.batch.Close()
		}
		for _, o := range r.ops {
			if o.err == nil {
				for _, h := range o.hooks {
					h()
				}
			}
			o.cb(o.err)
		}
		// The watchers hear of the round once its hooks ran: the events
		// stream finds the events they published (eventstream.Tail).
		if r.batch != nil && stopped == nil && r.version > 0 {
			s.notifyDurable(r.version)
		}
		s.h.answered(len(r.ops))
		if stopped == nil && len(s.done) == 0 {
			s.syncPebble(false)
		}
	}
	if s.failure() == nil {
		s.syncPebble(true)
	}
}

// durable writes one prepared round: the log's records first (fdatasync),
// then the Pebble batch, which records how far the log is durable.
func (s *Store) durable(r *round) error {
	start := time.Now()
	defer func() { s.m.sync.Observe(time.Since(start).Seconds()) }()
	if r.logged {
		if err := s.clog.Sync(); err != nil {
			return err
		}
	}
	if !r.sync || r.carried {
		// A carried round is durable with the log's records: Pebble's WAL
		// is synced later (syncPebble), and Open replays the round from
		// its commit record if Pebble lost it.
		err := s.db.Apply(r.batch, pebble.NoSync)
		if err == nil {
			s.applied.Store(r.seq)
			s.unsynced = s.unsynced || r.carried
		}
		return err
	}
	if err := s.db.ApplyNoSyncWait(r.batch, pebble.Sync); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	s.applied.Store(r.seq) // visible now: the writer reads it from Pebble again
	if err := r.batch.SyncWait(); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	s.unsynced, s.pebbleSynced = false, time.Now() // the WAL holds every batch before this one
	return nil
}

// Close waits for queued work to commit, then closes Pebble. It is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.g.Shut()
	close(s.ops)
	s.mu.Unlock()
	s.g.Close()
	lerr := s.clog.Close()
	if s.failure() == nil {
		// What the memtable holds goes to an sst now: the WAL that held it
		// is deleted, and the next start replays nothing.
		if err := s.db.Flush(); err != nil {
			s.log.Warn("store: flush at close failed; the next start replays the WAL", "err", err.Error())
		}
	}
	if err := s.db.Close(); err != nil {
		return errors.Join(lerr, fmt.Errorf("close store: %w", err))
	}
	return lerr
}

func (s *Store) getRaw(key []byte) ([]byte, error) {
	v, c, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, s.check(fmt.Errorf("read %q: %w", key, err))
	}
	out := append([]byte(nil), v...)
	_ = c.Close()
	return out, nil
}

// scan calls fn for each key in [lo, hi) in order until fn returns false.
func (s *Store) scan(lo, hi []byte, reverse bool, fn func(k, v []byte) (bool, error)) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return s.check(fmt.Errorf("iterate: %w", err))
	}
	defer it.Close()
	var ok bool
	if reverse {
		ok = it.Last()
	} else {
		ok = it.First()
	}
	for ; ok; ok = next(it, reverse) {
		more, err := fn(it.Key(), it.Value())
		if err != nil {
			return err
		}
		if !more {
			break
		}
	}
	if err := it.Error(); err != nil {
		return s.check(fmt.Errorf("iterate: %w", err))
	}
	return nil
}

func next(it *pebble.Iterator, reverse bool) bool {
	if reverse {
		return it.Prev()
	}
	return it.Next()
}

// Txn is one caller's transaction inside a group commit. Its writes are kept
// aside and join the batch only if its function returns nil. Reads see the
// batch so far (earlier transactions of the same commit) and the transaction's
// own writes.
type Txn struct {
	s      *Store
	view   map[string]*kv
	now    time.Time
	ops    []kv
	hooks  []func()
	sealed []*Sealed
	logged []seglog.Record // received changes for the log
	prior  []seglog.Record // those of the round's earlier transactions
	// parts: the part leaves of records logged without data
	// (AppendReceivedPart), by version; roundParts those of the round's
	// earlier transactions.
	parts      map[uint64]PartLeaf
	roundParts map[uint64]PartLeaf
	// index maps a key to its last write in ops[:indexed], once a
	// transaction writes more than a handful (a batch of decisions or
	// changes reads back what it wrote: a scan of ops each time grew with
	// the square of the batch), by the key's hash (maphash, no string
	// made per write); a key whose hash is another's is looked for by a
	// scan. RollbackTo drops it.
	index   map[uint64]int
	indexed int
	// changes: the received changes Reserve was told of (the size of
	// parts once one is logged).
	changes int
	// memo holds the last counters the transaction read or wrote (their
	// shared keys, counterKey): a batch of received changes reads and
	// bumps the same few (the version, the origin's chain) once per
	// change. Any other write of a counter key, and RollbackTo, drop it.
	memo     [4]ctrMemo
	memoNext int
}

// ctrMemo is one counter's value as the transaction sees it (0: absent).
type ctrMemo struct {
	k key
	v uint64
}

// indexFrom is the number of writes from which get looks them up by index.
const indexFrom = 32

// txnSeed hashes keys for Txn.index.
var txnSeed = maphash.MakeSeed()

type kv struct {
	k, v []byte
	del  bool
}

// Sealed is an envelope body that the commit signs; Envelope is set once the
// transaction's commit hooks run.
type Sealed struct {
	Envelope *pb.Envelope
	// Shape is Envelope's fields with its path, for the followers
	// (OwnEntry.Shape); its Marshal is Envelope encoded.
	Shape   *protocols.EnvelopeShape
	Hash    uint64 // BodyHash of the body
	leaf    [32]byte
	version uint64
	body    []byte
}

// Now is the commit's clock reading, the same for every transaction of it.
func (t *Txn) Now() time.Time { return t.now }

// OnCommit registers fn to run after the commit is on disk, in order with
// other transactions' hooks. fn must not block for long.
func (t *Txn) OnCommit(fn func()) { t.hooks = append(t.hooks, fn) }

// Epoch is the store's incarnation.
func (t *Txn) Epoch() uint64 { return t.s.epoch }

func (t *Txn) get(key []byte) ([]byte, error) {
	// The transaction's own writes first: the last one wins.
	if len(t.ops) < indexFrom {
		for i := len(t.ops) - 1; i >= 0; i-- {
			if string(t.ops[i].k) == string(key) {
				if t.ops[i].del {
					return nil, ErrNotFound
				}
				return t.ops[i].v, nil
			}
		}
	} else {
		if t.index == nil {
			t.index = make(map[uint64]int, 2*len(t.ops))
		}
		for ; t.indexed < len(t.ops); t.indexed++ {
			t.index[maphash.Bytes(txnSeed, t.ops[t.indexed].k)] = t.indexed
		}
		if i, ok := t.index[maphash.Bytes(txnSeed, key)]; ok {
			if !bytes.Equal(t.ops[i].k, key) { // another key of the same hash
				for i = len(t.ops) - 1; i >= 0 && !bytes.Equal(t.ops[i].k, key); i-- {
				}
			}
			if i >= 0 {
				if t.ops[i].del {
					return nil, ErrNotFound
				}
				return t.ops[i].v, nil
			}
		}
	}
	if w, ok := t.view[string(key)]; ok {
		if w.del {
			return nil, ErrNotFound
		}
		return w.v, nil
	}
	for i := len(t.s.pending) - 1; i >= 0; i-- { // rounds not yet in Pebble
		if w, ok := t.s.pending[i].view[string(key)]; ok {
			if w.del {
				return nil, ErrNotFound
			}
			return w.v, nil
		}
	}
	hot := isHot(string(key))
	if hot {
		if v, ok := t.s.hot[string(key)]; ok {
			if v == nil {
				return nil, ErrNotFound
			}
			return v, nil
		}
	}
	v, c, err := t.s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		if hot {
			t.s.hot[string(key)] = nil
		}
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, t.s.check(fmt.Errorf("read %q: %w", key, err))
	}
	out := append([]byte(nil), v...)
	_ = c.Close()
	if hot {
		t.s.hot[string(key)] = out
	}
	return out, nil
}

// isHot reports whether a key is one the writer keeps in memory: small,
// read by most transactions, and only ever written through transactions.
func isHot(key string) bool {
	return strings.HasPrefix(key, keyCtrPrefix) || strings.HasPrefix(key, pPosition)
}

// Reserve makes room for about writes more writes, hooks more commit hooks
// and changes more changes for the log: a transaction that knows its size
// (a batch of changes) grows its lists once instead of doubling them as it
// goes.
func (t *Txn) Reserve(writes, hooks, changes int) {
	t.ops = slices.Grow(t.ops, writes)
	t.hooks = slices.Grow(t.hooks, hooks)
	t.logged = slices.Grow(t.logged, changes)
	t.changes = changes
	if t.index == nil && len(t.ops)+writes >= indexFrom {
		t.index = make(map[uint64]int, len(t.ops)+writes)
	}
}

func (t *Txn) set(key, val []byte) {
	t.forget(key)
	t.ops = append(t.ops, kv{k: key, v: val})
}

func (t *Txn) del(key []byte) {
	t.forget(key)
	t.ops = append(t.ops, kv{k: key, del: true})
}

// counter reads a counter by its shared key (counterKey), from the memo
// when the transaction read or wrote it last.
func (t *Txn) counter(ck key) (uint64, error) {
	for i := range t.memo {
		if m := &t.memo[i]; sameKey(m.k, ck) {
			return m.v, nil
		}
	}
	v, err := t.get(ck)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return 0, err
	}
	n := parseU64(v)
	t.remember(ck, n)
	return n, nil
}

// setCounter writes a counter by its shared key, and remembers it.
func (t *Txn) setCounter(ck key, v uint64) {
	t.ops = append(t.ops, kv{k: ck, v: u64Value(v)})
	t.remember(ck, v)
}

func (t *Txn) remember(ck key, v uint64) {
	for i := range t.memo {
		if m := &t.memo[i]; sameKey(m.k, ck) {
			m.v = v
			return
		}
	}
	t.memo[t.memoNext%len(t.memo)] = ctrMemo{k: ck, v: v}
	t.memoNext++
}

// forget drops the memo when a counter is written other than through
// setCounter (a key of its own, not the shared one).
func (t *Txn) forget(key []byte) {
	if t.memoNext > 0 && bytes.HasPrefix(key, keyCtrPrefixBytes) {
		t.memo, t.memoNext = [4]ctrMemo{}, 0
	}
}

// sameKey reports whether a and b are the same shared key (the same bytes
// in memory, as counterKey hands out).
func sameKey(a, b key) bool {
	return len(a) > 0 && len(a) == len(b) && &a[0] == &b[0]
}

var keyCtrPrefixBytes = []byte(keyCtrPrefix)

// flush makes a successful transaction's writes part of the round.
func (t *Txn) flush(view map[string]*kv) {
	for i := range t.ops {
		// The key's bytes, never written again once a key is made (k()
		// builds each anew), are the view's string: no copy per write.
		view[unsafe.String(unsafe.SliceData(t.ops[i].k), len(t.ops[i].k))] = &t.ops[i]
	}
}

// Next returns the next value of a named counter (1 first).
func (t *Txn) Next(name string) (uint64, error) {
	key := t.s.counterKey(name)
	v, err := t.counter(key)
	if err != nil {
		return 0, err
	}
	t.setCounter(key, v+1)
	return v + 1, nil
}

// Counter returns a named counter's current value (reads committed data only).
func (s *Store) Counter(name string) (uint64, error) {
	v, err := s.getRaw(k(keyCtrPrefix).str(name))
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	return parseU64(v), err
}

func unmarshal(v []byte, m proto.Message) error {
	if err := proto.Unmarshal(v, m); err != nil {
		return fmt.Errorf("decode %T: %w", m, err)
	}
	return nil
}

func marshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		// Only invalid UTF-8 in string fields fails; callers validate input.
		panic(fmt.Sprintf("encode %T: %v", m, err))
	}
	return b
}

type pebbleLogger struct {
	l     *slog.Logger
	fatal func(string) // health.fatal: records the failure, calls Options.Health.OnFatal
}

func (p pebbleLogger) Infof(format string, args ...interface{}) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Errorf(format string, args ...interface{}) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Fatalf(format string, args ...interface{}) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	p.fatal(fmt.Sprintf(format, args...))
	panic(fmt.Sprintf(format, args...))
}

var _ io.Closer = (*Store)(nil)

// Savepoint marks the transaction's state so RollbackTo can undo what follows.
type Savepoint struct{ ops, hooks, sealed, logged int }

// Savepoint returns a mark of everything written so far.
func (t *Txn) Savepoint() Savepoint {
	return Savepoint{ops: len(t.ops), hooks: len(t.hooks), sealed: len(t.sealed), logged: len(t.logged)}
}

// RollbackTo forgets every write, hook and seal made after sp. Counters read
// through Next after sp are rolled back too (they are writes).
func (t *Txn) RollbackTo(sp Savepoint) {
	t.ops = t.ops[:sp.ops]
	t.index, t.indexed = nil, 0
	t.memo, t.memoNext = [4]ctrMemo{}, 0
	t.hooks = t.hooks[:sp.hooks]
	t.sealed = t.sealed[:sp.sealed]
	t.logged = t.logged[:sp.logged]
}

// Parts name the groups of PartBytes.
var Parts = []string{"log", "ledger", "tables", "other"}

// PartBytes estimates the bytes the store holds for each part (Parts): the
// change log (its segment files, and the changes and origin index in
// Pebble), the delivery ledger, the tables, the rest. What is still in
// Pebble's memtable is not counted.
func (s *Store) PartBytes() (map[string]uint64, error) {
	groups := map[string][]string{
		"log":    {pChange, pOrigin},
		"ledger": {pOwn, pAddressed, pFloor, pRefused, pPosition},
		"tables": {pResource, pRequest, pReqOrigin, pDecision, pTable},
	}
	out := map[string]uint64{"log": uint64(s.clog.Size())}
	var known uint64
	for part, prefixes := range groups {
		for _, p := range prefixes {
			n, err := s.db.EstimateDiskUsage([]byte(p), prefixEnd([]byte(p)))
			if err != nil {
				return nil, fmt.Errorf("estimate %s: %w", p, err)
			}
			out[part] += n
			known += n
		}
	}
	all, err := s.db.EstimateDiskUsage([]byte{0}, []byte{0xff})
	if err != nil {
		return nil, fmt.Errorf("estimate the store: %w", err)
	}
	if all > known {
		out["other"] = all - known
	}
	return out, nil
}

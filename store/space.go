package store

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
)

// The space the store needs beyond what it holds (issue 16: a node whose
// disk had filled to the last byte exited at every start, in a loop, while
// 48 MB were free):
//
//   - To open: Pebble replays the WAL files into tables (a flush writes about
//     as much as the WAL holds) and starts a new WAL, preallocated to 1.1
//     memtables. RecoveryNeed estimates it from the files on disk; ferry run
//     waits, unhealthy, until it is free (node/diskwait.go) instead of
//     failing in a loop.
//   - To compact: a compaction writes its output before it deletes its
//     inputs, so it needs up to its inputs' size free. Pebble retries a
//     failed compaction at once, and the old store failed on the first
//     ENOSPC, so a compaction at open that did not fit (all of L0 and the
//     base level: most of a small store) stopped every start. Now a
//     compaction that ends in ENOSPC is not a failure: compactions wait
//     (Pebble's MaxConcurrentCompactions is 0) until what it needed is free,
//     and the store keeps taking writes meanwhile (they go to L0). At open,
//     compactions wait until L0 and the base level fit in the free space.
//   - WAL recycling is off: Pebble keeps up to three used WAL files (about
//     55 MB with Ferry's 16 MiB memtables) to reuse them, and that space
//     is neither free for tables nor counted as free by the reserve check
//     (limits.min_free_disk_mb), so a node that refused writes at its
//     reserve stayed refused after an operator freed space, until a restart
//     deleted them. Counting them as free would promise flushes space that
//     only the WAL can use; without recycling each new WAL is a new
//     preallocated file, and a WAL is deleted once its memtable is flushed.

const (
	// walPrealloc is what Pebble preallocates for a new WAL file (1.1
	// memtables: see its walPreallocateSize).
	walPrealloc = memTableSize / 10 * 11
	// memTableStopWrites is Pebble's MemTableStopWritesThreshold: at most
	// this many memtables (and WAL files) hold unflushed data, plus the
	// mutable one.
	memTableStopWrites = 2
	// openMargin covers the small files Open writes (MANIFEST, OPTIONS,
	// markers).
	openMargin = 1 << 20
	// compactResumeEvery bounds how often waiting compactions look at the
	// free space.
	compactResumeEvery = time.Second
)

// noRecycleCleaner deletes obsolete files (its Clean is
// pebble.DeleteCleaner's, the shallower of the two embedded) and turns WAL
// recycling off: Pebble does not recycle WAL files for a cleaner that needs
// their contents, which it learns from a method of ArchiveCleaner (promoted
// from the deeper embedding).
type noRecycleCleaner struct {
	pebble.DeleteCleaner
	needsContents
}

type needsContents struct{ pebble.ArchiveCleaner }

func (noRecycleCleaner) String() string { return "delete-no-wal-recycling" }

// Need is the free space a store needs to open, against what is free.
type Need struct {
	Dir string
	// WALBytes is what the WAL files hold (replayed into tables at open).
	WALBytes uint64
	// Bytes is the free space opening needs: the flush of the WAL, a new
	// preallocated WAL and the small files.
	Bytes uint64
	// Free is the free space of the file system under Dir.
	Free uint64
}

// Enough reports whether the store can open on this disk.
func (n Need) Enough() bool { return n.Free >= n.Bytes }

// String is one line for the log and /healthz.
func (n Need) String() string {
	return fmt.Sprintf("the store under %s needs %s free to open (%s of WAL to replay into tables, a new %s WAL), %s free",
		n.Dir, mib(n.Bytes), mib(n.WALBytes), mib(walPrealloc), mib(n.Free))
}

// ReleaseWALSpace gives back the space Pebble preallocated past the end of
// the WAL files in dir (each new WAL is preallocated to walPrealloc, even
// while its memtable is small: four WALs holding 3 MB took 72 MB of a full
// disk). A stopped store's WAL ends where its data ends, so cutting each
// file at its size loses nothing; Open replays them and deletes them once
// flushed. It takes Pebble's lock of dir while it works, and does nothing
// when another process holds it (Open then says so).
func ReleaseWALSpace(dir string) error {
	es, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("store %s: %w", dir, err)
	}
	lock, err := vfs.Default.Lock(filepath.Join(dir, "LOCK"))
	if err != nil {
		return nil // open elsewhere
	}
	defer lock.Close()
	for _, e := range es {
		if !strings.HasSuffix(e.Name(), ".log") {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		// Truncating to the same size frees the blocks past the end.
		if err := os.Truncate(filepath.Join(dir, e.Name()), fi.Size()); err != nil {
			return fmt.Errorf("release the preallocated space of %s: %w", e.Name(), err)
		}
	}
	return nil
}

// RecoveryNeed estimates the free space the store in dir needs to open:
// what its WAL files hold (replayed and flushed into tables at open; at
// most memTableStopWrites+1 memtables of them hold unflushed data), a new
// WAL preallocated to walPrealloc, and openMargin. A dir that does not
// exist yet needs a new WAL only; Free is then read from its parent.
func RecoveryNeed(dir string) (Need, error) {
	n := Need{Dir: dir}
	es, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return n, fmt.Errorf("store %s: %w", dir, err)
	}
	for _, e := range es {
		if !strings.HasSuffix(e.Name(), ".log") {
			continue
		}
		if fi, err := e.Info(); err == nil {
			n.WALBytes += uint64(fi.Size())
		}
	}
	replay := min(n.WALBytes, (memTableStopWrites+1)*memTableSize)
	n.Bytes = replay + walPrealloc + openMargin
	at := dir
	for {
		u, err := vfs.Default.GetDiskUsage(at)
		if err == nil {
			n.Free = u.AvailBytes
			return n, nil
		}
		parent := filepath.Dir(at)
		if !os.IsNotExist(err) || parent == at {
			return n, fmt.Errorf("free space under %s: %w", dir, err)
		}
		at = parent
	}
}

// maxCompactions is Pebble's MaxConcurrentCompactions: none while they
// wait for space.
func (h *health) maxCompactions() int {
	if h.compactNeed.Load() > 0 {
		return 0
	}
	return 1
}

// compactionEnd is Pebble's report of a finished compaction. One that ran
// out of space makes compactions wait until what it needed is free (its
// inputs, plus a memtable for the writes meanwhile); its background error
// is then not a failure. Pebble holds its mutex here: no calls into it.
func (h *health) compactionEnd(info pebble.CompactionInfo) {
	if info.Err == nil || !isDiskFull(info.Err) {
		return
	}
	var in uint64
	for _, l := range info.Input {
		for _, t := range l.Tables {
			in += t.Size
		}
	}
	need := in + memTableSize
	h.compactNeed.Store(need)
	h.poke()
	h.compactFull.Add(1)
	h.diskFullAt.Store(0) // that ENOSPC was the compaction's
	h.log.Warn("disk full under a compaction: compactions wait for space, writes go on", "needs_bytes", need, "dir", h.dir)
}

// compactionENOSPC reports (once per compaction) that a disk-full
// background error is a compaction's, already handled by compactionEnd.
func (h *health) compactionENOSPC() bool {
	for {
		done := h.compactFullSeen.Load()
		if done >= h.compactFull.Load() {
			return false
		}
		if h.compactFullSeen.CompareAndSwap(done, done+1) {
			return true
		}
	}
}

// gateAfterOpen decides whether compactions may start once Pebble is open:
// only when L0 and the base level (what an L0 compaction may rewrite)
// fit in the free space. It starts them if there is work.
func (s *Store) gateAfterOpen() {
	m := s.db.Metrics()
	need := m.Levels[0].Size
	for _, l := range m.Levels[1:] {
		if l.NumFiles > 0 {
			need += l.Size
			break
		}
	}
	free := ^uint64(0)
	if u, err := s.h.fs.GetDiskUsage(s.h.dir); err == nil {
		free = u.AvailBytes
	}
	if need > 0 && free < uint64(need)+memTableSize {
		s.h.compactNeed.Store(uint64(need) + memTableSize)
		s.h.poke()
		s.h.log.Warn("compactions wait for space: an L0 compaction may rewrite more than is free", "needs", mib(uint64(need)+memTableSize), "free", mib(free), "dir", s.h.dir)
		return
	}
	s.h.compactNeed.Store(0)
	if m.Compact.EstimatedDebt > 0 {
		s.kickCompactions()
	}
}

// kickCompactions has Pebble look for compactions to run: it schedules
// them after a flush. The flush runs on a goroutine of the store (it may
// wait while Pebble holds writes back), counted by s.g: none starts once
// Close has begun. The caller holds s.mu or the store is not running yet,
// and it is open.
func (s *Store) kickCompactions() {
	s.g.Go(func() {
		defer s.h.recoverFatal()
		_, _ = s.db.AsyncFlush()
	})
}

// resumeCompactions lets compactions run again once what they wait for is
// free (called from Health, which the node polls).
func (s *Store) resumeCompactions(now time.Time) {
	need := s.h.compactNeed.Load()
	if need == 0 {
		return
	}
	last := s.h.compactCheckAt.Load()
	if now.UnixNano()-last < int64(compactResumeEvery) || !s.h.compactCheckAt.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	u, err := s.h.fs.GetDiskUsage(s.h.dir)
	if err != nil || u.AvailBytes < need {
		return
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.failure() != nil || !s.h.compactNeed.CompareAndSwap(need, 0) {
		return
	}
	s.h.log.Info("disk space freed: compactions resume", "free", mib(u.AvailBytes), "needed", mib(need))
	s.kickCompactions()
}

// compactionsWait says why compactions wait ("" when they run).
func (h *health) compactionsWait() string {
	if need := h.compactNeed.Load(); need > 0 {
		return fmt.Sprintf("compactions wait until %s is free under %s", mib(need), h.dir)
	}
	return ""
}

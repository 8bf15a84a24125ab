package store

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"

	"github.com/ferrynet/ferry"
)

// The store's health: whether it can take writes, and why not.
//
// Three things stop it:
//
//   - A failure: a commit or an fsync failed, or the disk filled up under
//     Pebble (ENOSPC on any write of the data directory, or Pebble's
//     background flushes and compactions failing again and again). Nothing
//     written after the failure is answered as committed; the store takes
//     no more work and must be reopened (the node exits so that a
//     supervisor restarts it: see node/health.go).
//   - A stall: work has been queued for StallAfter with no commit
//     finishing (Pebble stopped writes, a disk hangs). Reported, never
//     hidden; the node exits if it lasts (node/health.go).
//   - A low disk: the file system under the data directory has less free
//     space than MinFreeBytes. Commits are refused with `unavailable: disk
//     almost full` until space is freed, so Pebble keeps room to flush and
//     compact and a restart on that disk works. This one clears by itself.
//
// A fourth makes it unhealthy without stopping writes: a corrupt block
// (corrupt.go). Reads of that range fail with `corrupt` until a restart
// rebuilds the store (repair.go).
//
// Why a full disk used to hang the node: Pebble v1.1 retries a failed flush
// or compaction at once, without backoff ("TODO: count consecutive
// compaction errors and backoff" in its compaction.go), so on ENOSPC it
// spins, allocating a new file number each time; with flushes failing, the
// memtables fill and Pebble stops writes, so the writer blocked in Apply
// forever while /healthz said ok. The reserve keeps the store away from
// ENOSPC; the listener below turns the spin into a failure that stops it.

// Defaults of the health checks.
const (
	// DefaultStallAfter is how long queued work may wait for a commit to
	// finish before the store says it is stalled.
	DefaultStallAfter = 5 * time.Second
	// freeCheckEvery bounds how stale the free-space figure may be when a
	// commit is admitted (plus the bytes written since it was read).
	freeCheckEvery = 50 * time.Millisecond
	// healthFreeEvery bounds how stale the figure Health reports may be.
	healthFreeEvery = time.Second
	// backgroundErrorBurst background errors within backgroundErrorWindow
	// (flushes or compactions failing in a loop) fail the store.
	backgroundErrorBurst  = 20
	backgroundErrorWindow = 10 * time.Second
	// diskFullGrace is how long an ENOSPC may wait for a compaction to
	// claim it before it fails the store.
	diskFullGrace = time.Second
)

// ErrDiskLow is returned (wrapped, with ferry.ErrUnavailable) for commits
// refused because the disk is almost full.
var ErrDiskLow = errors.New("disk almost full")

// HealthOptions configure the health checks (Options.Health).
type HealthOptions struct {
	// MinFreeBytes: commits are refused while the file system under the
	// data directory has less free space than this plus Headroom. 0: no
	// check.
	MinFreeBytes uint64
	// Headroom is kept free on top of MinFreeBytes for the store's own
	// writes after a refused commit: flushing what its memory tables hold
	// (Open sets it to twice the memtable size). Without it, a store that
	// stopped taking commits at the reserve still wrote a flush past it and
	// failed with ENOSPC.
	Headroom uint64
	// StallAfter: queued work waiting this long with no commit finishing
	// makes the store stalled. Default DefaultStallAfter.
	StallAfter time.Duration
	// OnFatal is called when Pebble reports an error it cannot go on from
	// (its Logger.Fatalf, e.g. a failed commit to the WAL). It should not
	// return (ferry run prints one line and exits); if it does, or is nil,
	// the store panics as Pebble expects.
	OnFatal func(error)
	// FS is the file system under Pebble (tests inject errors); nil: the
	// operating system's.
	FS vfs.FS
}

// Health is the store's state as the node reports it.
type Health struct {
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
	// Failed: a write failed; the store takes no more work until reopened.
	Failed bool `json:"failed,omitempty"`
	// Stalled: work is queued and no commit finished for StalledFor.
	Stalled    bool          `json:"stalled,omitempty"`
	StalledFor time.Duration `json:"stalled_for,omitempty"`
	// Corrupt: a read met a block that failed its checksum (corrupt.go);
	// the store still takes writes; a restart rebuilds it.
	Corrupt bool `json:"corrupt,omitempty"`
	// DiskLow: commits are refused until space is freed.
	DiskLow      bool      `json:"disk_low,omitempty"`
	FreeBytes    uint64    `json:"free_bytes"`
	MinFreeBytes uint64    `json:"min_free_bytes"`
	Headroom     uint64    `json:"headroom_bytes,omitempty"`
	Queued       int64     `json:"queued"`
	LastCommit   time.Time `json:"last_commit,omitzero"`
	// WriteStall is Pebble's reason while it holds writes back.
	WriteStall string `json:"write_stall,omitempty"`
	// CompactionsWait says why compactions wait for space (space.go);
	// writes go on meanwhile.
	CompactionsWait string `json:"compactions_wait,omitempty"`
}

// health holds the state behind Health. It is built before Pebble opens
// (its listener and file system go into Pebble's options).
type health struct {
	o   HealthOptions
	dir string
	fs  vfs.FS
	log *slog.Logger

	failed atomic.Pointer[error] // set by Pebble's listener, the disk-full hook or Fatalf
	// changed is poked (never blocking) when something Health reports may
	// have turned: a failure, an ENOSPC, compactions waiting for space, the
	// disk below the reserve, a corrupt block, the first work submitted
	// while a watcher rests (Changed, Resting).
	changed chan struct{}
	// diskFullAt (unix nanos) is when a write met ENOSPC that no compaction
	// has claimed yet (space.go); it fails the store after diskFullGrace.
	diskFullAt atomic.Int64
	// compactNeed > 0: compactions wait until this much is free (space.go).
	compactNeed    atomic.Uint64
	compactCheckAt atomic.Int64 // unix nanos of the last look at the free space for them
	// compactFull counts compactions that ended in ENOSPC, compactFullSeen
	// their background errors seen.
	compactFull, compactFullSeen atomic.Int64
	queued                       atomic.Int64 // operations submitted and not yet answered
	lastProgress                 atomic.Int64 // unix nanos: last answered round, or when the queue became non-empty
	lastCommit                   atomic.Int64 // unix nanos of the last round answered
	// resting: a watcher of Changed looks rarely (Resting said so); the
	// next work submitted pokes it.
	resting atomic.Bool

	mu         sync.Mutex
	free       uint64    // free bytes as of freeAt
	freeAt     time.Time // zero: never read
	written    uint64    // bytes staged since freeAt
	diskLow    bool
	writeStall string
	bgErrors   []time.Time // recent background errors
	bgLogged   time.Time

	corruptReason atomic.Pointer[string] // the first corruption met (corrupt.go)
	corruptFiles  map[string]bool        // files logged as corrupt; h.mu
}

func newHealth(dir string, o HealthOptions, log *slog.Logger) *health {
	if o.StallAfter <= 0 {
		o.StallAfter = DefaultStallAfter
	}
	h := &health{o: o, dir: dir, log: log, changed: make(chan struct{}, 1)}
	base := o.FS
	if base == nil {
		base = vfs.Default
	}
	h.fs = vfs.OnDiskFull(base, func() {
		// A compaction's ENOSPC is not a failure (space.go): it says so
		// in its CompactionEnd, soon after. Any other write's is.
		h.diskFullAt.CompareAndSwap(0, time.Now().UnixNano())
		h.poke()
	})
	h.lastProgress.Store(time.Now().UnixNano())
	return h
}

// pebbleOptions puts the health hooks into Pebble's options.
func (h *health) pebbleOptions(po *pebble.Options) {
	po.FS = h.fs
	po.Cleaner = noRecycleCleaner{}
	po.MaxConcurrentCompactions = h.maxCompactions
	po.MemTableStopWritesThreshold = memTableStopWrites
	po.EventListener = &pebble.EventListener{
		BackgroundError: h.backgroundError,
		CompactionEnd:   h.compactionEnd,
		WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
			h.mu.Lock()
			h.writeStall = info.Reason
			h.mu.Unlock()
			h.log.Warn("pebble stopped writes", "reason", info.Reason)
		},
		WriteStallEnd: func() {
			h.mu.Lock()
			h.writeStall = ""
			h.mu.Unlock()
			h.log.Info("pebble resumed writes")
		},
	}
}

// fail records the first failure; later ones are only logged.
func (h *health) fail(err error) {
	if h.failed.CompareAndSwap(nil, &err) {
		h.log.Error("store failed; it takes no more work", "err", err.Error())
	}
	h.poke()
}

// poke says that Health may have changed (Changed); it never blocks.
func (h *health) poke() {
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

// backgroundError is Pebble's report of a failed flush or compaction. A
// full disk or an I/O error fails the store at once; other errors do when
// they repeat (Pebble retries without backoff, so a persistent error comes
// back many times a second).
func (h *health) backgroundError(err error) {
	if isDiskFull(err) && h.compactionENOSPC() {
		return // compactions wait for space (space.go); writes go on
	}
	now := time.Now()
	h.mu.Lock()
	h.bgErrors = append(h.bgErrors, now)
	for len(h.bgErrors) > 0 && now.Sub(h.bgErrors[0]) > backgroundErrorWindow {
		h.bgErrors = h.bgErrors[1:]
	}
	n := len(h.bgErrors)
	logIt := now.Sub(h.bgLogged) > time.Second
	if logIt {
		h.bgLogged = now
	}
	h.mu.Unlock()
	if logIt {
		h.log.Error("pebble background error", "err", err.Error(), "recent", n)
	}
	if pebble.IsCorruptionError(err) {
		h.corrupt(err)
	}
	switch {
	case isDiskFull(err):
		h.fail(fmt.Errorf("disk full: pebble flush or compaction failed: %w", err))
	case errors.Is(err, syscall.EIO):
		h.fail(fmt.Errorf("disk error: pebble flush or compaction failed: %w", err))
	case n >= backgroundErrorBurst:
		h.fail(fmt.Errorf("pebble flushes or compactions keep failing (%d in %v): %w", n, backgroundErrorWindow, err))
	}
}

func isDiskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// fatal is Pebble's Logger.Fatalf: it must not return.
func (h *health) fatal(msg string) {
	err := fmt.Errorf("pebble: %s", msg)
	h.fail(err)
	if h.o.OnFatal != nil {
		h.o.OnFatal(err)
	}
}

// recoverFatal, deferred on the store's goroutines that call into Pebble's
// write path, turns a panic of Pebble into its fatal path: Pebble panics
// when it cannot create a new WAL ("What to do here? Stumbling on doesn't
// seem worthwhile", its rotateWAL), which a full disk causes now that WAL
// files are not recycled (space.go). OnFatal then says it in one line and
// exits; without OnFatal, or if it returns, the panic goes on.
func (h *health) recoverFatal() {
	if r := recover(); r != nil {
		h.fatal(fmt.Sprint(r))
		panic(r)
	}
}

// enqueued counts submitted work; the first of a burst restarts the stall
// clock, and wakes a watcher of Changed that rests (Resting), so that a
// stall is seen within its bounds however rarely the watcher looks at rest.
func (h *health) enqueued() {
	if h.queued.Add(1) == 1 {
		h.lastProgress.Store(time.Now().UnixNano())
		if h.resting.CompareAndSwap(true, false) {
			h.poke()
		}
	}
}

// answered counts out a round's work.
func (h *health) answered(n int) {
	now := time.Now().UnixNano()
	h.lastProgress.Store(now)
	h.lastCommit.Store(now)
	h.queued.Add(-int64(n))
}

// readFree refreshes the free-space figure; h.mu is held.
func (h *health) readFree(now time.Time) {
	u, err := h.fs.GetDiskUsage(h.dir)
	if err != nil {
		// Unknown: keep the last figure (or none) rather than refuse.
		if h.freeAt.IsZero() {
			h.free = ^uint64(0)
		}
		h.freeAt = now
		return
	}
	h.free, h.freeAt, h.written = u.AvailBytes, now, 0
}

// admit refuses a round of size bytes when the disk is (or would be) below
// the reserve.
func (h *health) admit(size int) error {
	if h.o.MinFreeBytes == 0 {
		return nil
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(h.freeAt) > freeCheckEvery || h.diskLow || h.left() < h.reserve()+uint64(size) {
		h.readFree(now)
	}
	if h.left() < h.reserve()+uint64(size) {
		if !h.diskLow {
			h.log.Warn("disk almost full: refusing writes until space is freed", "free_bytes", h.free, "reserve_bytes", h.o.MinFreeBytes,
				"headroom_bytes", h.o.Headroom, "dir", h.dir)
		}
		if !h.diskLow {
			h.poke()
		}
		h.diskLow = true
		return h.lowErr()
	}
	if h.diskLow {
		h.log.Info("disk space freed: taking writes again", "free_bytes", h.free)
	}
	h.diskLow = false
	h.written += uint64(size)
	return nil
}

// reserve is the free space below which commits are refused.
func (h *health) reserve() uint64 { return h.o.MinFreeBytes + h.o.Headroom }

// left is the free space less what was written since it was read; h.mu is held.
func (h *health) left() uint64 {
	if h.written > h.free {
		return 0
	}
	return h.free - h.written
}

// lowErr is the error of a refused commit: "unavailable: disk almost full: ...".
func (h *health) lowErr() error {
	return fmt.Errorf("%w: %w: %s", ferry.ErrUnavailable, ErrDiskLow, h.lowDetail())
}

func (h *health) lowDetail() string {
	if h.o.Headroom > 0 {
		return fmt.Sprintf("%s free under %s, below the reserve of %s (limits.min_free_disk_mb) and the %s the store keeps to flush its memory; free space to resume writes",
			mib(h.left()), h.dir, mib(h.o.MinFreeBytes), mib(h.o.Headroom))
	}
	return fmt.Sprintf("%s free under %s, below the reserve of %s (limits.min_free_disk_mb); free space to resume writes",
		mib(h.left()), h.dir, mib(h.o.MinFreeBytes))
}

func mib(b uint64) string {
	if b == ^uint64(0) {
		return "unknown"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

// failure is the error that stopped the store, nil while it works.
func (s *Store) failure() *error {
	if f := s.failed.Load(); f != nil {
		return f
	}
	return s.h.failed.Load()
}

// Changed receives when something Health reports may have turned (a
// failure, an ENOSPC, compactions waiting for space, the disk below the
// reserve, a corrupt block): a watcher that looks at Health rarely at rest
// looks again at once. One receive may stand for several changes.
func (s *Store) Changed() <-chan struct{} { return s.h.changed }

// Settled reports whether Health needs no prompt second look: nothing is
// queued, no ENOSPC waits for its grace, compactions do not wait for space,
// the disk is above the reserve and the store has not failed (a corrupt
// block stays reported and needs none). Health drives the first ones (the
// ENOSPC grace, the resumption of compactions, a low disk noticed freed),
// so a watcher polls it often while the store is not settled.
func (s *Store) Settled() bool {
	h := s.h
	if h.queued.Load() > 0 || h.diskFullAt.Load() != 0 || h.compactNeed.Load() != 0 || s.failure() != nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.diskLow
}

// Resting reports whether a watcher of Health may look only rarely: the
// store is settled and has committed nothing for quiet. When it says yes,
// the next work submitted wakes Changed; under load, or right after some,
// it says no, so that work does not wake the watcher round after round.
func (s *Store) Resting(quiet time.Duration) bool {
	if !s.Settled() || time.Now().UnixNano()-s.h.lastCommit.Load() < int64(quiet) {
		return false
	}
	s.h.resting.Store(true)
	if s.h.queued.Load() > 0 { // work came in between: it may have seen resting false
		s.h.resting.Store(false)
		return false
	}
	return true
}

// Health reports whether the store can take writes, and why not.
func (s *Store) Health() Health {
	h := s.h
	now := time.Now()
	if at := h.diskFullAt.Load(); at != 0 && now.UnixNano()-at > int64(diskFullGrace) {
		h.fail(fmt.Errorf("disk full: a write under %s failed with ENOSPC", h.dir))
	}
	s.resumeCompactions(now)
	out := Health{CompactionsWait: h.compactionsWait(), Queued: max(h.queued.Load(), 0), MinFreeBytes: h.o.MinFreeBytes, Headroom: h.o.Headroom}
	if lc := h.lastCommit.Load(); lc > 0 {
		out.LastCommit = time.Unix(0, lc).UTC()
	}
	h.mu.Lock()
	if h.o.MinFreeBytes > 0 {
		if now.Sub(h.freeAt) > healthFreeEvery {
			h.readFree(now)
			// An idle store notices a disk that others filled, and one freed.
			h.diskLow = h.left() < h.reserve()
		}
		out.FreeBytes = h.left()
		out.DiskLow = h.diskLow
	} else if u, err := h.fs.GetDiskUsage(h.dir); err == nil {
		out.FreeBytes = u.AvailBytes
	}
	out.WriteStall = h.writeStall
	low := ""
	if out.DiskLow {
		low = ErrDiskLow.Error() + ": " + h.lowDetail()
	}
	h.mu.Unlock()
	if out.Queued > 0 {
		if waited := now.Sub(time.Unix(0, h.lastProgress.Load())); waited > h.o.StallAfter {
			out.Stalled, out.StalledFor = true, waited.Round(time.Millisecond)
		}
	}
	c := h.corruptReason.Load()
	out.Corrupt = c != nil
	switch f := s.failure(); {
	case f != nil:
		out.Failed, out.Reason = true, (*f).Error()
	case c != nil:
		out.Reason = *c
	case out.Stalled:
		out.Reason = fmt.Sprintf("store stalled: no commit finished for %v with %d operations queued", out.StalledFor.Round(time.Second), out.Queued)
		if out.WriteStall != "" {
			out.Reason += " (pebble stopped writes: " + out.WriteStall + ")"
		}
	case low != "":
		out.Reason = low
	}
	out.OK = out.Reason == ""
	return out
}

// CloseWithin is Close bounded by d: a writer blocked in Pebble (a disk
// that hangs) must not hold the process. On timeout the store is left as
// it is, and the error says so; the caller is expected to exit.
func (s *Store) CloseWithin(d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		return fmt.Errorf("store did not close within %v (%s)", d, s.Health().Reason)
	}
}

package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/cockroachdb/pebble/vfs/errorfs"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/wait"
)

// sizedFS reports the free space a test sets.
type sizedFS struct {
	vfs.FS
	free atomic.Uint64
}

func (f *sizedFS) GetDiskUsage(string) (vfs.DiskUsage, error) {
	return vfs.DiskUsage{AvailBytes: f.free.Load(), TotalBytes: 1 << 40}, nil
}

func setAux(ctx context.Context, s *Store, name string) error {
	return s.Update(ctx, func(tx *Txn) error {
		tx.SetAux(name, []byte("v"))
		return nil
	})
}

// TestDiskLowRefusesWritesAndRecovers: below the reserve every commit is
// refused with unavailable: disk almost full, health says why, and writes
// resume by themselves once space is freed.
func TestDiskLowRefusesWritesAndRecovers(t *testing.T) {
	key, _ := newKey(t)
	fs := &sizedFS{FS: vfs.Default}
	fs.free.Store(1 << 30)
	s, err := Open(t.TempDir(), Options{Signer: key, Health: HealthOptions{MinFreeBytes: 64 << 20, FS: fs}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := setAux(ctx, s, "a"); err != nil {
		t.Fatal(err)
	}
	if h := s.Health(); !h.OK || h.FreeBytes == 0 {
		t.Fatalf("healthy store: %+v", h)
	}
	fs.free.Store(10 << 20)
	// The free space is read at most every freeCheckEvery: commit until the
	// store notices.
	i := 0
	wait.For(t, 5*time.Second, "a commit below the reserve is refused", func() bool {
		name := fmt.Sprintf("b%d", i)
		i++
		if err = setAux(ctx, s, name); err == nil {
			return false
		}
		if _, err := s.Aux(name); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a refused commit was written: %v", err)
		}
		return true
	})
	if !errors.Is(err, ErrDiskLow) || !errors.Is(err, ferry.ErrUnavailable) || !strings.Contains(err.Error(), "unavailable: disk almost full") {
		t.Fatalf("commit below the reserve: %v, want unavailable: disk almost full", err)
	}
	h := s.Health()
	if h.OK || !h.DiskLow || !strings.Contains(h.Reason, "disk almost full") {
		t.Fatalf("health below the reserve: %+v", h)
	}
	fs.free.Store(1 << 30)
	if err := setAux(ctx, s, "c"); err != nil {
		t.Fatalf("commit after space was freed: %v", err)
	}
	if h := s.Health(); !h.OK {
		t.Fatalf("health after space was freed: %+v", h)
	}
}

// TestDiskLowCountsWhatARoundWrites: a round that would itself take the disk
// under the reserve is refused, though the disk was above it.
func TestDiskLowCountsWhatARoundWrites(t *testing.T) {
	key, _ := newKey(t)
	fs := &sizedFS{FS: vfs.Default}
	fs.free.Store(65 << 20)
	s, err := Open(t.TempDir(), Options{Signer: key, Health: HealthOptions{MinFreeBytes: 64 << 20, FS: fs}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Update(context.Background(), func(tx *Txn) error {
		tx.SetAux("big", make([]byte, 2<<20))
		return nil
	})
	if !errors.Is(err, ErrDiskLow) {
		t.Fatalf("a 2 MiB round with 1 MiB above the reserve: %v, want disk almost full", err)
	}
}

// TestStallIsReported: work queued with no commit finishing makes the store
// stalled within StallAfter, with the reason; it clears when commits resume.
func TestStallIsReported(t *testing.T) {
	key, _ := newKey(t)
	s, err := Open(t.TempDir(), Options{Signer: key, Health: HealthOptions{StallAfter: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	release := make(chan struct{})
	done := make(chan error, 2)
	// The writer runs transactions: one that blocks holds every commit.
	s.Submit(context.Background(), func(*Txn) error { <-release; return nil }, func(err error) { done <- err })
	s.Submit(context.Background(), func(tx *Txn) error { tx.SetAux("x", nil); return nil }, func(err error) { done <- err })
	var h Health
	wait.Until(t, 5*time.Second, "a stall is reported", func() error {
		if h = s.Health(); !h.Stalled {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
	if h.OK || !strings.Contains(h.Reason, "store stalled") || h.Queued != 2 {
		t.Fatalf("stalled health: %+v", h)
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// The callbacks run before the completer marks the round done: wait
	// for the mark, with a deadline.
	wait.Until(t, 5*time.Second, "the store is healthy after the stall", func() error {
		if h = s.Health(); !h.OK || h.Queued != 0 || h.LastCommit.IsZero() {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
}

// TestDiskFullFailsStoreAndLosesNothing fills the disk under Pebble (every
// write of the data directory fails with ENOSPC) while writers commit: the
// store fails at once with the reason, answers every later commit with an
// error instead of hanging, closes within a bound, and every commit it
// answered ok is there after reopening on a working disk.
func TestDiskFullFailsStoreAndLosesNothing(t *testing.T) {
	key, _ := newKey(t)
	dir := t.TempDir()
	var full atomic.Bool
	fs := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op, path string) error {
		if !full.Load() {
			return nil
		}
		switch op {
		case errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFileSync, errorfs.OpCreate, errorfs.OpFilePreallocate:
			return &os.PathError{Op: "write", Path: path, Err: syscall.ENOSPC}
		}
		return nil
	}))
	fatal := make(chan error, 1)
	s, err := Open(dir, Options{Signer: key, Health: HealthOptions{FS: fs, OnFatal: func(err error) {
		select {
		case fatal <- err:
		default:
		}
		select {} // as ferry run would exit here, this never returns
	}}})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("w%d-%d", w, i)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := setAux(ctx, s, name)
				cancel()
				if err == nil {
					mu.Lock()
					acked = append(acked, name)
					mu.Unlock()
				} else if errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("a commit hung for 10s on a full disk")
					return
				}
			}
		}()
	}
	// The disk fills while the writers commit, after some commits were
	// answered ok (those must be there after the reopening).
	wait.For(t, 5*time.Second, "the writers have commits answered ok", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 8
	})
	full.Store(true)
	wait.Until(t, 5*time.Second, "the store fails on a full disk", func() error {
		select {
		case err := <-fatal:
			t.Logf("pebble fatal: %v", err)
		default:
		}
		if h := s.Health(); !h.Failed {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
	h := s.Health()
	if h.OK || !strings.Contains(h.Reason, "no space left on device") && !strings.Contains(h.Reason, "disk full") {
		t.Fatalf("failed health: %+v", h)
	}
	close(stop)
	wg.Wait()
	if err := setAux(context.Background(), s, "after"); err == nil {
		t.Fatal("a commit after the failure succeeded")
	}
	if err := s.CloseWithin(5 * time.Second); err != nil {
		t.Logf("close: %v", err)
	}
	full.Store(false)
	s2 := open(t, dir, key)
	for _, name := range acked {
		if _, err := s2.Aux(name); err != nil {
			t.Fatalf("%s was answered ok and is gone after reopening: %v", name, err)
		}
	}
	t.Logf("%d commits answered ok before the disk filled, all there after reopening", len(acked))
}

// TestRestingWakesOnWork: a store that committed nothing for the quiet
// period is resting, and the first work submitted then pokes Changed (a
// watcher that looks rarely at rest sees a stall in time); right after a
// commit it is not resting, and work does not poke.
func TestRestingWakesOnWork(t *testing.T) {
	key, _ := newKey(t)
	s := open(t, t.TempDir(), key)
	drain := func() {
		for {
			select {
			case <-s.Changed():
			default:
				return
			}
		}
	}
	commit := func() {
		if err := s.Update(context.Background(), func(tx *Txn) error { tx.SetAux("x", nil); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	commit()
	wait.Until(t, 5*time.Second, "the round is marked done", func() error {
		if !s.Settled() {
			return errors.New("not settled")
		}
		return nil
	})
	if s.Resting(time.Hour) {
		t.Fatal("resting right after a commit")
	}
	drain()
	commit()
	select {
	case <-s.Changed():
		t.Fatal("work poked Changed while the watcher was not resting")
	default:
	}
	wait.Until(t, 5*time.Second, "resting once the quiet period passed", func() error {
		if !s.Resting(50 * time.Millisecond) {
			return errors.New("not resting")
		}
		return nil
	})
	drain()
	commit()
	select {
	case <-s.Changed():
	default:
		t.Fatal("the first work after a rest did not poke Changed")
	}
}

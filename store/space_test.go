package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/cockroachdb/pebble/vfs/errorfs"

	"github.com/ferrynet/ferry/internal/wait"
)

// TestCompactionOutOfSpaceWaits: a compaction that meets ENOSPC does not
// fail the store (it used to: every start of a node whose compaction at
// open did not fit exited, issue 16). Compactions wait, health says so
// without turning unhealthy, commits go on, and compactions resume once
// the space they need is free.
func TestCompactionOutOfSpaceWaits(t *testing.T) {
	key, _ := newKey(t)
	var sstFull atomic.Bool
	efs := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op, path string) error {
		if !sstFull.Load() || !strings.HasSuffix(path, ".sst") {
			return nil
		}
		switch op {
		case errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFileSync, errorfs.OpCreate, errorfs.OpFilePreallocate:
			return &os.PathError{Op: "write", Path: path, Err: syscall.ENOSPC}
		}
		return nil
	}))
	fs := &sizedFS{FS: efs}
	fs.free.Store(1 << 40)
	s, err := Open(t.TempDir(), Options{Signer: key, Health: HealthOptions{FS: fs}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for i := range 4 {
		if err := setAux(ctx, s, fmt.Sprintf("a%d", i)); err != nil {
			t.Fatal(err)
		}
		if err := s.db.Flush(); err != nil { // one L0 table each
			t.Fatal(err)
		}
	}
	sstFull.Store(true)
	fs.free.Store(1 << 20)
	if err := s.db.Compact([]byte{0}, []byte{0xff}, false); err == nil {
		t.Fatal("a compaction on a full disk succeeded")
	}
	h := s.Health()
	if h.Failed || h.CompactionsWait == "" {
		t.Fatalf("after a compaction ran out of space: %+v; want not failed, compactions waiting", h)
	}
	if err := setAux(ctx, s, "during"); err != nil {
		t.Fatalf("a commit while compactions wait: %v", err)
	}
	t.Logf("waiting: %s", h.CompactionsWait)
	// Space is freed: compactions resume (Health looks at most every compactResumeEvery).
	sstFull.Store(false)
	fs.free.Store(1 << 40)
	wait.Until(t, 10*time.Second, "compactions resume after space was freed", func() error {
		if h := s.Health(); h.CompactionsWait != "" {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
	if err := s.db.Compact([]byte{0}, []byte{0xff}, false); err != nil {
		t.Fatalf("a compaction once space is free: %v", err)
	}
	if h := s.Health(); !h.OK {
		t.Fatalf("health after: %+v", h)
	}
	for _, name := range []string{"a0", "a3", "during"} {
		if _, err := s.Aux(name); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// TestNoWALRecycling: a WAL file is deleted once its memtable is flushed;
// Pebble's recycling used to keep up to three (55 MB with preallocation)
// that the reserve check counted as used (issue 16).
func TestNoWALRecycling(t *testing.T) {
	key, _ := newKey(t)
	dir := t.TempDir()
	s := open(t, dir, key)
	ctx := context.Background()
	for i := range 5 {
		if err := setAux(ctx, s, fmt.Sprintf("a%d", i)); err != nil {
			t.Fatal(err)
		}
		if err := s.db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	wait.Until(t, 5*time.Second, "after 5 flushes no WAL file is recycled and one is on disk", func() error {
		m := s.db.Metrics()
		logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		if m.WAL.ObsoleteFiles != 0 || len(logs) != 1 {
			return fmt.Errorf("%d recycled WAL files (%d bytes), WAL files on disk %v", m.WAL.ObsoleteFiles, m.WAL.ObsoletePhysicalSize, logs)
		}
		return nil
	})
}

// TestReleaseWALSpace: the blocks preallocated past the end of a stopped
// store's WAL files are given back, the data kept; RecoveryNeed counts the
// WAL to replay and a new WAL.
func TestReleaseWALSpace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "000004.log")
	if err := os.WriteFile(path, []byte("wal"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	const keepSize = 1 // FALLOC_FL_KEEP_SIZE
	err = syscall.Fallocate(int(f.Fd()), keepSize, 3, 8<<20)
	_ = f.Close()
	if err != nil {
		t.Skipf("fallocate not supported here: %v", err)
	}
	blocks := func() int64 {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks * 512
	}
	if b := blocks(); b < 4<<20 {
		t.Skipf("this file system keeps no preallocation past the end (%d bytes)", b)
	}
	if err := ReleaseWALSpace(dir); err != nil {
		t.Fatal(err)
	}
	if b := blocks(); b >= 1<<20 {
		t.Fatalf("%d bytes still allocated after ReleaseWALSpace", b)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "wal" {
		t.Fatalf("WAL after: %q %v", b, err)
	}
	n, err := RecoveryNeed(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n.WALBytes != 3 || n.Bytes != 3+walPrealloc+openMargin || n.Free == 0 {
		t.Fatalf("need: %+v", n)
	}
	if !strings.Contains(n.String(), "needs") {
		t.Fatalf("need line: %s", n)
	}
}

// TestNewWALOnFullDiskIsFatal: Pebble panics when it cannot create a new
// WAL (a full disk, now that WAL files are not recycled); the store turns
// that into its fatal path (OnFatal: ferry run's one line and exit 1)
// instead of a crash with a stack trace. The store is wedged afterwards
// (Pebble panicked holding its mutex), so the scenario runs in a child
// process that OnFatal ends, as ferry run's does.
func TestNewWALOnFullDiskIsFatal(t *testing.T) {
	if os.Getenv("FERRY_STORE_WAL_CHILD") == "1" {
		newWALOnFullDisk(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestNewWALOnFullDiskIsFatal$", "-test.count=1")
	// The child's store lives in the parent's temporary directory: the
	// child ends in os.Exit, which skips its own t.TempDir cleanup.
	cmd.Env = append(os.Environ(), "FERRY_STORE_WAL_CHILD=1", "FERRY_STORE_WAL_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(string(out), "fatal: pebble: open ") || !strings.Contains(string(out), "no space left on device") {
		t.Fatalf("child: %v, want exit 3 from OnFatal naming the full disk:\n%s", err, out)
	}
	t.Logf("child: %s", lastLine(string(out)))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func newWALOnFullDisk(t *testing.T) {
	key, _ := newKey(t)
	var full atomic.Bool
	fs := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op, path string) error {
		if full.Load() && op == errorfs.OpCreate && strings.HasSuffix(path, ".log") {
			return &os.PathError{Op: "open", Path: path, Err: syscall.ENOSPC}
		}
		return nil
	}))
	dir := os.Getenv("FERRY_STORE_WAL_DIR")
	if dir == "" {
		t.Fatal("FERRY_STORE_WAL_DIR: the parent's directory for the store")
	}
	s, err := Open(dir, Options{Signer: key, Health: HealthOptions{FS: fs, OnFatal: func(err error) {
		fmt.Fprintf(os.Stderr, "fatal: %v\n", err)
		os.Exit(3)
	}}})
	if err != nil {
		t.Fatal(err)
	}
	full.Store(true)
	big := make([]byte, 64<<10)
	// Commits until the memtable (256 KiB at first) is full and Pebble
	// needs a new WAL; OnFatal ends the process.
	for i := range 1000 {
		err := s.Update(context.Background(), func(tx *Txn) error {
			tx.SetAux(fmt.Sprintf("b%d", i), big)
			return nil
		})
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
	t.Fatal("64 MiB committed and no new WAL needed")
}

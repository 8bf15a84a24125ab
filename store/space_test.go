package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/cockroachdb/pebble/vfs/errorfs"
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
	deadline := time.Now().Add(10 * time.Second)
	for h = s.Health(); h.CompactionsWait != ""; h = s.Health() {
		if time.Now().After(deadline) {
			t.Fatalf("compactions still wait 10s after space was freed: %+v", h)
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := s.db.Metrics()
		logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		if m.WAL.ObsoleteFiles == 0 && len(logs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5 flushes: %d recycled WAL files (%d bytes), WAL files on disk %v; want none recycled, one on disk",
				m.WAL.ObsoleteFiles, m.WAL.ObsoletePhysicalSize, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
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

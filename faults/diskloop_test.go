package faults

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/store"
)

// dirSize is the bytes of the regular files under dir.
func dirSize(dir string) uint64 {
	var n uint64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += uint64(fi.Size())
		}
		return nil
	})
	return n
}

// listDir lists the files of dir with their sizes (for a failure message).
func listDir(dir string) string {
	es, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, e := range es {
		if fi, err := e.Info(); err == nil {
			var blocks int64
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				blocks = st.Blocks * 512
			}
			fmt.Fprintf(&b, "  %s %d (%d on disk)\n", e.Name(), fi.Size(), blocks)
		}
	}
	return b.String()
}

// TestDiskFullNoReserveLoop is issue 16's crash loop: with no free-space
// reserve (limits.min_free_disk_mb: 0) a node's home on a small file system
// is filled to the last byte while an app writes, the node stops (it exits
// by itself on ENOSPC, or is SIGKILLed or SIGTERMed), the filler is
// deleted, and the node starts again, cycle after cycle. Every start once
// space exists must succeed and take writes, and every acknowledged create
// is held at the end. Twice the node is started before space is freed: it
// must wait, /healthz 503 saying how much it needs and how much is free,
// start once the space exists, and stop cleanly on SIGTERM while it waits. (Issue 16: on a 128 MB file system, after about 8
// cycles every start exited within 0.3 s with `ferry: disk full ...
// ENOSPC` while 48 MB were free.)
func TestDiskFullNoReserveLoop(t *testing.T) {
	const (
		cycles     = 20   // long runs too: the store grows each cycle and must stay inside the disk
		perCycle   = 500  // creates the node must take each cycle before its disk is filled
		fullWrites = 1000 // the most it may take after that in a cycle
		pad        = 768  // payload bytes of a create: about 2 MB of store a cycle, 40 MB after 20
		waitCycle  = 7    // the node is started before space is freed: it waits, then starts
		termCycle  = 13   // the same, and it is stopped with SIGTERM while it waits
	)
	dir, kind := smallFS(t, 96)
	home := filepath.Join(dir, "home")
	a := proc.New(t, proc.Options{Name: "A", Home: home, Configure: func(c *node.Config) {
		c.Limits.MinFreeDiskMB = 0
	}})
	a.Start()
	filler := filepath.Join(dir, "filler")
	tl := newTally()
	exits := 0
	for cycle := range cycles {
		app := connect(t, a.NATSURL())
		ctx, cancel := context.WithCancel(context.Background())
		wg := load(ctx, app, 4, pad, fmt.Sprintf("z%d", cycle), 10*time.Second, tl)
		// Space exists: the node takes writes and stays up (a node whose
		// recovery cannot finish on this disk exits here: issue 16).
		before := len(tl.ackedIDs())
		wait.Until(t, 60*time.Second, fmt.Sprintf("cycle %d: %d writes are acknowledged", cycle, perCycle), func() error {
			if !a.Running() {
				cancel()
				wg.Wait()
				t.Fatalf("cycle %d: the node exited with %.1f MiB free after %d writes: %q\n%s", cycle,
					float64(freeBytes(t, dir))/(1<<20), len(tl.ackedIDs())-before, lastLine(a.StderrAll()), listDir(filepath.Join(home, "data")))
			}
			if n := len(tl.ackedIDs()) - before; n < perCycle {
				return fmt.Errorf("%d writes with %.1f MiB free: %s", n, float64(freeBytes(t, dir))/(1<<20), tl)
			}
			return nil
		})
		fill(t, dir, filler, 0)
		// The disk is full: the node's next WAL finds no room and it exits
		// on ENOSPC (within a few memtables of writes). If it has not
		// within a bound, it is stopped as the finding did.
		// It writes at most fullWrites more, so that the store stays well
		// inside the file system over all the cycles.
		how := ""
		deadline := time.Now().Add(15 * time.Second)
		for how == "" && len(tl.ackedIDs()) < before+perCycle+fullWrites && time.Now().Before(deadline) {
			select {
			case <-a.Exited():
				how = "exited by itself"
			case <-time.After(20 * time.Millisecond):
			}
		}
		cancel()
		wg.Wait()
		app.Close()
		if how == "" {
			if cycle%2 == 0 {
				a.Kill()
				how = "SIGKILL"
			} else {
				code := a.Term(40 * time.Second)
				how = fmt.Sprintf("SIGTERM, exit %d", code)
			}
		} else {
			exits++
			code := a.Wait(10 * time.Second)
			last := lastLine(a.StderrAll())
			if code == 0 || !strings.HasPrefix(last, "ferry: ") || !(strings.Contains(last, "disk") || strings.Contains(last, "no space")) {
				t.Fatalf("cycle %d: the node exited %d on a full disk; want non-zero with one line naming the disk, got %q", cycle, code, last)
			}
			how += fmt.Sprintf(" (%d)", code)
		}
		switch cycle {
		case waitCycle, termCycle:
			// Started while the disk is still full: it waits, unhealthy,
			// saying what it needs, instead of exiting. (The test gives back
			// the WAL preallocation first, as the node would, and fills what
			// that freed, so that there is no room.)
			if err := store.ReleaseWALSpace(filepath.Join(home, "data")); err != nil {
				t.Fatal(err)
			}
			fill(t, dir, filler, 0)
			started := make(chan error, 1)
			go func() { started <- a.StartErr() }()
			took := waitHealthz(t, a, 503, "waiting for disk space", 30*time.Second)
			_, body := a.Healthz()
			if !a.Running() || !strings.Contains(body, "needs") || !strings.Contains(body, "free") {
				t.Fatalf("cycle %d: a start on a full disk: running %v, /healthz %q", cycle, a.Running(), body)
			}
			how += fmt.Sprintf("; started on the full disk: 503 after %v (%s)", took.Round(time.Millisecond), strings.TrimSpace(strings.SplitN(body, "\n", 2)[0]))
			if cycle == termCycle {
				// SIGTERM while it waits stops it cleanly.
				if code := a.Term(10 * time.Second); code != 0 {
					t.Fatalf("cycle %d: exit %d after SIGTERM while waiting for space:\n%s", cycle, code, a.Stderr())
				}
				<-started // it exited while starting: StartErr says so
				how += "; SIGTERM while waiting: exit 0"
				release(t, filler)
				break
			}
			release(t, filler)
			if err := <-started; err != nil {
				t.Fatalf("cycle %d: the node waiting for space did not start once it was freed: %v", cycle, err)
			}
			how += "; started once freed"
			t.Logf("cycle %d: %s; store %.1f MiB; %s", cycle, how, float64(dirSize(home))/(1<<20), tl)
			continue
		default:
			release(t, filler)
		}
		free := freeBytes(t, dir)
		if err := a.StartErr(); err != nil {
			t.Fatalf("cycle %d: the node stopped (%s) and does not start again with %.1f MiB free: %v\n%s",
				cycle, how, float64(free)/(1<<20), err, listDir(filepath.Join(home, "data")))
		}
		t.Logf("cycle %d: %s; restarted with %.1f MiB free, store %.1f MiB; %s", cycle, how,
			float64(free)/(1<<20), float64(dirSize(home))/(1<<20), tl)
	}
	acked := tl.ackedIDs()
	holdsAll(t, a, acked, 60*time.Second)
	t.Logf("%d cycles on %s (reserve 0), %d exits on ENOSPC, %d acknowledged creates held: %s", cycles, kind, exits, len(acked), tl)
}

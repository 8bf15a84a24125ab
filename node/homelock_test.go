package node_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrynet/ferry/internal/wording"
	"github.com/ferrynet/ferry/node"
)

// TestHomeLockSaysWhoHoldsIt: a home is held by one Lock at a time; a
// second is refused with the holder's pid, command, node name and start
// time; Unlock frees the home; a record left by a holder that is gone (the
// lock is free) does not stop the next one.
func TestHomeLockSaysWhoHoldsIt(t *testing.T) {
	h := node.Home{Dir: t.TempDir()}
	l, err := h.Lock("A")
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.Lock("B")
	var inUse *node.HomeInUseError
	if !errors.As(err, &inUse) || !errors.Is(err, node.ErrHomeInUse) {
		t.Fatalf("second lock: %v, want a HomeInUseError", err)
	}
	abs, _ := filepath.Abs(h.Dir)
	want := fmt.Sprintf("home %s is in use by %s (pid %d, node A, started ", abs, filepath.Base(os.Args[0]), os.Getpid())
	if msg := err.Error(); !strings.HasPrefix(msg, want) || !strings.HasSuffix(msg, " UTC); stop it first or use another --home") {
		t.Fatalf("second lock says %q, want %q...", msg, want)
	}
	if g := wording.GoInternals(err.Error()); g != "" {
		t.Fatalf("%q speaks Go (%q)", err, g)
	}
	// A node on a held home is refused the same way, before it opens anything.
	if _, err := h.Init(node.InitOptions{Name: "B"}); err != nil {
		t.Fatal(err)
	}
	cfg := node.Default()
	cfg.Name = "B"
	if _, err := node.New(cfg, h, node.Options{}); !errors.Is(err, node.ErrHomeInUse) {
		t.Fatalf("node.New on a held home: %v", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatalf("a second Unlock: %v", err)
	}
	// The record stays after Unlock (the next holder writes over it).
	if b, err := os.ReadFile(h.LockPath()); err != nil || !strings.Contains(string(b), `"node":"A"`) {
		t.Fatalf("the record after Unlock: %q %v", b, err)
	}
	// A stale record (its process is gone: the lock is free), longer than
	// the next, is replaced whole.
	stale := `{"pid":999999,"command":"ferry run","node":"` + strings.Repeat("gone", 50) + `","started":"2020-01-01T00:00:00Z"}`
	if err := os.WriteFile(h.LockPath(), []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}
	l2, err := h.Lock("C")
	if err != nil {
		t.Fatalf("lock over a stale record: %v", err)
	}
	defer l2.Unlock()
	b, err := os.ReadFile(h.LockPath())
	var rec node.Holder
	if err != nil || json.Unmarshal(b, &rec) != nil || rec.PID != os.Getpid() || rec.Node != "C" {
		t.Fatalf("the record after the stale one: %s %v", b, err)
	}
}

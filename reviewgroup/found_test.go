package reviewgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferrynet/ferry/internal/wait"
)

// TestFounderWithStateGrowsFromASnapshot: a founder whose state machine
// holds state from before the group (Config.PriorState) bootstraps a group
// of itself alone although three are listed, takes a snapshot that
// compacts its log, and the listed members, which wait instead of
// bootstrapping, are added and receive that state by InstallSnapshot, then
// the log from there: every member holds the same sequence.
func TestFounderWithStateGrowsFromASnapshot(t *testing.T) {
	c := newCluster(t, 3)
	a, b, d := c.members[0], c.members[1], c.members[2]
	pre := []string{"pre-1", "pre-2", "pre-3", "pre-4", "pre-5"}
	c.tune = func(cfg *Config) {
		if cfg.Host.ID() != a.id {
			return
		}
		cfg.PriorState = true
		r := cfg.FSM.(*recorder)
		for i, id := range pre {
			r.applied = append(r.applied, id)
			r.answers[id] = outcome{Result: fmt.Sprintf("%s#%d", id, i+1)}
		}
	}
	all := c.ids(a, b, d)
	a.start(all)
	b.start(all)
	d.start(all)
	if l := c.leader(10*time.Second, a); l != a {
		t.Fatalf("%s leads, want the founder A", l.name)
	}
	wait.Until(t, 10*time.Second, "the founder's snapshot", func() error {
		if a.group.founding.Load() {
			return errors.New("still founding")
		}
		if _, err := os.Stat(filepath.Join(a.dir, foundingFile)); err == nil {
			return errors.New("the founding mark is still there")
		}
		return nil
	})
	if got := a.group.voters(); !slices.Equal(got, c.ids(a)) {
		t.Fatalf("the founder bootstrapped %v, want itself alone", got)
	}
	// The log's first entry is gone: a member added is sent the snapshot.
	if first, err := a.group.logs.FirstIndex(); err != nil || first == 1 {
		t.Fatalf("the founder's log starts at %d (%v), want its start compacted", first, err)
	}
	if s := b.group.State(); s != raft.Follower {
		t.Fatalf("a listed member waiting to be added is %s", s)
	}
	a.mustApply("founded")
	want := append(slices.Clone(pre), "founded")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.group.AddVoter(ctx, b.id); err != nil {
		t.Fatal(err)
	}
	if err := b.group.AddVoter(ctx, d.id); err != nil { // forwarded to A
		t.Fatal(err)
	}
	c.sameSequence(10*time.Second, want, a, b, d)
	if b.fsm.restored() == 0 || d.fsm.restored() == 0 {
		t.Fatalf("the added members restored %d and %d snapshots, want one each", b.fsm.restored(), d.fsm.restored())
	}
	d.mustApply("grown")
	want = append(want, "grown")
	c.sameSequence(5*time.Second, want, a, b, d)
	if got := a.group.voters(); len(got) != 3 {
		t.Fatalf("voters %v", got)
	}
}

package reviewgroup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/wait"
)

// Three members elect a leader; a command applied on the leader and one
// applied on each follower (forwarded) reach every state machine in one
// order; a follower's state machine holds its command when Apply returns;
// a refusal of the state machine crosses the wire as its Ferry error; a
// repeated id gets the first answer and is not applied again.
func TestElectAndApply(t *testing.T) {
	c := newCluster(t, 3)
	for _, m := range c.members {
		m.start(c.ids(c.members...))
	}
	start := time.Now()
	l := c.leader(10*time.Second, c.members...)
	t.Logf("first election: %s leads after %v", l.name, time.Since(start).Round(time.Millisecond))

	l.mustApply("on-leader")
	var want = []string{"on-leader"}
	for _, m := range c.members {
		if m == l {
			continue
		}
		id := "on-" + m.name
		m.mustApply(id)
		want = append(want, id)
		// Read-your-writes on the follower: no wait.
		if !m.fsm.has(id) {
			t.Fatalf("%s's state machine lacks %s when Apply returned", m.name, id)
		}
	}
	c.sameSequence(5*time.Second, want, c.members...)

	// A refusal, forwarded: the leader's error comes back as the sentinel.
	f := c.members[0]
	if f == l {
		f = c.members[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	refuse, _ := json.Marshal(cmd{ID: "nope", Refuse: true})
	_, err := f.group.Apply(ctx, refuse)
	var re *RemoteError
	if !errors.Is(err, ferry.ErrConflict) || !errors.As(err, &re) || re.From != l.id || !strings.Contains(err.Error(), "nope refused by the state machine") {
		t.Fatalf("a refused command forwarded by %s answered %v, want the leader's conflict", f.name, err)
	}
	if _, err := l.group.Apply(ctx, refuse); !errors.Is(err, ferry.ErrConflict) {
		t.Fatalf("a refused command on the leader answered %v, want conflict", err)
	}

	// The same id again, from another member: the first answer, not applied twice.
	res, err := f.apply("on-leader")
	if err != nil || string(res) != "on-leader#1" {
		t.Fatalf("a repeated id answered %q, %v; want the first answer on-leader#1", res, err)
	}
	c.sameSequence(5*time.Second, want, c.members...)
	wait.For(t, 5*time.Second, "every member deduplicated the repeat", func() bool {
		for _, m := range c.members {
			if m.fsm.duplicates() != 2 { // nope again, on-leader again
				return false
			}
		}
		return true
	})

	// Bad input: a command over the limit, and one the state machine cannot read.
	if _, err := f.group.Apply(ctx, make([]byte, DefaultMaxCommandBytes+1)); !errors.Is(err, ferry.ErrTooLarge) {
		t.Fatalf("an oversize command answered %v, want too_large", err)
	}
	if _, err := f.group.Apply(ctx, []byte("{")); !errors.Is(err, ferry.ErrBadRequest) {
		t.Fatalf("a command the state machine cannot read answered %v, want bad_request", err)
	}

	// Barrier on a follower: its state machine holds everything committed before.
	l.mustApply("before-barrier")
	if err := f.group.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if !f.fsm.has("before-barrier") {
		t.Fatalf("%s's state machine lacks a command committed before its Barrier returned", f.name)
	}
	if err := l.group.Barrier(ctx); err != nil {
		t.Fatal(err)
	}

	// Servers, from a follower: every voter with its own status.
	servers, err := f.group.Servers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(servers) != 3 {
		t.Fatalf("Servers listed %d servers, want 3: %+v", len(servers), servers)
	}
	for _, s := range servers {
		if s.Status == nil {
			t.Fatalf("%s: no status: %s", s.Name, s.Error)
		}
		if s.Leader != (s.ID == l.id) || (s.ID == l.id) != (s.Status.State == "Leader") {
			t.Fatalf("%s: leader %v, state %s; the leader is %s", s.Name, s.Leader, s.Status.State, l.name)
		}
		if s.Status.AppliedIndex == 0 || s.Status.Leader != l.id {
			t.Fatalf("%s's status %+v", s.Name, *s.Status)
		}
		if s.Leader && s.LastHeard.IsZero() {
			t.Fatalf("%s has not heard from the leader", f.name)
		}
	}
	// The leader hears from every follower.
	servers, err = l.group.Servers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		if !s.Self && (s.LastHeard.IsZero() || s.Status == nil || s.Status.State != "Follower") {
			t.Fatalf("the leader's view of %s: %+v", s.Name, s)
		}
	}

	// Metrics.
	for _, m := range c.members {
		for name, want := range map[string]float64{
			"ferry_review_group_has_leader":           1,
			"ferry_review_group_leader_changes_total": 1,
		} {
			if v, ok := m.gauge(name); !ok || v != want {
				t.Errorf("%s: %s = %v (present %v), want %v", m.name, name, v, ok, want)
			}
		}
		if v, _ := m.gauge("ferry_review_group_applied_index"); v < float64(len(want)) {
			t.Errorf("%s: applied index %v", m.name, v)
		}
	}
	if v, _ := l.gauge("ferry_review_group_is_leader"); v != 1 {
		t.Errorf("the leader's is_leader is %v", v)
	}
	if v, ok := l.gauge("ferry_review_group_peer_last_heard_seconds"); !ok || v > 10 {
		t.Errorf("the leader's peer_last_heard_seconds: %v (present %v)", v, ok)
	}
	if v, _ := f.gauge("ferry_review_group_applies_total"); v < 4 {
		t.Errorf("%s counted %v applies", f.name, v)
	}
	if v, _ := l.gauge("ferry_review_group_forwards_served_total"); v < 4 {
		t.Errorf("the leader counted %v forwarded requests served", v)
	}
}

// writeDuring has each writer apply n commands of its own, retrying a
// command that failed as unavailable with the same id (the pattern of the
// review service), and runs event once a third of them are applied. It
// returns the ids written and how many retries there were.
func writeDuring(t *testing.T, writers []*member, prefix string, n int, event func()) (ids []string, retries int64) {
	t.Helper()
	var done, retried atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, len(writers))
	for _, w := range writers {
		for i := range n {
			ids = append(ids, fmt.Sprintf("%s%s-%02d", prefix, w.name, i))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				id := fmt.Sprintf("%s%s-%02d", prefix, w.name, i)
				for attempt := 0; ; attempt++ {
					_, err := w.apply(id)
					if err == nil {
						break
					}
					if !errors.Is(err, ferry.ErrUnavailable) || attempt == 20 {
						errs <- fmt.Errorf("%s: apply %s: %w", w.name, id, err)
						return
					}
					retried.Add(1)
				}
				done.Add(1)
			}
		}()
	}
	wait.For(t, 20*time.Second, "a third of the commands applied", func() bool { return done.Load() >= int64(len(writers)*n/3) })
	event()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return ids, retried.Load()
}

// others are the members but m.
func (c *cluster) others(m *member) []*member {
	var out []*member
	for _, o := range c.members {
		if o != m {
			out = append(out, o)
		}
	}
	return out
}

// checkOnce checks that seq holds every id of ids exactly once.
func checkOnce(t *testing.T, seq, ids []string) {
	t.Helper()
	count := map[string]int{}
	for _, id := range seq {
		count[id]++
	}
	for _, id := range ids {
		if count[id] != 1 {
			t.Fatalf("%s applied %d times; the sequence: %v", id, count[id], short(seq))
		}
	}
}

// The leader closes while the two followers apply commands: it hands its
// leadership over, a new leader takes over, and every command is applied
// exactly once, in one order on both. The closed member then starts again
// from its directory with an empty state machine: raft replays the log into
// it and it takes part again. Then the new leader fails hard (cut off at
// the libp2p level, then closed, so it cannot hand over): the others elect
// a leader after their heartbeat timeout, and the writers' commands that
// failed as unavailable meanwhile are retried with their ids, none lost and
// none applied twice.
func TestLeaderCloseAndRestart(t *testing.T) {
	c := newCluster(t, 3)
	for _, m := range c.members {
		m.start(c.ids(c.members...))
	}
	old := c.leader(10*time.Second, c.members...)
	writers := c.others(old)
	ids, retries := writeDuring(t, writers, "close-", 20, func() {
		closing := time.Now()
		old.closeGroup()
		closed := time.Since(closing)
		nl := c.leader(10*time.Second, writers...)
		t.Logf("figure: leader %s closed (Close took %v, handing over leadership); %s leads %v after Close began",
			old.name, closed.Round(time.Millisecond), nl.name, time.Since(closing).Round(time.Millisecond))
	})
	want := writers[0].fsm.sequence()
	c.sameSequence(5*time.Second, want, writers...)
	checkOnce(t, want, ids)
	t.Logf("%d commands, %d retries after unavailable, %d repeats answered from the state machine's ids",
		len(want), retries, writers[0].fsm.duplicates())

	// The old leader starts again from its directory: the log survived, its
	// new state machine is filled by replay, and it takes part again.
	old.restart(nil)
	c.sameSequence(10*time.Second, want, old)
	old.mustApply("after-restart")
	want = append(want, "after-restart")
	c.sameSequence(5*time.Second, want, c.members...)
	if old.group.State() != raft.Follower {
		t.Fatalf("the restarted member is %s, want Follower", old.group.State())
	}

	// A hard failure of the leader.
	dead := c.leader(10*time.Second, c.members...)
	writers = c.others(dead)
	ids, retries = writeDuring(t, writers, "crash-", 20, func() {
		failed := time.Now()
		c.cut(dead, true)
		dead.closeGroup()
		nl := c.leader(10*time.Second, writers...)
		t.Logf("figure: leader %s failed (cut off, then closed); %s leads %v after the failure",
			dead.name, nl.name, time.Since(failed).Round(time.Millisecond))
	})
	seq := writers[0].fsm.sequence()
	c.sameSequence(5*time.Second, seq, writers...)
	checkOnce(t, seq, ids)
	if !slices.Equal(seq[:len(want)], want) {
		t.Fatalf("the history changed: %v, was %v", short(seq[:len(want)]), short(want))
	}
	t.Logf("%d commands, %d retries after unavailable, %d repeats answered from the state machine's ids",
		len(seq)-len(want), retries, writers[0].fsm.duplicates())
}

// The whole group stops and starts again from its directories with empty
// state machines: the log is on disk, so every member replays the same
// sequence; a Bootstrap given to a member with state is ignored (the
// configuration stays the three voters).
func TestRestartAllFromDisk(t *testing.T) {
	c := newCluster(t, 3)
	for _, m := range c.members {
		m.start(c.ids(c.members...))
	}
	l := c.leader(10*time.Second, c.members...)
	var want []string
	for i := range 5 {
		id := fmt.Sprintf("x%d", i)
		c.members[i%3].mustApply(id)
		want = append(want, id)
	}
	c.sameSequence(5*time.Second, want, c.members...)
	for _, m := range c.members {
		m.stop()
	}
	for _, m := range c.members {
		m.newHost()
	}
	for _, m := range c.members {
		m.start(c.ids(c.members[0])) // a different Bootstrap: ignored
	}
	l = c.leader(10*time.Second, c.members...)
	c.sameSequence(10*time.Second, want, c.members...)
	if vs := l.group.voters(); len(vs) != 3 {
		t.Fatalf("after the restart the group has voters %v, want the three", vs)
	}
	l.mustApply("again")
	c.sameSequence(5*time.Second, append(want, "again"), c.members...)
}

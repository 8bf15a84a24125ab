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
	"github.com/ferrynet/ferry/protocols/pb"
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
	c.leader(10*time.Second, c.members...)
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
	l := c.leader(10*time.Second, c.members...)
	c.sameSequence(10*time.Second, want, c.members...)
	if vs := l.group.voters(); len(vs) != 3 {
		t.Fatalf("after the restart the group has voters %v, want the three", vs)
	}
	l.mustApply("again")
	c.sameSequence(5*time.Second, append(want, "again"), c.members...)
}

// Fencing: the leader is cut off from the other two at the libp2p level. A
// command applied on it fails as unavailable (it cannot commit; its lease
// runs out and it steps down), and none of it reaches a state machine; the
// majority elects a leader and goes on; once the old leader has stepped
// down it answers that no leader is reachable, naming the group and whom
// it reaches. After the heal the old leader follows the new one and all
// three hold one history, without the command of the cut; retried with its
// id, that command is applied once.
func TestPartitionFencesOldLeader(t *testing.T) {
	c := newCluster(t, 3)
	for _, m := range c.members {
		m.start(c.ids(c.members...))
	}
	old := c.leader(10*time.Second, c.members...)
	old.mustApply("before")
	c.sameSequence(5*time.Second, []string{"before"}, c.members...)
	majority := c.others(old)

	cut := time.Now()
	c.cut(old, true)
	_, err := old.apply("cut-1")
	t.Logf("figure: Apply on the cut-off leader %s failed after %v: %v", old.name, time.Since(cut).Round(time.Millisecond), err)
	if !errors.Is(err, ferry.ErrUnavailable) {
		t.Fatalf("Apply on the cut-off leader answered %v, want unavailable", err)
	}
	nl := c.leader(10*time.Second, majority...)
	t.Logf("figure: after the cut, %s leads the majority %v after the cut", nl.name, time.Since(cut).Round(time.Millisecond))
	want := []string{"before"}
	for i, m := range []*member{majority[0], majority[1], majority[0]} {
		id := fmt.Sprintf("majority-%d", i)
		m.mustApply(id)
		want = append(want, id)
	}
	c.sameSequence(5*time.Second, want, majority...)

	wait.For(t, 5*time.Second, "the cut-off leader stepped down", func() bool { return old.group.State() != raft.Leader })
	asked := time.Now()
	_, err = old.apply("cut-2")
	if !errors.Is(err, ferry.ErrUnavailable) {
		t.Fatalf("Apply on the cut-off member answered %v, want unavailable", err)
	}
	msg := err.Error()
	for _, part := range []string{"review group A, B, C has no leader reachable from " + old.name, "reachable: none", "unreachable: " + majority[0].name + ", " + majority[1].name} {
		if !strings.Contains(msg, part) {
			t.Fatalf("the minority's answer %q lacks %q", msg, part)
		}
	}
	t.Logf("figure: the minority answered after %v (LeaderWait %v): %v", time.Since(asked).Round(time.Millisecond), testTiming.HeartbeatTimeout*2+testTiming.ElectionTimeout*2, err)
	if got := old.fsm.sequence(); !slices.Equal(got, []string{"before"}) {
		t.Fatalf("the cut-off member's state machine applied %v, want only what was committed before the cut", got)
	}
	if v, _ := old.gauge("ferry_review_group_has_leader"); v != 0 {
		t.Fatalf("the cut-off member's has_leader is %v", v)
	}

	healed := time.Now()
	c.cut(old, false)
	c.sameSequence(10*time.Second, want, c.members...)
	c.leader(10*time.Second, c.members...)
	t.Logf("figure: after the heal, %s applied the majority's history %v later", old.name, time.Since(healed).Round(time.Millisecond))
	for _, m := range c.members {
		if m.fsm.has("cut-1") || m.fsm.has("cut-2") {
			t.Fatalf("%s applied a command of the cut-off leader", m.name)
		}
	}
	old.mustApply("cut-1")
	c.sameSequence(5*time.Second, append(want, "cut-1"), c.members...)
}

// A group of one grows to three ("reviewer: R" is a group of one, then
// reviewers: [R, S, T]): the leader adds a voter, a follower adds the
// third (forwarded), and the new members catch up from a snapshot and the
// log; then a follower removes one (forwarded), whose raft stops, and the
// two go on.
func TestGrowFromOneThenRemove(t *testing.T) {
	c := newCluster(t, 3)
	c.tune = func(cfg *Config) { cfg.SnapshotThreshold, cfg.TrailingLogs = 4, 2 }
	a, b, d := c.members[0], c.members[1], c.members[2]
	a.start(c.ids(a))
	c.leader(10*time.Second, a)
	var want []string
	for i := range 10 {
		id := fmt.Sprintf("solo-%d", i)
		a.mustApply(id)
		want = append(want, id)
	}
	// A snapshot, so the log the new members need starts after it.
	if err := a.group.raft.Load().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	b.start(nil)
	d.start(nil)
	if s := b.group.State(); s != raft.Follower {
		t.Fatalf("a new member is %s", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.group.AddVoter(ctx, b.id); err != nil {
		t.Fatal(err)
	}
	c.sameSequence(10*time.Second, want, a, b)
	if err := b.group.AddVoter(ctx, d.id); err != nil { // forwarded to A
		t.Fatal(err)
	}
	l := c.leader(10*time.Second, c.members...)
	if l != a {
		t.Fatalf("%s leads, want A", l.name)
	}
	c.sameSequence(10*time.Second, want, c.members...)
	d.mustApply("grown") // forwarded
	want = append(want, "grown")
	c.sameSequence(5*time.Second, want, c.members...)
	if b.fsm.restored() == 0 || d.fsm.restored() == 0 {
		t.Fatalf("the new members restored %d and %d snapshots, want at least one each", b.fsm.restored(), d.fsm.restored())
	}
	if err := d.group.Barrier(ctx); err != nil { // d restored from a snapshot: it knows where it stands
		t.Fatal(err)
	}
	if got := a.group.voters(); len(got) != 3 {
		t.Fatalf("voters %v", got)
	}
	// Adding a stranger is refused before anything is done.
	stranger := newCluster(t, 1).members[0]
	if err := b.group.AddVoter(ctx, stranger.id); !errors.Is(err, ferry.ErrBadRequest) {
		t.Fatalf("adding a peer that is not allowed answered %v, want bad_request", err)
	}

	if err := b.group.RemoveServer(ctx, d.id); err != nil { // forwarded to A
		t.Fatal(err)
	}
	if got := a.group.voters(); len(got) != 2 || slices.Contains(got, d.id) {
		t.Fatalf("after the removal the voters are %v", got)
	}
	b.mustApply("after-removal")
	want = append(want, "after-removal")
	c.sameSequence(5*time.Second, want, a, b)
	// The removed member decides nothing: the leader refuses what it forwards.
	rep, _, err := d.group.ask(ctx, a.id, &pb.ForwardRequest{Op: pb.ForwardOp_FORWARD_OP_APPLY, Command: encode("removed")})
	if err != nil || rep.Code != ferry.CodeForbidden || !strings.Contains(rep.Message, "C is not a server of review group A, B") {
		t.Fatalf("the leader answered a removed member's command %+v, %v; want forbidden", rep, err)
	}
	if _, err := d.apply("removed"); !errors.Is(err, ferry.ErrForbidden) && !errors.Is(err, ferry.ErrUnavailable) {
		t.Fatalf("Apply on a removed member answered %v, want forbidden or unavailable", err)
	}
	c.sameSequence(5*time.Second, want, a, b)
}

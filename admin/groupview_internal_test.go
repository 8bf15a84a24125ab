package admin

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	waitfor "github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/reviewgroup"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestGroupViewOneFetchForConcurrentCallers: callers that arrive while a
// fetch is in flight wait for it and get its answer (one fetch for all);
// within the TTL the answer is served again; after it, one new fetch.
func TestGroupViewOneFetchForConcurrentCallers(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	var fetches atomic.Int32
	release := make(chan struct{})
	v := newGroupView(func() *GroupStatus {
		n := fetches.Add(1)
		if n == 1 {
			<-release
		}
		return &GroupStatus{LeaderName: "fetch " + string(rune('0'+n))}
	}, clock.now)

	const callers = 8
	got := make([]*GroupStatus, callers)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); got[0] = v.get() }()
	waitfor.For(t, 10*time.Second, "the first fetch in flight", func() bool { return fetches.Load() == 1 })
	for i := 1; i < callers; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = v.get() }()
	}
	waitfor.For(t, 10*time.Second, "every other caller waiting for it", func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.waiting == callers-1
	})
	close(release)
	wg.Wait()
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d concurrent callers made %d fetches, want 1", callers, n)
	}
	for i, gs := range got {
		if gs == nil || gs != got[0] || gs.LeaderName != "fetch 1" {
			t.Fatalf("caller %d got %+v, want the one fetch's answer %+v", i, gs, got[0])
		}
	}

	clock.add(groupViewTTL - time.Millisecond)
	if gs := v.get(); gs != got[0] || fetches.Load() != 1 {
		t.Fatalf("within the TTL: %+v after %d fetches, want the cached view", gs, fetches.Load())
	}
	clock.add(time.Millisecond)
	if gs := v.get(); gs.LeaderName != "fetch 2" || fetches.Load() != 2 {
		t.Fatalf("at the TTL: %+v after %d fetches, want a new fetch", gs, fetches.Load())
	}
	var nilView *groupView
	if nilView.get() != nil {
		t.Fatal("a node that is not a reviewer of a group shows a group")
	}
}

// TestGroupStatusJudge: the warning says when the group has no leader or
// this node reaches fewer than a majority of the voters.
func TestGroupStatusJudge(t *testing.T) {
	up := &reviewgroup.Status{State: "Follower"}
	voter := func(name string, st *reviewgroup.Status) reviewgroup.Server {
		return reviewgroup.Server{Name: name, Suffrage: "Voter", Status: st}
	}
	for _, tc := range []struct {
		name string
		gs   GroupStatus
		want string // a prefix of Warning; empty: none
		r, q int
	}{
		{"all up with a leader", GroupStatus{Leader: "x", Servers: []reviewgroup.Server{voter("A", up), voter("B", up), voter("C", up)}}, "", 3, 2},
		{"one down with a leader", GroupStatus{Leader: "x", Servers: []reviewgroup.Server{voter("A", up), voter("B", up), voter("C", nil)}}, "", 2, 2},
		{"no leader", GroupStatus{Servers: []reviewgroup.Server{voter("A", up), voter("B", up), voter("C", up)}}, "no leader: the review group is electing one", 3, 2},
		{"cut off, old leader still known", GroupStatus{Leader: "x", Servers: []reviewgroup.Server{voter("A", up), voter("B", nil), voter("C", nil)}},
			"cut off: this node reaches 1 of 3 reviewers (A), a majority is 2; it cannot decide (not answering: B, C)", 1, 2},
		{"a non-voter does not count", GroupStatus{Leader: "x", Servers: []reviewgroup.Server{voter("A", up), voter("B", nil),
			{Name: "N", Suffrage: "Nonvoter", Status: up}}}, "cut off: this node reaches 1 of 2", 1, 2},
		{"not started", GroupStatus{Error: "review group A, B, C: not started"}, "no leader: the review group's configuration is not known here (review group A, B, C: not started)", 0, 1},
	} {
		gs := tc.gs
		gs.judge()
		if (tc.want == "") != (gs.Warning == "") || !strings.HasPrefix(gs.Warning, tc.want) || gs.Reachable != tc.r || gs.Quorum != tc.q {
			t.Errorf("%s: warning %q, reachable %d, quorum %d; want %q, %d, %d", tc.name, gs.Warning, gs.Reachable, gs.Quorum, tc.want, tc.r, tc.q)
		}
	}
}

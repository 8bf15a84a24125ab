package spread

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/protocols/pb"
)

// TestReportsReachTheReviewerThroughNeighbours: on a network where only
// neighbours are linked (nobody can dial anyone else, the reviewer
// included), every member's report reaches the reviewer through the
// members between, and the reviewer holds no more connections than its
// neighbours'.
func TestReportsReachTheReviewerThroughNeighbours(t *testing.T) {
	x := newNetLinked(t, 16, false)
	x.waitTopic()
	rev := x.nodes[0]
	conns := len(rev.svc.d.Host.Network().Peers())
	vers := x.decide(1, 30)
	far := 0
	for i, n := range x.nodes[1:] {
		wait.For(t, waitTimeout, fmt.Sprintf("member %d's report reached the reviewer", i+1), func() bool { return rev.ack.floor(n.id) == vers[30] })
		if rev.svc.d.Host.Network().Connectedness(n.id) == 0 {
			far++
		}
	}
	if far < 8 {
		t.Fatalf("only %d members are not connected to the reviewer: the test shows nothing", far)
	}
	if got := len(rev.svc.d.Host.Network().Peers()); got > conns {
		t.Fatalf("the reviewer holds %d connections, %d before the decisions", got, conns)
	}
	relayed := 0.0
	for _, n := range x.nodes[1:] {
		relayed += testutilCount(n.svc.m.reports.WithLabelValues("relay", "ok"))
	}
	if relayed == 0 {
		t.Fatal("no member took a report to pass on")
	}
	t.Logf("%d members, %d not connected to the reviewer: every report reached it; members took %v reports to pass on", len(x.nodes)-1, far, relayed)
}

// TestARelayedReportIsChecked: a report whose signature is not its
// member's, one of a stranger, and one that names no sequence are refused
// and not passed on; a good one is passed on once, and the same sequence
// again only after HeadEvery.
func TestARelayedReportIsChecked(t *testing.T) {
	x := newNet(t, 5)
	m1, m2 := x.nodes[1], x.nodes[2]
	good, err := m2.svc.signApplied(7)
	must(t, err)
	if _, err := m1.svc.checkApplied(good); err != nil {
		t.Fatalf("a good report refused: %v", err)
	}
	forged := &pb.SignedApplied{Member: good.Member, Sequence: 8, Signature: good.Signature}
	if _, err := m1.svc.checkApplied(forged); err == nil {
		t.Fatal("a report with another sequence's signature was taken")
	}
	stranger := newKey(t)
	sid, _ := peer.IDFromPrivateKey(stranger)
	sig, _ := stranger.Sign(appliedSigned("test", sid, 3))
	if _, err := m1.svc.checkApplied(&pb.SignedApplied{Member: []byte(sid), Sequence: 3, Signature: sig}); err == nil {
		t.Fatal("a stranger's report was taken")
	}
	zero, err := m2.svc.signApplied(0)
	must(t, err)
	if _, err := m1.svc.checkApplied(zero); err == nil {
		t.Fatal("a report of sequence 0 was taken")
	}
	other, _ := m2.svc.signApplied(7)
	other.Signature = []byte("x")
	if _, err := m1.svc.checkApplied(other); err == nil {
		t.Fatal("a report with a broken signature was taken")
	}

	// keep: once per sequence, again only after HeadEvery.
	svc := m1.svc
	svc.keep(m2.id, good)
	rv := x.nodes[0].id
	svc.mu.Lock()
	if svc.rl.pend[rv][m2.id] != good {
		svc.mu.Unlock()
		t.Fatal("a good report is not held to pass on")
	}
	delete(svc.rl.pend[rv], m2.id)
	svc.rl.sent[rv] = map[peer.ID]sentMark{m2.id: {seq: 7, at: time.Now()}}
	svc.mu.Unlock()
	svc.keep(m2.id, good)
	svc.mu.Lock()
	again := svc.rl.pend[rv][m2.id]
	svc.rl.sent[rv][m2.id] = sentMark{seq: 7, at: time.Now().Add(-2 * svc.d.HeadEvery)}
	svc.mu.Unlock()
	if again != nil {
		t.Fatal("a report passed on a moment ago is held again")
	}
	svc.keep(m2.id, good)
	svc.mu.Lock()
	later := svc.rl.pend[rv][m2.id]
	svc.mu.Unlock()
	if later == nil {
		t.Fatal("a report passed on longer than HeadEvery ago is not held again")
	}
}

// TestOwnReportResentUpTheWay: a member's report that went up the way (no
// reviewer took it directly) is due again HeadEvery after it went, then
// after twice as long each time up to headQuiet HeadEvery, relayResends
// times; one the reviewer took directly, never; a higher sequence, at once.
func TestOwnReportResentUpTheWay(t *testing.T) {
	x := newNet(t, 5)
	m := x.nodes[1].svc
	rv := x.nodes[0].id
	every := m.d.HeadEvery
	var gaps []time.Duration
	for sends := 1; sends <= relayResends+1; sends++ {
		gaps = append(gaps, resendGap(every, sends))
	}
	want := []time.Duration{every, 2 * every, 4 * every, 8 * every, headQuiet * every, headQuiet * every, headQuiet * every}
	if fmt.Sprint(gaps) != fmt.Sprint(want) {
		t.Fatalf("gaps %v, want %v", gaps, want)
	}
	now := time.Now()
	due := func(o ownMark, applied uint64, at time.Time) bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.rl.own[rv] = o
		return m.ownDueLocked(rv, applied, at)
	}
	for sends := 1; sends <= relayResends; sends++ {
		o := ownMark{seq: 9, sends: sends, at: now}
		gap := resendGap(every, sends)
		if due(o, 9, now.Add(gap-time.Millisecond)) || !due(o, 9, now.Add(gap)) {
			t.Fatalf("after send %d: due before %v, or not at it", sends, gap)
		}
	}
	if due(ownMark{seq: 9, sends: relayResends + 1, at: now}, 9, now.Add(time.Hour)) {
		t.Fatal("due again after relayResends resends")
	}
	if due(ownMark{seq: 9, sends: 1, direct: true, at: now}, 9, now.Add(time.Hour)) {
		t.Fatal("due again after the reviewer took it directly")
	}
	if !due(ownMark{seq: 9, sends: relayResends + 1, direct: true, at: now}, 10, now) {
		t.Fatal("a higher sequence is not due at once")
	}
}

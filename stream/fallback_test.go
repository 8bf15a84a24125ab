package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"

	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// members: b receives A's decision lane (a member of A's review).
type members struct{ recv peer.ID }

func (x members) Receives(p peer.ID, l Lane) bool { return p == x.recv && l == LaneDecision }
func (x members) Receivers(l Lane) []peer.ID {
	if l == LaneDecision {
		return []peer.ID{x.recv}
	}
	return nil
}

// newDecisionPair is newPair for the decision lane, with a fallback delay.
func newDecisionPair(t *testing.T, fallback time.Duration) *pair {
	t.Helper()
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	p := &pair{t: t, mn: mn, a: newSide(t, mn, 1), b: newSide(t, mn, 2), rec: &recorder{}, ahead: make(chan uint64, 16)}
	if err := mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	p.sndOpt = SenderOptions{AckTimeout: 2 * time.Second, BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		RetryScan: 50 * time.Millisecond, DecisionFallback: fallback, Logger: quiet}
	p.startReceiver(p.b.st)
	var err error
	if p.snd, err = NewSender(p.a.host, p.a.st, members{p.b.id}, p.sndOpt); err != nil {
		t.Fatal(err)
	}
	if err := p.snd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.snd.Close)
	return p
}

// decide commits n decisions at A, broadcast or (to non-nil) addressed.
func (p *pair) decide(n int, to peer.ID) []uint64 {
	p.t.Helper()
	var vers []uint64
	err := p.a.st.Update(context.Background(), func(tx *store.Txn) error {
		for i := range n {
			ver, sealed, err := tx.AppendOwn(&pb.Body{Origin: []byte(p.a.id), Kind: pb.Kind_KIND_REVIEW_DECISION, DataType: "tb",
				Payload: []byte(fmt.Sprintf("d%d", i)), To: []byte(to)})
			if err != nil {
				return err
			}
			e := store.OwnEntry{Version: ver, Lane: uint8(LaneDecision), Kind: pb.Kind_KIND_REVIEW_DECISION, Protocol: protocols.ResourceCreate}
			if to != "" {
				e.Lane = uint8(LaneRejection)
			}
			if to != "" {
				e.To = []peer.ID{to}
			}
			tx.AddOwnEntry(e, sealed)
			vers = append(vers, ver)
		}
		return nil
	})
	if err != nil {
		p.t.Fatal(err)
	}
	return vers
}

// TestDecisionsWaitForGossipAndReports: with a fallback of an hour, the
// stream carries no decision; a member's report moves its floor as a reply
// would; a rejection addressed to the member, in a lane of its own, goes at
// once.
func TestDecisionsWaitForGossipAndReports(t *testing.T) {
	p := newDecisionPair(t, time.Hour)
	vers := p.decide(5, "")
	p.snd.Acknowledge(p.b.id, LaneDecision, vers[2])
	if f := p.snd.Lane(p.b.id, LaneDecision).Floor; f != vers[2] {
		t.Fatalf("floor %d after a report through %d", f, vers[2])
	}
	rej := p.decide(1, p.b.id)
	wait.For(t, waitTimeout, "B got the rejection", func() bool { return len(p.rec.versions()) == 1 })
	exactlyOnce(t, p.rec.versions(), rej)
	wait.For(t, waitTimeout, "B's rejection floor", func() bool { return p.snd.Lane(p.b.id, LaneRejection).Floor == rej[0] })
	p.snd.Acknowledge(p.b.id, LaneDecision, vers[4])
	if f := p.snd.Lane(p.b.id, LaneDecision).Floor; f != vers[4] {
		t.Fatalf("floor %d after a report through %d", f, vers[4])
	}
	// A report never moves a floor back.
	p.snd.Acknowledge(p.b.id, LaneDecision, vers[1])
	if f := p.snd.Lane(p.b.id, LaneDecision).Floor; f != vers[4] {
		t.Fatalf("floor %d after an older report", f)
	}
	if got := p.rec.versions(); len(got) != 1 {
		t.Fatalf("the stream carried decisions gossip carries: %v", got)
	}
}

// TestUnreportedDecisionsFallBackToTheStream: a member that reports nothing
// gets every decision on the stream once they are older than the fallback.
func TestUnreportedDecisionsFallBackToTheStream(t *testing.T) {
	p := newDecisionPair(t, 50*time.Millisecond)
	vers := p.decide(20, "")
	wait.For(t, waitTimeout, "B got every decision through the stream", func() bool { return len(p.rec.versions()) == len(vers) })
	exactlyOnce(t, p.rec.versions(), vers)
	wait.For(t, waitTimeout, "B's floor", func() bool { return p.snd.Lane(p.b.id, LaneDecision).Floor == vers[len(vers)-1] })
}

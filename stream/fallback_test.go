package stream

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
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

// newDecisionPair is newPair for the decision lane, with a fallback delay
// (and whatever opts change in the sender's options).
func newDecisionPair(t *testing.T, fallback time.Duration, opts ...func(*SenderOptions)) *pair {
	t.Helper()
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	p := &pair{t: t, mn: mn, a: newSide(t, mn, 1), b: newSide(t, mn, 2), rec: &recorder{}, ahead: make(chan uint64, 16)}
	if err := mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	p.sndOpt = SenderOptions{AckTimeout: 2 * time.Second, BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		RetryScan: 50 * time.Millisecond, DecisionFallback: fallback, Logger: quiet}
	for _, o := range opts {
		o(&p.sndOpt)
	}
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

// room is a SenderOptions.Room that says what it is told and counts the
// times it was asked, said yes, and was told a dial ended (Dialed).
type room struct {
	ok                   atomic.Bool
	asked, yes, dialings atomic.Int64
}

func (r *room) Room(peer.ID) bool {
	r.asked.Add(1)
	ok := r.ok.Load()
	if ok {
		r.yes.Add(1)
	}
	return ok
}

func (r *room) Dialed(peer.ID) { r.dialings.Add(1) }

// TestNewConnectionsWaitForRoom: a member owed decisions past the fallback,
// to which the sender holds no connection, is not dialed while Room says
// no (the reviewer's connections stay within connections.max): nothing is
// sent, no attempt is counted, the lane says why; once Room says yes, the
// decisions go, and the room the dial took is given back as it ends
// (Dialed): however long a dial takes, it counts against the bound until
// then.
func TestNewConnectionsWaitForRoom(t *testing.T) {
	r := &room{}
	p := newDecisionPair(t, 50*time.Millisecond, func(o *SenderOptions) { o.Room, o.Dialed, o.RoomWait = r.Room, r.Dialed, time.Hour })
	vers := p.decide(20, "")
	wait.For(t, waitTimeout, "the sender asked for room three times", func() bool { return r.asked.Load() >= 3 })
	if got := p.rec.versions(); len(got) != 0 {
		t.Fatalf("B got %d decisions while there was no room", len(got))
	}
	if c := p.a.host.Network().Connectedness(p.b.id); c == network.Connected {
		t.Fatal("A dialed B while there was no room")
	}
	ls := p.snd.Lane(p.b.id, LaneDecision)
	if ls.Attempts != 0 || !strings.Contains(ls.LastError, "connections.max") {
		t.Fatalf("lane while waiting for room: %d attempts, last error %q; want none, and the wait named", ls.Attempts, ls.LastError)
	}
	if n := r.dialings.Load(); n != 0 {
		t.Fatalf("Dialed told of %d dials while Room never said yes", n)
	}
	r.ok.Store(true)
	wait.For(t, waitTimeout, "B got every decision once there was room", func() bool { return len(p.rec.versions()) == len(vers) })
	exactlyOnce(t, p.rec.versions(), vers)
	if yes, ended := r.yes.Load(), r.dialings.Load(); ended == 0 || ended > yes {
		t.Fatalf("Room said yes %d times and Dialed was told of %d dials that ended: want each dial's end told, at least one", yes, ended)
	}
}

// TestNoRoomForLongDialsAnyway: a bound must never cut a member off: after
// RoomWait with no room and no word from the member, the sender dials it
// anyway.
func TestNoRoomForLongDialsAnyway(t *testing.T) {
	r := &room{}
	p := newDecisionPair(t, 50*time.Millisecond, func(o *SenderOptions) { o.Room, o.RoomWait = r.Room, 300*time.Millisecond })
	vers := p.decide(5, "")
	wait.For(t, waitTimeout, "B got every decision though there was never room", func() bool { return len(p.rec.versions()) == len(vers) })
	if r.asked.Load() < 2 {
		t.Fatalf("Room asked %d times: the dial went before the sender waited", r.asked.Load())
	}
	exactlyOnce(t, p.rec.versions(), vers)
}

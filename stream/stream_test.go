package stream

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// The stream layer against an in-memory ledger (Pebble on an in-memory
// file system) and libp2p's in-memory network (mocknet), the way
// hashicorp/raft tests against InmemStore and InmemTransport.

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// audience: b receives A's resource lane.
type audience struct{ recv peer.ID }

func (x audience) Receives(p peer.ID, l Lane) bool { return p == x.recv && l == LaneResource }
func (x audience) Receivers(l Lane) []peer.ID {
	if l == LaneResource {
		return []peer.ID{x.recv}
	}
	return nil
}

// recorder is a Handler that stores what it applies and remembers the order.
type recorder struct {
	mu      sync.Mutex
	applied []uint64 // origin versions, in commit order
	reject  func(v uint64) bool
	onApply func() // if set, runs in each Apply
}

func (r *recorder) Admit(*Inbound) error { return nil }

func (r *recorder) Apply(tx *store.Txn, in *Inbound) (pb.AckStatus, error) {
	v := in.Body.OriginVersion
	if r.onApply != nil {
		r.onApply()
	}
	if r.reject != nil && r.reject(v) {
		return 0, Reject("refused %d", v)
	}
	if held, err := CheckHeld(tx, in.Origin, v, in.Hash); err != nil || held {
		return pb.AckStatus_ACK_STATUS_DUPLICATE, err
	}
	if _, err := in.AppendTo(tx); err != nil {
		return 0, err
	}
	tx.OnCommit(func() {
		r.mu.Lock()
		r.applied = append(r.applied, v)
		r.mu.Unlock()
	})
	return pb.AckStatus_ACK_STATUS_APPLIED, nil
}

func (r *recorder) versions() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.applied)
}

type side struct {
	key  crypto.PrivKey
	id   peer.ID
	host host.Host
	st   *store.Store
}

type pair struct {
	t      *testing.T
	mn     mocknet.Mocknet
	a, b   side
	snd    *Sender
	rcv    *Receiver
	rec    *recorder
	ahead  chan uint64
	sndOpt SenderOptions
	// createdAt, when set, is the creation time commit gives its changes.
	createdAt time.Time
}

func newSide(t *testing.T, mn mocknet.Mocknet, i int) side {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(key)
	h, err := mn.AddPeer(key, ma.StringCast(fmt.Sprintf("/ip4/10.0.0.%d/tcp/4001", i)))
	if err != nil {
		t.Fatal(err)
	}
	return side{key: key, id: id, host: h, st: openMem(t, key)}
}

func openMem(t *testing.T, key crypto.PrivKey) *store.Store {
	t.Helper()
	st, err := store.Open("mem", store.Options{Signer: key, InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// newPair links A and B and starts A's sender and B's receiver.
func newPair(t *testing.T, rec *recorder) *pair { t.Helper(); return newPairWith(t, rec, nil) }

// newPairWith is newPair with the sender's options changed by opt.
func newPairWith(t *testing.T, rec *recorder, opt func(*SenderOptions)) *pair {
	t.Helper()
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	p := &pair{t: t, mn: mn, a: newSide(t, mn, 1), b: newSide(t, mn, 2), rec: rec, ahead: make(chan uint64, 16)}
	if err := mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	p.sndOpt = SenderOptions{AckTimeout: 2 * time.Second, BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		RetryScan: 100 * time.Millisecond, BatchEntries: 100,
		OnAhead: func(_ peer.ID, _ Lane, v uint64) { p.ahead <- v }, Logger: quiet}
	if opt != nil {
		opt(&p.sndOpt)
	}
	p.startReceiver(p.b.st)
	var err error
	if p.snd, err = NewSender(p.a.host, p.a.st, audience{p.b.id}, p.sndOpt); err != nil {
		t.Fatal(err)
	}
	if err := p.snd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.snd.Close)
	return p
}

func (p *pair) startReceiver(st *store.Store) {
	p.t.Helper()
	r, err := NewReceiver(p.b.host, st, protocols.NewVerifier(), p.rec, ReceiverOptions{Logger: quiet})
	if err != nil {
		p.t.Fatal(err)
	}
	r.Start()
	p.rcv = r
	p.t.Cleanup(r.Close)
}

// commit writes n own resource changes at A in transactions of per, and
// tells the sender.
func (p *pair) commit(n, per int) []uint64 {
	p.t.Helper()
	var vers []uint64
	for done := 0; done < n; done += per {
		err := p.a.st.Update(context.Background(), func(tx *store.Txn) error {
			for i := done; i < min(done+per, n); i++ {
				body := &pb.Body{Origin: []byte(p.a.id), Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "vm",
					Payload: []byte(fmt.Sprintf(`{"id":"r%d"}`, i))}
				if !p.createdAt.IsZero() {
					body.CreatedAtUnixNano = p.createdAt.UnixNano()
				}
				ver, sealed, err := tx.AppendOwn(body)
				if err != nil {
					return err
				}
				e := store.OwnEntry{Version: ver, Lane: uint8(LaneResource), Kind: pb.Kind_KIND_RESOURCE_CREATE, Protocol: protocols.ResourceCreate}
				tx.AddOwnEntry(e, sealed)
				vers = append(vers, ver)
			}
			return nil
		})
		if err != nil {
			p.t.Fatal(err)
		}
	}
	return vers
}

// waitTimeout bounds every wait of these tests.
const waitTimeout = 30 * time.Second

// exactlyOnce checks that got is want, in order, once each.
func exactlyOnce(t *testing.T, got, want []uint64) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("applied %d changes (first %v), want %d in order once each", len(got), got[:min(5, len(got))], len(want))
	}
}

func TestDeliversEveryChangeOnceInOrder(t *testing.T) {
	p := newPair(t, &recorder{})
	want := p.commit(3000, 700)
	wait.For(t, waitTimeout, "B applied 3000", func() bool { return len(p.rec.versions()) >= 3000 })
	exactlyOnce(t, p.rec.versions(), want)
	last := want[len(want)-1]
	wait.For(t, waitTimeout, "A's floor reaches the last", func() bool { return p.snd.Lane(p.b.id, LaneResource).Floor == last })
	if pos, _ := p.b.st.Position(p.a.id, uint8(LaneResource)); pos.Version != last || pos.Epoch != p.a.st.Epoch() {
		t.Fatalf("B's position %v, want %d at epoch %d", pos, last, p.a.st.Epoch())
	}
	// Nothing is written per change and receiver: the floor is one record.
	fs, _ := p.a.st.Floors()
	if len(fs) != 1 {
		t.Fatalf("floors %v", fs)
	}
}

// A receiver applying changes made long ago at their origin (a partner
// back after a while) says it is catching up, so that work that can wait
// (the events stream) yields to it; one applying fresh changes does not.
func TestReceiverSaysWhenItCatchesUp(t *testing.T) {
	for _, age := range []time.Duration{0, time.Minute} {
		rec := &recorder{}
		p := newPair(t, rec)
		var said atomic.Int32
		rec.onApply = func() {
			if p.rcv.CatchingUp() {
				said.Add(1)
			}
		}
		if age > 0 {
			p.createdAt = time.Now().Add(-age)
		} else {
			p.createdAt = time.Now()
		}
		want := p.commit(300, 100)
		wait.For(t, waitTimeout, "B applied 300", func() bool { return len(p.rec.versions()) >= 300 })
		exactlyOnce(t, p.rec.versions(), want)
		if got := said.Load(); (age > 0) != (got > 0) {
			t.Fatalf("changes %v old: B said it was catching up in %d of 300 applies", age, got)
		}
	}
}

// A link cut in the middle: the batches in flight are sent again from the
// floor (go-back-N), and the receiver applies each change once.
func TestResendsAfterACutLinkOnce(t *testing.T) {
	p := newPair(t, &recorder{})
	want := p.commit(500, 100)
	wait.For(t, waitTimeout, "B applied some", func() bool { return len(p.rec.versions()) >= 100 })
	failures := testutil.ToFloat64(p.snd.m.failures)
	if err := p.mn.UnlinkPeers(p.a.id, p.b.id); err != nil {
		t.Fatal(err)
	}
	_ = p.mn.DisconnectPeers(p.a.id, p.b.id)
	want = append(want, p.commit(2000, 500)...)
	// The relink comes after A counted the cut as a failure (a stream reset
	// with batches in flight, or an open that found no link). (Not its
	// LastError: on a mocknet a stream opened as the connection closes may
	// go on carrying batches, and their answers clear it.)
	wait.For(t, waitTimeout, "A counted a failed delivery to B", func() bool { return testutil.ToFloat64(p.snd.m.failures) > failures })
	if _, err := p.mn.LinkPeers(p.a.id, p.b.id); err != nil {
		t.Fatal(err)
	}
	p.snd.Kick(p.b.id)
	wait.For(t, waitTimeout, "B applied 2500", func() bool { return len(p.rec.versions()) >= 2500 })
	exactlyOnce(t, p.rec.versions(), want)
}

// A receiver whose store was replaced (restored from an older copy, or new)
// reports where it stands when the next stream opens; the sender rewinds
// its floor and sends everything again.
func TestReceiverThatLostItsStoreGetsEverythingAgain(t *testing.T) {
	p := newPair(t, &recorder{})
	want := p.commit(400, 100)
	wait.For(t, waitTimeout, "B applied 400", func() bool { return len(p.rec.versions()) >= 400 })
	last := want[len(want)-1]
	wait.For(t, waitTimeout, "A's floor reaches the last", func() bool { return p.snd.Lane(p.b.id, LaneResource).Floor == last })
	p.rcv.Close()
	p.b.host.RemoveStreamHandler(protocols.ResourceCreate)
	_ = p.mn.DisconnectPeers(p.a.id, p.b.id)
	fresh := &recorder{}
	p.rec = fresh
	p.startReceiver(openMem(t, p.b.key))
	want = append(want, p.commit(10, 10)...) // something new makes A open a stream
	wait.For(t, waitTimeout, "the fresh B applied everything", func() bool { return len(fresh.versions()) >= 410 })
	exactlyOnce(t, fresh.versions(), want)
}

// TestReceiverThatSaysItHoldsLessGetsItAgain: with nothing new to send, a
// receiver's word (hello) that it holds less than its floor makes the
// sender open a stream and resend; a word that holds everything changes
// nothing.
func TestReceiverThatSaysItHoldsLessGetsItAgain(t *testing.T) {
	p := newPair(t, &recorder{})
	want := p.commit(100, 50)
	last := want[len(want)-1]
	wait.For(t, waitTimeout, "A's floor reaches the last", func() bool { return p.snd.Lane(p.b.id, LaneResource).Floor == last })
	p.snd.HoldsAtMost(p.b.id, last) // true: nothing changes
	if f := p.snd.Lane(p.b.id, LaneResource).Floor; f != last {
		t.Fatalf("floor %d after a word that holds everything", f)
	}
	p.rcv.Close()
	p.b.host.RemoveStreamHandler(protocols.ResourceCreate)
	_ = p.mn.DisconnectPeers(p.a.id, p.b.id)
	fresh := &recorder{}
	p.rec = fresh
	p.startReceiver(openMem(t, p.b.key))
	// It says it holds half; its position report, once the stream opens,
	// says it holds nothing: it gets everything, once, in order.
	p.snd.HoldsAtMost(p.b.id, want[49])
	// As the node does when a member says hello on a new connection: a
	// try that met B between its two receivers may have put the sender in
	// a backoff longer than this test waits.
	p.snd.Kick(p.b.id)
	wait.For(t, waitTimeout, "the fresh B got everything", func() bool { return len(fresh.versions()) >= 100 })
	exactlyOnce(t, fresh.versions(), want)
}

// A refused change is named by its version in the answer; the rest of its
// batch is applied and the floor moves past it.
func TestRefusedChangesAreNamedAndTheRestApplied(t *testing.T) {
	// B's receiver may apply as soon as A commits: which versions it
	// refuses is known after the commit, so it waits for that (the
	// refusal rule was set after the commit once, and raced the receiver).
	ready := make(chan struct{})
	refused := map[uint64]bool{}
	rec := &recorder{reject: func(v uint64) bool { <-ready; return refused[v] }}
	p := newPair(t, rec)
	all := p.commit(350, 350)
	for i, v := range all {
		if i%7 == 3 {
			refused[v] = true
		}
	}
	close(ready)
	last := all[len(all)-1]
	wait.For(t, waitTimeout, "A's floor reaches the last", func() bool { return p.snd.Lane(p.b.id, LaneResource).Floor == last })
	var want []uint64
	for _, v := range all {
		if !refused[v] {
			want = append(want, v)
		}
	}
	exactlyOnce(t, rec.versions(), want)
	wait.For(t, waitTimeout, "A recorded every refusal", func() bool {
		got, _ := p.a.st.Refusals(p.b.id)
		return len(got) == len(refused)
	})
	got, _ := p.a.st.Refusals(p.b.id)
	for v := range refused {
		if got[v] != fmt.Sprintf("refused %d", v) {
			t.Fatalf("refusal of %d: %q", v, got[v])
		}
	}
}

// A receiver that holds more of the sender's lane than the sender's own log
// (the sender's store was restored from an older copy) makes the sender say
// so when a stream opens.
func TestSenderLearnsAReceiverHoldsMore(t *testing.T) {
	p := newPair(t, &recorder{})
	ahead := uint64(time.Now().Add(time.Hour).UnixMicro()) // above any version A gives in this test
	if err := p.b.st.Update(context.Background(), func(tx *store.Txn) error {
		tx.SetPosition(p.a.id, uint8(LaneResource), &storepb.Position{Epoch: p.a.st.Epoch(), Version: ahead})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	p.commit(1, 1)
	select {
	case v := <-p.ahead:
		if v != ahead {
			t.Fatalf("OnAhead with %d, want %d", v, ahead)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the sender never heard that B holds more")
	}
}

// floorLog is a FloorTracer that records what it hears, in order.
type floorLog struct {
	mu    sync.Mutex
	calls []floorCall
}

type floorCall struct {
	refused []*pb.Refusal // a Refused call; else a FloorMoved
	floor   uint64
	rewound bool
}

func (f *floorLog) Refused(_ peer.ID, _ Lane, refused []*pb.Refusal) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, floorCall{refused: refused})
}

func (f *floorLog) FloorMoved(_ peer.ID, _ Lane, floor uint64, rewound bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, floorCall{floor: floor, rewound: rewound})
}

func (f *floorLog) heard() []floorCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// SenderOptions.Floors hears every floor the replies move, and each
// refusal before the floor that passes it (so a delivery status that wakes
// on the floor knows the refusal).
func TestFloorTracerHearsFloorsAndRefusals(t *testing.T) {
	ready := make(chan struct{})
	refused := map[uint64]bool{}
	rec := &recorder{reject: func(v uint64) bool { <-ready; return refused[v] }}
	fl := &floorLog{}
	p := newPairWith(t, rec, func(o *SenderOptions) { o.Floors = fl })
	all := p.commit(300, 100)
	for i, v := range all {
		if i%50 == 7 {
			refused[v] = true
		}
	}
	close(ready)
	last := all[len(all)-1]
	wait.For(t, waitTimeout, "the tracer hears the last floor", func() bool {
		calls := fl.heard()
		return len(calls) > 0 && calls[len(calls)-1].floor == last
	})
	named := map[uint64]bool{}
	floor := uint64(0)
	for _, c := range fl.heard() {
		if c.refused != nil {
			for _, r := range c.refused {
				if r.Version <= floor {
					t.Fatalf("refusal of %d heard after the floor passed it (%d)", r.Version, floor)
				}
				named[r.Version] = true
			}
			continue
		}
		if c.floor <= floor || c.rewound {
			t.Fatalf("floor %d (rewound %v) after %d: one stream's answers move it forward", c.floor, c.rewound, floor)
		}
		floor = c.floor
	}
	if len(named) != len(refused) {
		t.Fatalf("heard %d refusals, want %d", len(named), len(refused))
	}
	// A receiver that lost its store: the floor goes back, said as a rewind.
	p.rcv.Close()
	p.b.host.RemoveStreamHandler(protocols.ResourceCreate)
	_ = p.mn.DisconnectPeers(p.a.id, p.b.id)
	p.rec = &recorder{}
	p.startReceiver(openMem(t, p.b.key))
	p.commit(1, 1)
	wait.For(t, waitTimeout, "the tracer hears the rewind", func() bool {
		return slices.ContainsFunc(fl.heard(), func(c floorCall) bool { return c.rewound && c.floor == 0 })
	})
}

package delivery

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// The service and the Watch against a real store (in memory) and a
// sender's lanes played by the test: the test moves a floor the way the
// sender does (its state first, then the tracer's call) and looks at the
// answers and events.

const waitBound = 10 * time.Second

// lanes plays the sender's state of each receiver's lane.
type lanes struct {
	mu sync.Mutex
	m  map[laneKey]stream.LaneState
}

func (x *lanes) Lane(p peer.ID, l stream.Lane) stream.LaneState {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.m[laneKey{p, l}]
}

func (x *lanes) set(p peer.ID, l stream.Lane, f func(*stream.LaneState)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	ls := x.m[laneKey{p, l}]
	f(&ls)
	x.m[laneKey{p, l}] = ls
}

type roles struct {
	self     peer.ID
	partners []peer.ID
	names    map[peer.ID]string
}

func (r roles) Self() peer.ID { return r.self }
func (r roles) Name(p peer.ID) string {
	if n, ok := r.names[p]; ok {
		return n
	}
	return "?"
}
func (r roles) Receivers(l stream.Lane) []peer.ID {
	if l == stream.LaneResource {
		return r.partners
	}
	return nil
}

// published records events.
type published struct {
	mu     sync.Mutex
	events []event
}

type event struct {
	subject string
	body    map[string]any
}

func (x *published) Publish(suffix string, v any) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.events = append(x.events, event{suffix, v.(map[string]any)})
}

func (x *published) on(prefix string) []event {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []event
	for _, e := range x.events {
		if strings.HasPrefix(e.subject, prefix) {
			out = append(out, e)
		}
	}
	return out
}

type fixture struct {
	t      *testing.T
	st     *store.Store
	self   peer.ID
	b, c   peer.ID
	lanes  *lanes
	pub    *published
	watch  *Watch
	svc    *Service
	stream *fakeSender
}

// fakeSender moves floors as the sender does: its state, then the tracer.
type fakeSender struct{ f *fixture }

func (s fakeSender) ack(p peer.ID, l stream.Lane, through uint64, refused ...*pb.Refusal) {
	s.f.lanes.set(p, l, func(ls *stream.LaneState) { ls.Floor, ls.Attempts, ls.LastError = through, 0, "" })
	if len(refused) > 0 {
		s.f.watch.Refused(p, l, refused)
	}
	s.f.watch.FloorMoved(p, l, through, false)
}

func newPeer(t *testing.T) (crypto.PrivKey, peer.ID) {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, id
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	key, self := newPeer(t)
	_, b := newPeer(t)
	_, c := newPeer(t)
	st, err := store.Open("mem", store.Options{Signer: key, InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	f := &fixture{t: t, st: st, self: self, b: b, c: c, lanes: &lanes{m: map[laneKey]stream.LaneState{}}, pub: &published{}}
	f.stream = &fakeSender{f}
	rs := roles{self: self, partners: []peer.ID{c, b, self}, names: map[peer.ID]string{b: "B", c: "C", self: "A"}}
	if f.watch, err = NewWatch(WatchDeps{Publisher: f.pub, Names: rs}); err != nil {
		t.Fatal(err)
	}
	f.watch.Start()
	t.Cleanup(f.watch.Close)
	f.svc = New(Deps{Store: st, Sender: f.lanes, Roles: rs, Watch: f.watch})
	return f
}

// commit writes an own change of lane l (addressed to `to`, else
// broadcast) with its delivery record, as propagate does.
func (f *fixture) commit(l stream.Lane, to ...peer.ID) uint64 {
	f.t.Helper()
	kind, proto := pb.Kind_KIND_RESOURCE_CREATE, protocols.ResourceCreate
	switch l {
	case stream.LaneConsider:
		kind, proto = pb.Kind_KIND_CONSIDERS, protocols.ResourceConsider
	case stream.LaneRequest:
		kind, proto = pb.Kind_KIND_REVIEW_REQUEST, protocols.ResourceCreate
	}
	var ver uint64
	err := f.st.Update(context.Background(), func(tx *store.Txn) error {
		v, sealed, err := tx.AppendOwn(&pb.Body{Origin: []byte(f.self), Kind: kind, DataType: "vm", Payload: []byte(`{"id":"x"}`)})
		if err != nil {
			return err
		}
		tx.AddOwnEntry(store.OwnEntry{Version: v, Lane: uint8(l), Kind: kind, Protocol: proto, To: to}, sealed)
		ver = v
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return ver
}

// answer is one wait's answer.
type answer struct {
	fields map[string]any
	err    error
}

func (f *fixture) wait(req WaitRequest) chan answer {
	ch := make(chan answer, 1)
	f.svc.Wait(req, func(m map[string]any, err error) { ch <- answer{m, err} })
	return ch
}

func got(t *testing.T, ch chan answer) answer {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(waitBound):
		t.Fatal("no answer")
	}
	return answer{}
}

func open(t *testing.T, ch chan answer) {
	t.Helper()
	select {
	case a := <-ch:
		t.Fatalf("answered early: %+v", a)
	default:
	}
}

func receiversOf(t *testing.T, a answer) []Receiver {
	t.Helper()
	if a.err != nil {
		t.Fatalf("error: %v", a.err)
	}
	return a.fields["receivers"].([]Receiver)
}

func states(rs []Receiver) string {
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "%s=%s ", r.Name, r.State)
	}
	return strings.TrimSpace(b.String())
}

func TestStatusOfEachReceiver(t *testing.T) {
	f := newFixture(t)
	v := f.commit(stream.LaneResource)
	st, err := f.svc.Status(StatusRequest{Version: v})
	if err != nil {
		t.Fatal(err)
	}
	rs := st["receivers"].([]Receiver)
	if states(rs) != "B=pending C=pending" || rs[0].ID != f.b.String() || st["version"] != v {
		t.Fatalf("status %+v (the partners in the order of their names, this node left out)", st)
	}
	f.lanes.set(f.c, stream.LaneResource, func(ls *stream.LaneState) { ls.Attempts, ls.Inflight, ls.LastError = 4, 0, "dial backoff" })
	f.lanes.set(f.b, stream.LaneResource, func(ls *stream.LaneState) { ls.Floor = v })
	st, _ = f.svc.Status(StatusRequest{Version: v})
	rs = st["receivers"].([]Receiver)
	if states(rs) != "B=acked C=pending" || rs[1].Attempts != 4 || rs[1].LastError != "dial backoff" || rs[0].Attempts != 1 {
		t.Fatalf("status %+v", rs)
	}
	// A refusal the sender wrote (the store) shows with its code.
	if err := f.st.Update(context.Background(), func(tx *store.Txn) error {
		tx.SetRefused(f.c, v, "equivocation: other content")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	f.lanes.set(f.c, stream.LaneResource, func(ls *stream.LaneState) { ls.Floor = v + 5 })
	st, _ = f.svc.Status(StatusRequest{Version: v})
	rs = st["receivers"].([]Receiver)
	if states(rs) != "B=acked C=refused" || rs[1].Code != CodeEquivocation || rs[1].LastError != "equivocation: other content" {
		t.Fatalf("status %+v", rs)
	}
}

func TestStatusNotFound(t *testing.T) {
	f := newFixture(t)
	v := f.commit(stream.LaneResource)
	review := f.commit(stream.LaneRequest, f.b)
	dropped := f.commit(stream.LaneConsider, f.b)
	if err := f.st.Update(context.Background(), func(tx *store.Txn) error {
		e, err := f.st.OwnEntry(dropped)
		tx.DropOwnEntry(e, []peer.ID{f.b})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for ver, want := range map[uint64]string{
		v + 1000: "is not a change this node's ferry.propagate answered",
		review:   "is a request of the review flow",
		dropped:  "its delivery record was dropped (limits.ack_retention_hours)",
	} {
		_, err := f.svc.Status(StatusRequest{Version: ver})
		if !errors.Is(err, ferry.ErrNotFound) || !strings.Contains(err.Error(), want) {
			t.Errorf("status of %d: %v, want not_found with %q", ver, err, want)
		}
		a := got(t, f.wait(WaitRequest{Version: ver, Timeout: time.Minute}))
		if !errors.Is(a.err, ferry.ErrNotFound) {
			t.Errorf("wait on %d: %v, want not_found", ver, a.err)
		}
	}
}

// A wait completes when the last receiver's floor passes the change, and
// not before; refusals count as done and say why.
func TestWaitCompletesOnTheFloors(t *testing.T) {
	f := newFixture(t)
	v := f.commit(stream.LaneResource)
	ch := f.wait(WaitRequest{Version: v, Timeout: time.Minute})
	f.stream.ack(f.b, stream.LaneResource, v-1) // below: nothing
	f.stream.ack(f.b, stream.LaneResource, v)
	f.stream.ack(f.self, stream.LaneResource, v) // not a receiver
	wait.For(t, waitBound, "the Watch took the floors", func() bool { return len(f.pub.on("delivery.acked.")) >= 1 })
	open(t, ch)
	f.stream.ack(f.c, stream.LaneResource, v+10, &pb.Refusal{Version: v, Reason: "conflict: vm \"x\" exists"})
	a := got(t, ch)
	rs := receiversOf(t, a)
	if a.fields["complete"] != true || states(rs) != "B=acked C=refused" || rs[1].Code != CodeRefused ||
		rs[1].LastError != `conflict: vm "x" exists` {
		t.Fatalf("answer %+v %+v", a.fields, rs)
	}
	if n := f.watch.Waiting(); n != 0 {
		t.Fatalf("%d waits open after the answer", n)
	}
	// A wait on what is acknowledged already answers at once.
	a = got(t, f.wait(WaitRequest{Version: v, Timeout: time.Minute}))
	if a.fields["complete"] != true {
		t.Fatalf("answer %+v", a.fields)
	}
	// The refused event, one per refused change, with its code.
	wait.For(t, waitBound, "the refused event", func() bool { return len(f.pub.on("delivery.refused.")) == 1 })
	e := f.pub.on("delivery.refused.")[0]
	if e.subject != "delivery.refused."+f.c.String() || e.body["receiver"] != f.c.String() || e.body["version"] != v ||
		e.body["code"] != CodeRefused || e.body["name"] != "C" {
		t.Fatalf("refused event %+v", e)
	}
}

func TestWaitForListedReceiversAndTimeouts(t *testing.T) {
	f := newFixture(t)
	v := f.commit(stream.LaneResource)
	f.lanes.set(f.c, stream.LaneResource, func(ls *stream.LaneState) { ls.Attempts, ls.LastError = 3, "connection refused" })
	// Only B: C's floor does not matter.
	onlyB := f.wait(WaitRequest{Version: v, Receivers: []peer.ID{f.b}, Timeout: time.Minute})
	// Both, with a short timeout: answered not complete, C pending.
	both := f.wait(WaitRequest{Version: v, Timeout: 50 * time.Millisecond})
	a := got(t, both)
	rs := receiversOf(t, a)
	if a.fields["complete"] != false || states(rs) != "B=pending C=pending" || rs[1].Attempts != 3 || rs[1].LastError != "connection refused" {
		t.Fatalf("answer at the timeout %+v %+v", a.fields, rs)
	}
	open(t, onlyB)
	f.stream.ack(f.b, stream.LaneResource, v)
	a = got(t, onlyB)
	if rs := receiversOf(t, a); a.fields["complete"] != true || states(rs) != "B=acked" {
		t.Fatalf("answer %+v %+v", a.fields, rs)
	}
	// timeout_ms 0: how things stand now.
	a = got(t, f.wait(WaitRequest{Version: v, Timeout: 0}))
	if rs := receiversOf(t, a); a.fields["complete"] != false || states(rs) != "B=acked C=pending" {
		t.Fatalf("answer %+v %+v", a.fields, rs)
	}
	// A peer the change is not addressed to.
	_, stranger := newPeer(t)
	a = got(t, f.wait(WaitRequest{Version: v, Receivers: []peer.ID{f.b, stranger}, Timeout: time.Minute}))
	if !errors.Is(a.err, ferry.ErrBadRequest) || !strings.Contains(a.err.Error(), "receivers: "+stranger.String()+" is not a receiver") {
		t.Fatalf("wait for a stranger: %v", a.err)
	}
	// An addressed change waits for its addressees only.
	ev := f.commit(stream.LaneConsider, f.c)
	ch := f.wait(WaitRequest{Version: ev, Timeout: time.Minute})
	f.stream.ack(f.c, stream.LaneResource, ev) // another lane
	open(t, ch)
	f.stream.ack(f.c, stream.LaneConsider, ev)
	if a := got(t, ch); a.fields["complete"] != true || states(receiversOf(t, a)) != "C=acked" {
		t.Fatalf("considers answer %+v", a.fields)
	}
}

// Close answers every open wait unavailable, and any later one at once.
func TestCloseAnswersWaits(t *testing.T) {
	f := newFixture(t)
	v := f.commit(stream.LaneResource)
	var chs []chan answer
	for range 100 {
		chs = append(chs, f.wait(WaitRequest{Version: v, Timeout: time.Minute}))
	}
	f.watch.Close()
	for _, ch := range chs {
		if a := got(t, ch); !errors.Is(a.err, ferry.ErrUnavailable) {
			t.Fatalf("open wait at close: %+v", a)
		}
	}
	if a := got(t, f.wait(WaitRequest{Version: v, Timeout: time.Minute})); !errors.Is(a.err, ferry.ErrUnavailable) {
		t.Fatalf("wait after close: %+v", a)
	}
	f.stream.ack(f.b, stream.LaneResource, v) // ignored, no panic
	f.watch.Close()                           // idempotent
}

// Ten thousand waits: a floor wakes exactly the ones it passes.
func TestManyWaitsWakeExactlyThePassed(t *testing.T) {
	f := newFixture(t)
	var vers []uint64
	for range 20 {
		vers = append(vers, f.commit(stream.LaneResource))
	}
	const n = 10_000
	chs := make([]chan answer, n)
	for i := range n {
		chs[i] = f.wait(WaitRequest{Version: vers[i%len(vers)], Receivers: []peer.ID{f.b}, Timeout: time.Minute})
	}
	if w := f.watch.Waiting(); w != n {
		t.Fatalf("%d waits open, want %d", w, n)
	}
	half := vers[len(vers)/2-1]
	f.stream.ack(f.b, stream.LaneResource, half)
	wait.For(t, waitBound, "the passed half answered", func() bool { return f.watch.Waiting() == n/2 })
	for i, ch := range chs {
		if vers[i%len(vers)] <= half {
			if a := got(t, ch); a.fields["complete"] != true {
				t.Fatalf("wait %d: %+v", i, a.fields)
			}
		} else {
			open(t, ch)
		}
	}
	f.stream.ack(f.b, stream.LaneResource, vers[len(vers)-1])
	wait.For(t, waitBound, "every wait answered", func() bool { return f.watch.Waiting() == 0 })
}

// Acked events: at most one per receiver and lane per AckEvery, each with
// the newest floor; a floor heard late and lower never goes back.
func TestAckedEventsAreCoalesced(t *testing.T) {
	f := newFixture(t)
	start := time.Now()
	const moves = 2000
	var last uint64
	for i := range moves {
		last = uint64(1000 + i)
		f.stream.ack(f.b, stream.LaneResource, last)
		if i%100 == 0 {
			f.stream.ack(f.b, stream.LaneResource, last-50) // out of order: ignored
		}
	}
	f.stream.ack(f.c, stream.LaneConsider, 7)
	f.stream.ack(f.c, stream.LaneRequest, 9) // not a lane of ferry.propagate: no event
	wait.For(t, waitBound, "the newest floor is told", func() bool {
		es := f.pub.on("delivery.acked." + f.b.String())
		return len(es) > 0 && es[len(es)-1].body["through"] == last
	})
	elapsed := time.Since(start)
	es := f.pub.on("delivery.acked." + f.b.String())
	bound := int(elapsed/AckEvery) + 1
	t.Logf("%d floor moves in %v: %d acked events (at most %d)", moves, elapsed.Round(time.Millisecond), len(es), bound)
	if len(es) > bound {
		t.Fatalf("%d events for %d moves in %v", len(es), moves, elapsed)
	}
	prev := uint64(0)
	for _, e := range es {
		through := e.body["through"].(uint64)
		if through <= prev || e.body["receiver"] != f.b.String() || e.body["name"] != "B" || e.body["lane"] != "resource" {
			t.Fatalf("event %+v after through %d", e, prev)
		}
		prev = through
	}
	wait.For(t, waitBound, "C's considers event", func() bool { return len(f.pub.on("delivery.acked."+f.c.String())) == 1 })
	if e := f.pub.on("delivery.acked." + f.c.String())[0]; e.body["lane"] != "considers" || e.body["through"] != uint64(7) {
		t.Fatalf("event %+v", e)
	}
	// A rewind is no event, and what follows it is told again.
	f.watch.FloorMoved(f.b, stream.LaneResource, 500, true)
	f.stream.ack(f.b, stream.LaneResource, 600)
	wait.For(t, waitBound, "the floor after a rewind is told", func() bool {
		es := f.pub.on("delivery.acked." + f.b.String())
		return es[len(es)-1].body["through"] == uint64(600)
	})
}

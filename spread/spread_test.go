package spread

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// The service against in-memory stores, libp2p's in-memory network and a
// real gossipsub on each node. The review service is a small fake that
// applies decisions in sequence order (holding early ones) and keeps the
// counter review does; the reviewer's sender is a fake that records the
// floors reports move.

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const ctrApplied = "review_applied"

type roles struct {
	self, reviewer peer.ID
	members        map[peer.ID]bool
}

func (r roles) Self() peer.ID                { return r.self }
func (r roles) Reviewer() peer.ID            { return r.reviewer }
func (r roles) InReviewGroup(p peer.ID) bool { return p != "" && p == r.reviewer }
func (r roles) ReviewGroup() []peer.ID {
	if r.reviewer == "" {
		return nil
	}
	return []peer.ID{r.reviewer}
}
func (r roles) IsMember(p peer.ID) bool { return r.members[p] }
func seqOf(in *stream.Inbound) uint64 {
	d := &pb.ReviewDecision{}
	_ = proto.Unmarshal(in.Body.Payload, d)
	return d.Sequence
}
func newKey(t *testing.T) crypto.PrivKey {
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	must(t, err)
	return k
}

var testutilCount = testutil.ToFloat64

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// decisions applies in sequence order, holding early ones in memory.
type decisions struct {
	st   *store.Store
	mu   sync.Mutex
	held map[uint64]*stream.Inbound
}

func (d *decisions) Applied() uint64 { v, _ := d.st.Counter(ctrApplied); return v }

func (d *decisions) ApplyDecision(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error) {
	seq := seqOf(in)
	applied, err := tx.CounterValue(ctrApplied)
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case seq <= applied:
		return pb.AckStatus_ACK_STATUS_DUPLICATE, nil
	case seq > applied+1:
		d.held[seq] = in
		return pb.AckStatus_ACK_STATUS_APPLIED, nil
	}
	for next := seq; ; next++ {
		x := in
		if next != seq {
			if x = d.held[next]; x == nil {
				break
			}
			delete(d.held, next)
		}
		if _, err := tx.AppendReceived(x.Body, x.Hash, x.Raw); err != nil {
			return 0, err
		}
		tx.SetCounter(ctrApplied, next)
	}
	return pb.AckStatus_ACK_STATUS_APPLIED, nil
}

// acker records the floors members' reports move (the reviewer's sender).
type acker struct {
	mu     sync.Mutex
	floors map[peer.ID]uint64
}

func (a *acker) Acknowledge(p peer.ID, l stream.Lane, through uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if l == stream.LaneDecision && through > a.floors[p] {
		a.floors[p] = through
	}
}

func (a *acker) floor(p peer.ID) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.floors[p]
}

// gaps is the catch-up of a member: it records what it is asked for and
// fills the gap from the reviewer's store, as sync would from any peer.
type gaps struct {
	mu     sync.Mutex
	asks   int
	got    uint64
	from   *store.Store // the reviewer's
	member *Service
	wg     sync.WaitGroup // the fills in flight
	done   bool           // stopped: no more fills start
}

// stop waits for the fills in flight and starts no more (before the
// member's store closes).
func (g *gaps) stop() {
	g.mu.Lock()
	g.done = true
	g.mu.Unlock()
	g.wg.Wait()
}

func (g *gaps) DecisionGap(_ peer.ID, have, got uint64) {
	g.mu.Lock()
	g.asks++
	g.got = max(g.got, got)
	from, member := g.from, g.member
	if from == nil || g.done {
		g.mu.Unlock()
		return
	}
	g.wg.Add(1)
	g.mu.Unlock()
	defer g.wg.Done()
	cs, err := from.Decisions(have, 1000)
	if err != nil || len(cs) == 0 {
		return
	}
	var raws [][]byte
	for _, c := range cs {
		raws = append(raws, protocols.MarshalEnvelope(c.Envelope))
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		_ = member.take(&pb.DecisionNews{Decisions: raws, Head: got, Epoch: from.Epoch()})
	}()
}

func (g *gaps) asked() (int, uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.asks, g.got
}

type node struct {
	id   peer.ID
	st   *store.Store
	svc  *Service
	dec  *decisions
	ack  *acker
	gaps *gaps
	deps Deps // what svc was built from (a test may build it again)
}

type net struct {
	t     *testing.T
	mn    mocknet.Mocknet
	nodes []*node
}

// newNet starts n nodes, node 0 the reviewer, each linked to its
// neighbours on a ring and three ahead (gossip has to relay); members fill
// gaps from the reviewer's store, as sync would.
func newNet(t *testing.T, n int, tune ...func(*Deps)) *net {
	t.Helper()
	return newNetLinked(t, n, true, tune...)
}

// newNetLinked is newNet; with linkAll false only the neighbours are
// linked, so no node can dial any other (the reviewer included).
func newNetLinked(t *testing.T, n int, linkAll bool, tune ...func(*Deps)) *net {
	t.Helper()
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	keys := make([]crypto.PrivKey, n)
	ids := make([]peer.ID, n)
	members := map[peer.ID]bool{}
	for i := range n {
		keys[i] = newKey(t)
		ids[i], _ = peer.IDFromPrivateKey(keys[i])
		members[ids[i]] = true
	}
	x := &net{t: t, mn: mn}
	for i := range n {
		h, err := mn.AddPeer(keys[i], ma.StringCast(fmt.Sprintf("/ip4/10.0.1.%d/tcp/4001", i+1)))
		must(t, err)
		st, err := store.Open("mem", store.Options{Signer: keys[i], InMemory: true})
		must(t, err)
		t.Cleanup(func() { _ = st.Close() })
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithMessageSignaturePolicy(pubsub.StrictSign), pubsub.WithFloodPublish(true))
		must(t, err)
		nd := &node{id: ids[i], st: st, dec: &decisions{st: st, held: map[uint64]*stream.Inbound{}}, ack: &acker{floors: map[peer.ID]uint64{}}, gaps: &gaps{}}
		d := Deps{Host: h, PubSub: ps, Network: "test", Store: st, Verifier: protocols.NewVerifier(),
			Roles: roles{self: ids[i], reviewer: ids[0], members: members}, Decisions: nd.dec, Acker: nd.ack, CatchUp: nd.gaps,
			HeadEvery: 100 * time.Millisecond, ReportEvery: 20 * time.Millisecond, Logger: quiet}
		for _, f := range tune {
			f(&d)
		}
		nd.deps = d
		nd.svc, err = New(d)
		must(t, err)
		if i > 0 {
			nd.gaps.from, nd.gaps.member = x.nodes[0].st, nd.svc
		}
		t.Cleanup(nd.gaps.stop) // after the service stops, before the store closes
		must(t, nd.svc.Start())
		t.Cleanup(nd.svc.Close)
		x.nodes = append(x.nodes, nd)
	}
	if linkAll {
		must(t, mn.LinkAll())
	}
	for i := range n {
		for _, j := range []int{(i + 1) % n, (i + 3) % n} {
			if !linkAll {
				if _, err := mn.LinkPeers(ids[i], ids[j]); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := mn.ConnectPeers(ids[i], ids[j]); err != nil {
				t.Fatal(err)
			}
		}
	}
	return x
}

// waitTopic waits until every node sees some of the topic's peers:
// gossipsub builds its mesh on its heartbeat.
func (x *net) waitTopic() {
	x.t.Helper()
	wait.For(x.t, waitTimeout, "every node sees the topic's peers", func() bool {
		for _, n := range x.nodes {
			if len(n.svc.topic.ListPeers()) == 0 {
				return false
			}
		}
		return true
	})
}

// decide commits decisions from..to at the reviewer, one a transaction,
// and publishes them.
func (x *net) decide(from, to uint64) map[uint64]uint64 { return x.decideBy(from, to, 1) }

// decideBy is decide with per decisions a transaction.
func (x *net) decideBy(from, to, per uint64) map[uint64]uint64 {
	x.t.Helper()
	r := x.nodes[0]
	vers := map[uint64]uint64{}
	for first := from; first <= to; first += per {
		err := r.st.Update(context.Background(), func(tx *store.Txn) error {
			for seq := first; seq <= min(first+per-1, to); seq++ {
				payload, _ := proto.Marshal(&pb.ReviewDecision{Sequence: seq, Request: &pb.ReviewRequest{TableName: "tb", TableId: seq, Type: "insert", Data: []byte(`{}`)}})
				ver, sealed, err := tx.AppendOwn(&pb.Body{Origin: []byte(r.id), Kind: pb.Kind_KIND_REVIEW_DECISION, DataType: "tb", Payload: payload})
				if err != nil {
					return err
				}
				tx.PutDecision(seq, ver, sealed.Hash)
				tx.SetCounter(ctrApplied, seq)
				vers[seq] = ver
				pid, _ := protocols.ProtocolFor(pb.Kind_KIND_REVIEW_DECISION, "")
				tx.AddOwnEntry(store.OwnEntry{Version: ver, Lane: uint8(stream.LaneDecision), Kind: pb.Kind_KIND_REVIEW_DECISION, Protocol: pid}, sealed)
			}
			return nil
		})
		must(x.t, err)
	}
	return vers
}

// waitTimeout bounds every wait of these tests.
const waitTimeout = 30 * time.Second

// TestDecisionsReachEveryMemberAndTheirReportsTheReviewer: decisions the
// reviewer publishes reach members it is not connected to, each is applied
// once in order, each member's position in the decision lane follows, and
// every member's report moves its floor at the reviewer.
func TestDecisionsReachEveryMemberAndTheirReportsTheReviewer(t *testing.T) {
	x := newNet(t, 12)
	// Gossipsub builds its mesh on its heartbeat: let the subscriptions meet.
	x.waitTopic()
	vers := x.decide(1, 40)
	for i, n := range x.nodes[1:] {
		wait.For(t, waitTimeout, fmt.Sprintf("member %d applied 40", i+1), func() bool { return n.dec.Applied() == 40 })
		pos, err := n.st.Position(x.nodes[0].id, uint8(stream.LaneDecision))
		must(t, err)
		if pos.Version != vers[40] || pos.Epoch != x.nodes[0].st.Epoch() {
			t.Fatalf("member %d's position in the decision lane: %+v, want version %d", i+1, pos, vers[40])
		}
	}
	rev := x.nodes[0]
	for i, n := range x.nodes[1:] {
		wait.For(t, waitTimeout, fmt.Sprintf("member %d's report reached the reviewer", i+1), func() bool { return rev.ack.floor(n.id) == vers[40] })
	}
	if n := testutilCount(rev.svc.m.reports.WithLabelValues("in", "ok")); n < float64(len(x.nodes)-1) {
		t.Fatalf("the reviewer took %v reports", n)
	}
}

// TestAMemberThatMissedNewsAsksForTheGap: a member away (its service
// stopped: a process down, as far as gossip goes) while decisions went out
// hears the head when it is back, asks for what it lacks, and applies it.
// (Cutting it off with mocknet links instead leaked: the mocknet closes
// the far end of a connection later, and news still arrived under load.)
func TestAMemberThatMissedNewsAsksForTheGap(t *testing.T) {
	x := newNet(t, 6)
	x.waitTopic()
	away := x.nodes[5]
	away.svc.Close()
	x.decide(1, 10)
	wait.For(t, waitTimeout, "the others applied 10", func() bool { return x.nodes[4].dec.Applied() == 10 })
	if away.dec.Applied() != 0 {
		t.Fatal("the member away applied decisions")
	}
	if asks, _ := away.gaps.asked(); asks != 0 {
		t.Fatalf("the member away asked for a gap %d times", asks)
	}
	// Back: a new service on the same host, store and gossipsub.
	svc, err := New(away.deps)
	must(t, err)
	away.gaps.mu.Lock()
	away.gaps.member = svc
	away.gaps.mu.Unlock()
	t.Cleanup(svc.Close) // runs before the fills stop and the store closes
	must(t, svc.Start())
	wait.For(t, waitTimeout, "the member asked for decisions through 10", func() bool { _, got := away.gaps.asked(); return got == 10 })
	wait.For(t, waitTimeout, "the member applied 10", func() bool { return away.dec.Applied() == 10 })
}

// TestNewsFromAnotherPeerIsRefused: only the reviewer's news is taken.
func TestNewsFromAnotherPeerIsRefused(t *testing.T) {
	x := newNet(t, 4)
	x.waitTopic()
	// Member 1 seals a "decision" itself and publishes it as news.
	m := x.nodes[1]
	payload, _ := proto.Marshal(&pb.ReviewDecision{Sequence: 1, Request: &pb.ReviewRequest{TableName: "tb", TableId: 1, Type: "insert", Data: []byte(`{}`)}})
	var raw []byte
	must(t, m.st.Update(context.Background(), func(tx *store.Txn) error {
		_, sealed, err := tx.AppendOwn(&pb.Body{Origin: []byte(m.id), Kind: pb.Kind_KIND_REVIEW_DECISION, DataType: "tb", Payload: payload})
		tx.OnCommit(func() { raw = sealed.Shape.Marshal() })
		return err
	}))
	b, _ := proto.Marshal(&pb.DecisionNews{Decisions: [][]byte{raw}, Head: 1})
	if err := m.svc.topic.Publish(context.Background(), b); err == nil {
		t.Fatal("a member published news: its own validator let it through")
	}
	// Then the reviewer's own decision: it arrives; the forged one never did.
	x.decide(1, 1)
	for _, n := range x.nodes[2:] {
		wait.For(t, waitTimeout, "members applied the reviewer's decision", func() bool { return n.dec.Applied() == 1 })
		if got := testutilCount(n.svc.m.decisions.WithLabelValues("forged")); got != 0 {
			t.Fatalf("a member looked at %v forged decisions: the validator let them through", got)
		}
	}
}

// TestABurstWithoutLossAsksForNoGap: decisions committed faster than news
// goes out reach every member by news alone; no member asks its peers for
// a gap (each news's head is its own last decision, and news out of order
// waits a moment before it counts as a gap).
func TestABurstWithoutLossAsksForNoGap(t *testing.T) {
	// A member applies the burst well within the grace even on a loaded
	// machine under -race; a head ahead of a batch asks at once whatever
	// the grace (the old code's fault this test catches).
	x := newNet(t, 8, func(d *Deps) { d.GapGrace = 5 * time.Second })
	x.waitTopic()
	asks := func() []int {
		var out []int
		for _, n := range x.nodes[1:] {
			k, _ := n.gaps.asked()
			out = append(out, k)
		}
		return out
	}
	// Until gossipsub has built its mesh (on its heartbeat), a member that
	// is not the reviewer's neighbour misses news and rightly asks: one
	// decision at a time until one reaches every member by news alone.
	seq := uint64(0)
	for {
		before := asks()
		seq++
		x.decide(seq, seq)
		for _, n := range x.nodes[1:] {
			wait.For(t, waitTimeout, fmt.Sprintf("members applied %d", seq), func() bool { return n.dec.Applied() == seq })
		}
		if slices.Equal(before, asks()) {
			break
		}
		if seq == 20 {
			t.Fatal("20 decisions, one at a time, and still members asked for gaps")
		}
	}
	before := asks()
	last := seq + 300
	// Thirty a commit: faster than news go out (5 ms each), in fewer news
	// than gossipsub's per-peer queue holds (a loaded machine drops what
	// overflows it, and then asking is right).
	x.decideBy(seq+1, last, 30)
	for i, n := range x.nodes[1:] {
		wait.For(t, waitTimeout, fmt.Sprintf("member %d applied %d", i+1, last), func() bool { return n.dec.Applied() == last })
	}
	if after := asks(); !slices.Equal(before, after) {
		t.Errorf("members asked for gaps though no news was lost: %v before the burst, %v after", before, after)
	}
}

// TestNextGapWait: the wait doubles while asks bring nothing, up to the
// most, and goes back to the grace once decisions were applied.
func TestNextGapWait(t *testing.T) {
	grace, most := time.Second, time.Minute
	wait, last := grace, uint64(5)
	var waits []time.Duration
	for range 8 {
		wait, last = nextGapWait(wait, last, 5, grace, most)
		waits = append(waits, wait)
	}
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute, time.Minute, time.Minute}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	if wait, last = nextGapWait(wait, last, 6, grace, most); wait != grace || last != 6 {
		t.Fatalf("after progress: wait %v last %d, want %v and 6", wait, last, grace)
	}
}

// TestAGapNobodyFillsIsAskedLessAndLessOften: a member whose gap no peer
// fills asks again with a growing wait, not at every grace.
func TestAGapNobodyFillsIsAskedLessAndLessOften(t *testing.T) {
	const grace, most = 10 * time.Millisecond, 80 * time.Millisecond
	x := newNet(t, 4, func(d *Deps) { d.GapGrace, d.GapBackoffMax = grace, most })
	x.waitTopic()
	away := x.nodes[3]
	away.svc.Close()
	x.decide(1, 3)
	wait.For(t, waitTimeout, "the others applied 3", func() bool { return x.nodes[2].dec.Applied() == 3 })
	// Back, with nobody to fill its gap.
	away.gaps.mu.Lock()
	away.gaps.from = nil
	away.gaps.mu.Unlock()
	svc, err := New(away.deps)
	must(t, err)
	away.gaps.mu.Lock()
	away.gaps.member = svc
	away.gaps.mu.Unlock()
	t.Cleanup(svc.Close)
	must(t, svc.Start())
	wait.For(t, waitTimeout, "the member asked for its gap", func() bool { n, _ := away.gaps.asked(); return n >= 1 })
	start := time.Now()
	const asks = 6 // after the first: waits of 20, 40, 80, 80, 80, 80 ms at least
	wait.For(t, waitTimeout, "the member asked again", func() bool { n, _ := away.gaps.asked(); return n >= 1+asks })
	// Timers never fire early: the asks took at least the backoff's sum,
	// 380 ms, less the moment the poll may have seen the first ask late
	// (every grace, 60 ms in all, without the backoff).
	if took, least := time.Since(start), 250*time.Millisecond; took < least {
		t.Fatalf("%d asks in %v: the waits did not grow (at least %v with backoff)", asks, took, least)
	}
	if away.dec.Applied() != 0 {
		t.Fatal("the member applied decisions nobody gave it")
	}
}

// TestNextHead: after a new head the next goes HeadEvery later; while the
// head stays the same the wait doubles, up to headQuiet HeadEvery.
func TestNextHead(t *testing.T) {
	every := 5 * time.Second
	wait, last := every, uint64(0)
	var waits []time.Duration
	for _, applied := range []uint64{7, 7, 7, 7, 7, 7, 7} {
		wait, last = nextHead(wait, last, applied, every)
		waits = append(waits, wait)
	}
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, time.Minute, time.Minute, time.Minute}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	if wait, last = nextHead(wait, last, 8, every); wait != every || last != 8 {
		t.Fatalf("after a new head: wait %v last %d, want %v and 8", wait, last, every)
	}
}

// TestAtRestTheHeadGoesLessAndLessOften: with nothing new decided, the
// reviewer's head alone goes out after waits that grow, not every
// HeadEvery (each one floods the network).
func TestAtRestTheHeadGoesLessAndLessOften(t *testing.T) {
	const every = 10 * time.Millisecond
	x := newNet(t, 4, func(d *Deps) { d.HeadEvery = every })
	x.decide(1, 1)
	for _, n := range x.nodes[1:] {
		wait.For(t, waitTimeout, "members applied 1", func() bool { return n.dec.Applied() == 1 })
	}
	out := func() float64 { return testutilCount(x.nodes[0].svc.m.news.WithLabelValues("out")) }
	from := out()
	wait.For(t, waitTimeout, "the reviewer sent a head", func() bool { return out() >= from+1 })
	start, first := time.Now(), out()
	const heads = 6 // after the first: waits of 10, 20, 40, 80, 120, 120 ms at least (the first may be the head after the news)
	wait.For(t, waitTimeout, "the reviewer sent more heads", func() bool { return out() >= first+heads })
	// Timers never fire early: the heads took at least the sum of the waits
	// but the first (380 ms; 60 ms without the backoff), less the moment the
	// poll may have seen the first head late.
	if took, least := time.Since(start), 250*time.Millisecond; took < least {
		t.Fatalf("%d heads in %v: the waits did not grow (at least %v with backoff)", heads, took, least)
	}
}

package catchup

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// The asking side (sync.go): which jobs are asked for, of whom, and what a
// job verifies and applies. See helpers_test.go for the fakes.

const incomplete = "catch-up incomplete; will try again"

// exactly checks that got is want, in order, once each.
func exactly(t *testing.T, what string, got, want []uint64) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: applied %d (%v), want %d in order once each (%v)", what, len(got), got[:min(8, len(got))],
			len(want), want[:min(8, len(want))])
	}
}

// verifyHeld checks that every change of origin the store holds is the
// envelope the origin signed (it verifies) and returns their versions.
func verifyHeld(t *testing.T, st *store.Store, o peer.ID) []uint64 {
	t.Helper()
	cs, _, err := st.OriginChanges(o, 0, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	v := protocols.NewVerifier()
	var out []uint64
	for _, c := range cs {
		if _, signer, err := v.Open(c.Envelope); err != nil || signer != o {
			t.Fatalf("held change %d of %s does not verify: %v (signer %s)", c.Body.OriginVersion, o, err, signer)
		}
		out = append(out, c.Body.OriginVersion)
	}
	return out
}

// Another origin's chain, from a partner that holds it, while the
// origin is away: exactly the missing changes, in order, verified, once;
// asking again brings nothing.
func TestResourcesOfAnAbsentOriginComeFromAPartner(t *testing.T) {
	net := newNetwork(t)
	s, n := net.node(), net.node()
	o := newOrigin(t) // a partner of both, away (it has no host here)
	s.roles.set([]peer.ID{n.id, o.id}, []peer.ID{n.id, o.id}, "")
	n.roles.set([]peer.ID{s.id, o.id}, []peer.ID{s.id, o.id}, "")

	envs := append(o.resources(12, 64), o.resources(8, 64)...) // two commits of O
	all := versions(t, envs)
	s.hold(envs...)
	n.hold(envs[:8]...)
	n.hold(envs[11]) // delivered ahead of a gap: the chain mark stays at the 8th
	if held, _ := n.res.Held(o.id); held != all[7] {
		t.Fatalf("N holds O's chain up to %d, want %d", held, all[7])
	}

	// N starts alone: the chains of its partners that are not connected
	// (S's and O's) are asked for and no one can answer.
	s.start()
	n.start()
	wait.For(t, waitTimeout, "N's first jobs find no peer", func() bool {
		return len(n.logs.find(incomplete, "err", "no peer to ask is connected")) == 2
	})
	if len(n.res.applied()) != 0 {
		t.Fatalf("applied %v with no peer", n.res.applied())
	}

	// S connects; the hello hook runs Connected: N asks S for O's chain.
	net.connect(n, s)
	n.svc.Connected(s.id)
	want := append(slices.Clone(all[8:11]), all[12:]...)
	wait.For(t, waitTimeout, "N applied O's missing changes", func() bool { return len(n.res.applied()) >= len(want) })
	wait.For(t, waitTimeout, "the job ended", func() bool { return !n.svc.LastCatchUp().IsZero() })
	exactly(t, "resources", versionsOf(n.res.applied()), want)
	for _, a := range n.res.applied() {
		if a.origin != o.id {
			t.Fatalf("applied a change of %s", a.origin)
		}
	}
	if held, _ := n.res.Held(o.id); held != all[19] {
		t.Fatalf("N holds O's chain up to %d, want %d", held, all[19])
	}
	if got := verifyHeld(t, n.st, o.id); !slices.Equal(got, all) {
		t.Fatalf("N's store holds %v of O, want all 20", got)
	}
	if a, d := n.outcome("resources", "applied"), n.outcome("resources", "duplicate"); a != 11 || d != 1 {
		t.Fatalf("outcomes applied %d, duplicate %d; want 11 and 1 (the change delivered ahead)", a, d)
	}
	if f := n.failures("resources"); f != 2 {
		t.Fatalf("failed resources jobs %d, want 2 (the ones that found no peer)", f)
	}

	// Asking again brings nothing: the run starts from the chain mark.
	if err := n.svc.run(job{what: pb.SyncRequest_WHAT_RESOURCES, origin: o.id}, []peer.ID{s.id}); err != nil {
		t.Fatal(err)
	}
	exactly(t, "resources after asking again", versionsOf(n.res.applied()), want)
	if a, d := n.outcome("resources", "applied"), n.outcome("resources", "duplicate"); a != 11 || d != 1 {
		t.Fatalf("asking again: outcomes applied %d, duplicate %d; want 11 and 1", a, d)
	}
}

// A change refused for good is not applied and the rest of its batch is.
// Refused keeping its bookkeeping (stream.RejectKeeping, as propagate
// refuses), the chain mark moves past it so it is not fetched again;
// refused plainly, everything it wrote is rolled back.
func TestRefusedChangeIsSkippedAndTheRestApplied(t *testing.T) {
	for _, keep := range []bool{true, false} {
		t.Run(fmt.Sprintf("keep %v", keep), func(t *testing.T) {
			net := newNetwork(t)
			s, n := net.node(), net.node()
			o := newOrigin(t)
			s.roles.set([]peer.ID{n.id, o.id}, nil, "")
			n.roles.set([]peer.ID{s.id, o.id}, nil, "")
			envs := o.resources(10, 64)
			all := versions(t, envs)
			s.hold(envs...)
			refused := all[4]
			n.res.reject = func(v uint64) bool { return v == refused }
			n.res.keep = keep
			net.connect(n, s)
			s.start()
			if err := n.svc.run(job{what: pb.SyncRequest_WHAT_RESOURCES, origin: o.id}, nil); err != nil {
				t.Fatal(err)
			}
			exactly(t, "resources", versionsOf(n.res.applied()), slices.Delete(slices.Clone(all), 4, 5))
			wantHeld := all[9]
			if !keep {
				wantHeld = all[3] // the mark's move over the refused change was rolled back: the chain has a gap
			}
			if held, _ := n.res.Held(o.id); held != wantHeld {
				t.Fatalf("chain mark %d, want %d", held, wantHeld)
			}
			if _, err := n.st.OriginEntry(o.id, refused); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("the refused change is held: %v", err)
			}
			if r, a := n.outcome("resources", "refused"), n.outcome("resources", "applied"); r != 1 || a != 9 {
				t.Fatalf("outcomes refused %d, applied %d; want 1 and 9", r, a)
			}
			if len(n.logs.find("sync: change refused", "reason", fmt.Sprintf("refused %d", refused))) != 1 {
				t.Fatal("no WARN line for the refused change")
			}
		})
	}
}

// Decisions from a member while the reviewer is away: the missing ones,
// in sequence order; asking again brings nothing.
func TestDecisionsComeFromAMemberWhileTheReviewerIsAway(t *testing.T) {
	net := newNetwork(t)
	m, n := net.node(), net.node()
	r := newOrigin(t) // the reviewer, away
	members := []peer.ID{m.id, n.id, r.id}
	m.roles.set(nil, members, r.id)
	n.roles.set(nil, members, r.id)
	decs := append(r.decisions(1, 2, 3, 4), r.decisions(5, 6, 7)...)
	decs = append(decs, r.decisions(8, 9, 10)...)
	m.hold(decs...)
	n.hold(decs[:4]...)
	if a := n.dec.Applied(); a != 4 {
		t.Fatalf("N applied %d, want 4", a)
	}
	net.connect(n, m)
	m.start()
	n.start() // the reviewer is not connected: Everything asks for decisions
	wait.For(t, waitTimeout, "N applied decisions 5 to 10", func() bool { return len(n.dec.applied()) >= 6 })
	exactly(t, "decisions", versionsOf(n.dec.applied()), []uint64{5, 6, 7, 8, 9, 10})
	if a := n.dec.Applied(); a != 10 {
		t.Fatalf("applied sequence %d, want 10", a)
	}
	for _, a := range n.dec.applied() {
		if a.origin != r.id {
			t.Fatalf("applied a decision of %s", a.origin)
		}
	}
	if got := verifyHeld(t, n.st, r.id); len(got) != 10 {
		t.Fatalf("N holds %d decisions, want 10", len(got))
	}
	// Connected with the member (a hello) asks again: nothing new.
	n.svc.Connected(m.id)
	if err := n.svc.run(job{what: pb.SyncRequest_WHAT_DECISIONS}, []peer.ID{m.id}); err != nil {
		t.Fatal(err)
	}
	exactly(t, "decisions after asking again", versionsOf(n.dec.applied()), []uint64{5, 6, 7, 8, 9, 10})
}

// A decision not signed by the reviewer (a member that holds one, forged
// or by another key) is refused with its whole batch; the next member that
// holds the reviewer's is asked.
func TestDecisionNotSignedByTheReviewerIsRefused(t *testing.T) {
	net := newNetwork(t)
	bad, good, n := net.node(), net.node(), net.node()
	r := newOrigin(t)
	impostor := newOrigin(t)
	members := []peer.ID{bad.id, good.id, n.id, r.id}
	for _, x := range []*node{bad, good, n} {
		x.roles.set(nil, members, r.id)
	}
	decs := r.decisions(1, 2, 3, 4, 5, 6)
	bad.hold(decs[:4]...)
	bad.hold(impostor.decisions(5)...) // signed, but not by the reviewer
	good.hold(decs...)
	n.hold(decs[:2]...)
	net.connect(n, bad)
	bad.start()
	good.start()

	err := n.svc.run(job{what: pb.SyncRequest_WHAT_DECISIONS}, []peer.ID{bad.id})
	if err == nil || !strings.Contains(err.Error(), "answer holds a decision not signed by the reviewer") {
		t.Fatalf("job error %v, want a decision not signed by the reviewer", err)
	}
	if len(n.dec.applied()) != 0 || n.dec.Applied() != 2 {
		t.Fatalf("applied %v (at %d): nothing of a forged batch may be applied", n.dec.applied(), n.dec.Applied())
	}
	if f := n.outcome("decisions", "forged"); f != 1 {
		t.Fatalf("forged outcomes %d, want 1", f)
	}

	// Another member holds the reviewer's decisions: the job goes on to it.
	net.connect(n, good)
	if err := n.svc.run(job{what: pb.SyncRequest_WHAT_DECISIONS}, []peer.ID{bad.id, good.id}); err != nil {
		t.Fatal(err)
	}
	exactly(t, "decisions", versionsOf(n.dec.applied()), []uint64{3, 4, 5, 6})
	if got := verifyHeld(t, n.st, r.id); len(got) != 6 {
		t.Fatalf("N holds %d of the reviewer's decisions, want 6", len(got))
	}
	if got, _, _ := n.st.OriginChanges(impostor.id, 0, 10); len(got) != 0 {
		t.Fatalf("N holds %d changes of the impostor", len(got))
	}
}

// A node whose store was restored from an older copy takes back its own
// changes, of every kind, from a peer that holds them; each comes back
// once, at its version.
func TestOwnChangesComeBackFromAPeer(t *testing.T) {
	net := newNetwork(t)
	n, p := net.node(), net.node()
	for _, x := range []*node{n, p} {
		x.roles.set(nil, []peer.ID{n.id, p.id}, "")
	}
	me := n.as()
	mine := me.resources(6, 64)
	mine = append(mine, me.other(pb.Kind_KIND_REVIEW_REQUEST, p.id))
	mine = append(mine, me.resources(3, 64)...)
	vers := versions(t, mine)
	p.hold(mine...)
	// The older copy held the first four.
	err := n.st.Update(t.Context(), func(tx *store.Txn) error {
		for _, env := range mine[:4] {
			b, err := proto.Marshal(env)
			if err != nil {
				return err
			}
			body := &pb.Body{}
			if err := proto.Unmarshal(env.Body, body); err != nil {
				return err
			}
			if _, err := tx.PutOwnRecovered(body, store.BodyHash(env.Body), b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	n.own.from = vers[3]
	net.connect(n, p)
	p.start()
	n.start()

	n.svc.Recover(p.id)
	wait.For(t, waitTimeout, "the recovery ended", func() bool { return len(n.own.recoveries()) == 1 })
	if r := n.own.recoveries()[0]; r.peer != p.id || r.n != 6 || r.err != nil {
		t.Fatalf("Recovered(%s, %d, %v), want (%s, 6, nil)", r.peer, r.n, r.err, p.id)
	}
	exactly(t, "own", versionsOf(n.own.applied()), vers[4:])
	for _, v := range vers {
		e, err := n.st.OriginEntry(n.id, v)
		if err != nil || e.LocalVersion != v {
			t.Fatalf("own change %d: %v at %d, want it back at its version", v, err, e.LocalVersion)
		}
	}
	if got := verifyHeld(t, n.st, n.id); !slices.Equal(got, vers) {
		t.Fatalf("N holds %v of its own, want %v", got, vers)
	}

	// Asked again: the peer serves them again, none is missing.
	n.svc.Recover(p.id)
	wait.For(t, waitTimeout, "the second recovery ended", func() bool { return len(n.own.recoveries()) == 2 })
	if r := n.own.recoveries()[1]; r.peer != p.id || r.n != 0 || r.err != nil {
		t.Fatalf("second Recovered(%s, %d, %v), want (%s, 0, nil)", r.peer, r.n, r.err, p.id)
	}
	exactly(t, "own after asking again", versionsOf(n.own.applied()), vers[4:])
	if d := n.outcome("own", "duplicate"); d != 6 {
		t.Fatalf("own duplicates %d, want 6", d)
	}
}

// Own changes are taken only if this node signed them: changes that name
// this node as their origin but another key signed are not believed (a
// change of another origin is in TestAskerChecksWhatItIsGiven).
func TestOwnChangesSignedByAnotherAreRefused(t *testing.T) {
	net := newNetwork(t)
	n, p := net.node(), net.node()
	for _, x := range []*node{n, p} {
		x.roles.set(nil, []peer.ID{n.id, p.id}, "")
	}
	// p holds, under n's origin, a change whose body names n but that
	// another key signed.
	forger := &origin{t: t, key: newKey(t), id: n.id, ver: 1_000_000}
	p.hold(forger.resources(3, 64)...)
	net.connect(n, p)
	p.start()
	n.start()
	n.svc.Recover(p.id)
	wait.For(t, waitTimeout, "the recovery ended", func() bool { return len(n.own.recoveries()) == 1 })
	r := n.own.recoveries()[0]
	if r.n != 0 || !errors.Is(r.err, protocols.ErrBadSignature) {
		t.Fatalf("Recovered(%s, %d, %v), want a bad signature", r.peer, r.n, r.err)
	}
	if len(n.own.applied()) != 0 {
		t.Fatalf("recovered %v", n.own.applied())
	}
	wait.For(t, waitTimeout, "the failed job is counted", func() bool { return n.failures("own") == 1 })
}

// The snapshot streams from the reviewer: every chunk reaches
// ApplySnapshotChunk once, in order, with the reviewer, and SnapshotDone is
// called with nil.
func TestSnapshotFromTheReviewer(t *testing.T) {
	net := newNetwork(t)
	r, n := net.node(), net.node()
	members := []peer.ID{r.id, n.id}
	r.roles.set(nil, members, r.id)
	n.roles.set(nil, members, r.id)
	const count = protocols.MaxTreeLeaves + 76 // two sealed batches
	r.dec.chunks = chunks(42, count)
	net.connect(n, r)
	r.start()
	n.start()

	n.svc.FetchSnapshot(r.id)
	wait.For(t, waitTimeout, "SnapshotDone", func() bool { return len(n.dec.snapshotDone()) > 0 })
	if d := n.dec.snapshotDone(); len(d) != 1 || d[0].reviewer != r.id || d[0].err != nil {
		t.Fatalf("SnapshotDone %v, want once with (%s, nil)", d, r.id)
	}
	got := n.dec.snapshotApplied()
	if len(got) != count {
		t.Fatalf("applied %d chunks, want %d", len(got), count)
	}
	for i, c := range got {
		if c.index != uint32(i) || c.reviewer != r.id {
			t.Fatalf("chunk %d: index %d from %s, want %d from the reviewer", i, c.index, c.reviewer, i)
		}
	}
	if a := n.dec.Applied(); a != 42 {
		t.Fatalf("applied sequence %d after the snapshot, want 42", a)
	}
	if row, err := n.st.Row("sites", count); err != nil || string(row) != fmt.Sprintf(`{"n":%d}`, count) {
		t.Fatalf("last row %q, %v", row, err)
	}
	if rows := n.outcome("snapshot", "applied"); rows != count {
		t.Fatalf("snapshot rows counted %d, want %d", rows, count)
	}
}

// chunks builds a snapshot of count chunks of one row each at sequence seq.
func chunks(seq uint64, count int) []*pb.SnapshotChunk {
	out := make([]*pb.SnapshotChunk, count)
	for i := range out {
		out[i] = &pb.SnapshotChunk{Sequence: seq, Version: 77, Epoch: 1, Index: uint32(i), Last: i == count-1,
			Rows: []*pb.TableRow{{Table: "sites", Id: uint64(i + 1), Json: fmt.Appendf(nil, `{"n":%d}`, i+1)}}}
	}
	return out
}

// A snapshot is taken only from the reviewer: a member that is not the
// reviewer refuses, one that claims to be is not believed, and chunks out of
// order are refused; SnapshotDone reports each failure and nothing is
// applied.
func TestSnapshotOnlyFromTheReviewer(t *testing.T) {
	net := newNetwork(t)
	r, n, x, y := net.node(), net.node(), net.node(), net.node()
	members := []peer.ID{r.id, n.id, x.id, y.id}
	for _, m := range []*node{r, n, x} {
		m.roles.set(nil, members, r.id)
	}
	y.roles.set(nil, members, y.id) // y believes it is the reviewer
	x.dec.chunks = chunks(5, 3)
	y.dec.chunks = chunks(5, 3)
	bad := chunks(5, 4)
	bad[2].Index = 3
	r.dec.chunks = bad
	for _, p := range []*node{r, x, y} {
		net.connect(n, p)
		p.start()
	}
	n.start()

	for i, c := range []struct {
		from *node
		want string
	}{
		{x, "refused: only the reviewer serves snapshots"},
		{y, "answer holds a snapshot chunk not signed by the reviewer"},
		{r, "snapshot chunk 3 out of order (want 2)"},
	} {
		n.svc.FetchSnapshot(c.from.id)
		wait.For(t, waitTimeout, "SnapshotDone", func() bool { return len(n.dec.snapshotDone()) == i+1 })
		d := n.dec.snapshotDone()[i]
		if d.reviewer != c.from.id || d.err == nil || !strings.Contains(d.err.Error(), c.want) {
			t.Fatalf("SnapshotDone(%s, %v), want (%s, %q)", d.reviewer, d.err, c.from.id, c.want)
		}
		if got := n.dec.snapshotApplied(); len(got) != 0 {
			t.Fatalf("asking %s applied %d chunks", c.from.id, len(got))
		}
	}
	if f := n.outcome("snapshot", "forged"); f != 1 {
		t.Fatalf("forged snapshot outcomes %d, want 1", f)
	}
	if f := n.failures("snapshot"); f != 3 {
		t.Fatalf("failed snapshot jobs %d, want 3", f)
	}
	if a := n.dec.Applied(); a != 0 {
		t.Fatalf("applied sequence %d", a)
	}
}

// The asker of a refused request records the failure (the job's error,
// logged at DEBUG) and applies nothing.
func TestRefusedRequestIsRecordedAndNothingApplied(t *testing.T) {
	net := newNetwork(t)
	s, n := net.node(), net.node()
	o := newOrigin(t)
	s.roles.set([]peer.ID{o.id}, []peer.ID{n.id, o.id}, "") // n is not a partner of s
	n.roles.set([]peer.ID{s.id, o.id}, []peer.ID{s.id, o.id}, "")
	s.hold(o.resources(5, 64)...)
	net.connect(n, s)
	s.start()
	n.start() // o is away: Everything asks s for its chain

	want := fmt.Sprintf("refused: resources of %s are shared with partners only", o.id)
	wait.For(t, waitTimeout, "N's job failed", func() bool { return len(n.logs.find(incomplete, "err", want)) > 0 })
	if len(s.logs.find("sync request refused", "reason", fmt.Sprintf("resources of %s are shared with partners only", o.id))) == 0 {
		t.Fatal("S did not log the refusal")
	}
	if len(n.res.applied()) != 0 {
		t.Fatalf("applied %v", n.res.applied())
	}
	if v, _ := n.st.LastOriginVersion(o.id); v != 0 {
		t.Fatalf("N holds O's changes up to %d", v)
	}
	if !n.svc.LastCatchUp().IsZero() {
		t.Fatal("a refused job counts as a catch-up")
	}
	if f := n.failures("resources"); f < 1 {
		t.Fatalf("failed resources jobs %d, want at least 1", f)
	}

	// An asker that holds more than the server is refused too.
	s.roles.set([]peer.ID{o.id, n.id}, []peer.ID{n.id, o.id}, "")
	err := n.st.Update(t.Context(), func(tx *store.Txn) error {
		tx.SetCounter(chainCounter(o.id), 99_000_000)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	latest, _ := s.st.LastOriginVersion(o.id)
	err = n.svc.run(job{what: pb.SyncRequest_WHAT_RESOURCES, origin: o.id}, nil)
	want = fmt.Sprintf("refused: position 99000000 is in the future (this node holds up to %d)", latest)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("job error %v, want %q", err, want)
	}
	if len(n.res.applied()) != 0 {
		t.Fatalf("applied %v", n.res.applied())
	}
	for _, o := range []string{"applied", "duplicate", "refused", "forged"} {
		if c := n.outcome("resources", o); c != 0 {
			t.Fatalf("outcome %s counted %d", o, c)
		}
	}
}

// A forged or corrupted envelope in an answer: nothing of its batch is
// applied, the job reports it, and the next partner that holds the chain
// is asked.
func TestForgedChangesAreNotApplied(t *testing.T) {
	for _, c := range []struct {
		name  string
		spoil func(t *testing.T, env *pb.Envelope, o *origin) *pb.Envelope
	}{
		{"bad signature", func(_ *testing.T, env *pb.Envelope, _ *origin) *pb.Envelope {
			env = proto.Clone(env).(*pb.Envelope)
			env.RootSignature[3] ^= 0x40
			return env
		}},
		{"body altered", func(t *testing.T, env *pb.Envelope, _ *origin) *pb.Envelope {
			env = proto.Clone(env).(*pb.Envelope)
			body := &pb.Body{}
			if err := proto.Unmarshal(env.Body, body); err != nil {
				t.Fatal(err)
			}
			body.Payload = []byte(`{"id":"stolen"}`)
			var err error
			if env.Body, err = proto.Marshal(body); err != nil {
				t.Fatal(err)
			}
			return env
		}},
		{"signed by another key", func(t *testing.T, env *pb.Envelope, o *origin) *pb.Envelope {
			body := &pb.Body{}
			if err := proto.Unmarshal(env.Body, body); err != nil {
				t.Fatal(err)
			}
			forger := &origin{t: t, key: newKey(t), id: o.id, ver: body.OriginVersion - 1, head: body.PrevVersion}
			return forger.resources(1, 64)[0]
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			net := newNetwork(t)
			s, good, n := net.node(), net.node(), net.node()
			o := newOrigin(t)
			for _, x := range []*node{s, good, n} {
				x.roles.set([]peer.ID{s.id, good.id, n.id, o.id}, nil, "")
			}
			// Three commits: the spoilt change is alone in its signed tree
			// (an envelope whose tree root verified through another
			// envelope needs no signature check of its own).
			envs := slices.Concat(o.resources(3, 64), o.resources(1, 64), o.resources(2, 64))
			all := versions(t, envs)
			spoilt := slices.Clone(envs)
			spoilt[3] = c.spoil(t, envs[3], o)
			s.hold(spoilt...)
			good.hold(envs...)
			n.hold(envs[0])
			net.connect(n, s)
			s.start()
			good.start()

			err := n.svc.run(job{what: pb.SyncRequest_WHAT_RESOURCES, origin: o.id}, []peer.ID{s.id})
			if err == nil || !strings.Contains(err.Error(), "forged change in answer") || !errors.Is(err, protocols.ErrBadSignature) {
				t.Fatalf("job error %v, want a forged change", err)
			}
			if got := n.res.applied(); len(got) != 0 {
				t.Fatalf("applied %v of a batch with a forged change", versionsOf(got))
			}
			if held, _ := n.res.Held(o.id); held != all[0] {
				t.Fatalf("chain mark moved to %d", held)
			}
			if f := n.outcome("resources", "forged"); f != 1 {
				t.Fatalf("forged outcomes %d, want 1", f)
			}
			if got := verifyHeld(t, n.st, o.id); !slices.Equal(got, all[:1]) {
				t.Fatalf("N holds %v", got)
			}

			net.connect(n, good)
			if err := n.svc.run(job{what: pb.SyncRequest_WHAT_RESOURCES, origin: o.id}, []peer.ID{s.id, good.id}); err != nil {
				t.Fatal(err)
			}
			exactly(t, "resources from the good partner", versionsOf(n.res.applied()), all[1:])
			if got := verifyHeld(t, n.st, o.id); !slices.Equal(got, all) {
				t.Fatalf("N holds %v", got)
			}
		})
	}
}

// More changes than a batch holds, by count (BatchSize) and by bytes
// (MaxBatchBytes): all arrive, once each, in order.
func TestManyChangesArriveOnceInOrder(t *testing.T) {
	for _, c := range []struct {
		name    string
		commits []int // changes per commit of the origin
		size    int
		held    int
	}{
		{"by count", []int{600, 500}, 40, 1},        // 512 + 512 + 75
		{"exactly a full batch", []int{512}, 40, 0}, // 512, then an empty batch that is done
		{"by bytes", []int{3, 2}, 900 << 10, 0},     // 4.4 MiB: 4 + 1
	} {
		t.Run(c.name, func(t *testing.T) {
			net := newNetwork(t)
			s, n := net.node(), net.node()
			o := newOrigin(t)
			s.roles.set([]peer.ID{n.id, o.id}, nil, "")
			n.roles.set([]peer.ID{s.id, o.id}, nil, "")
			var envs []*pb.Envelope
			for _, k := range c.commits {
				envs = append(envs, o.resources(k, c.size)...)
			}
			all := versions(t, envs)
			s.hold(envs...)
			n.hold(envs[:c.held]...)
			net.connect(n, s)
			s.start()
			if err := n.svc.run(job{what: pb.SyncRequest_WHAT_RESOURCES, origin: o.id}, nil); err != nil {
				t.Fatal(err)
			}
			exactly(t, "resources", versionsOf(n.res.applied()), all[c.held:])
			if got := verifyHeld(t, n.st, o.id); !slices.Equal(got, all) {
				t.Fatalf("N holds %d of %d", len(got), len(all))
			}
			if a := n.outcome("resources", "applied"); a != len(all)-c.held {
				t.Fatalf("applied outcomes %d, want %d", a, len(all)-c.held)
			}
		})
	}
}

// Decisions held behind a gap are asked for by Everything even while the
// reviewer is connected (the job DecisionGap started may have failed), and
// the gap is filled; with nothing held and the reviewer connected,
// Everything asks nothing.
func TestEverythingAsksForDecisionsHeldBehindAGap(t *testing.T) {
	net := newNetwork(t)
	r := net.node()
	n := net.node(func(d *Deps) { d.Period = 20 * time.Millisecond })
	rev := r.as()
	decs := rev.decisions(1, 2, 3, 4, 5)
	r.roles.set(nil, []peer.ID{r.id}, r.id) // n is not a member for r yet: it refuses
	n.roles.set(nil, []peer.ID{r.id, n.id}, r.id)
	r.hold(decs...)
	n.hold(decs[0], decs[1], decs[3]) // 4 came ahead of 3: held
	if !n.dec.Held() || n.dec.Applied() != 2 {
		t.Fatalf("held %v, applied %d; want decision 4 held after 2", n.dec.Held(), n.dec.Applied())
	}
	net.connect(n, r)

	n.svc.Everything()
	if _, ok := n.wants()[job{what: pb.SyncRequest_WHAT_DECISIONS}]; !ok {
		t.Fatalf("Everything asked for %s with decisions held and the reviewer connected, want decisions", describe(n.wants()))
	}

	// The first job fails (the reviewer refuses this node for now); the
	// worker's next period asks again and fills the gap.
	r.start()
	n.start()
	want := "stream reset" // a stranger's stream is reset at open
	wait.For(t, waitTimeout, "a job failed", func() bool { return len(n.logs.find(incomplete, "err", want)) > 0 })
	if n.dec.Applied() != 2 {
		t.Fatal("applied decisions from a refused answer")
	}
	if f := n.failures("decisions"); f < 1 {
		t.Fatalf("failed decisions jobs %d, want at least 1", f)
	}
	r.roles.set(nil, []peer.ID{r.id, n.id}, r.id)
	wait.For(t, waitTimeout, "the gap is filled", func() bool { return len(n.dec.applied()) >= 3 })
	exactly(t, "decisions", versionsOf(n.dec.applied()), []uint64{3, 4, 5})
	if n.dec.Held() || n.dec.Applied() != 5 {
		t.Fatalf("held %v, applied %d after the gap was filled", n.dec.Held(), n.dec.Applied())
	}
}

// Everything asks for the chains of partners that are not connected, and
// for decisions while the reviewer is not connected or decisions are held.
func TestEverythingAsksForWhatOnlyCatchUpBrings(t *testing.T) {
	for _, c := range []struct {
		name            string
		connected, held bool
		selfReviewer    bool
		decisions       bool
	}{
		{"reviewer connected, nothing held", true, false, false, false},
		{"reviewer connected, decisions held", true, true, false, true},
		{"reviewer away", false, false, false, true},
		{"reviewer away, decisions held", false, true, false, true},
		{"this node is the reviewer", false, false, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			net := newNetwork(t)
			n, r, here := net.node(), net.node(), net.node()
			away := newOrigin(t)
			reviewer := r.id
			if c.selfReviewer {
				reviewer = n.id
			}
			n.roles.set([]peer.ID{here.id, away.id}, []peer.ID{n.id, r.id, here.id}, reviewer)
			net.connect(n, here)
			if c.connected {
				net.connect(n, r)
			}
			rev := r.as()
			if c.held {
				n.hold(rev.decisions(1, 3)...)
			} else {
				n.hold(rev.decisions(1, 2)...)
			}
			n.svc.Everything()
			want := map[job][]peer.ID{{what: pb.SyncRequest_WHAT_RESOURCES, origin: away.id}: nil}
			if c.decisions {
				want[job{what: pb.SyncRequest_WHAT_DECISIONS}] = nil
			}
			if got := n.wants(); !maps.EqualFunc(got, want, slices.Equal) {
				t.Fatalf("asked for %s, want %s", describe(got), describe(want))
			}
		})
	}
}

// Connected asks a partner for the chains of the other partners that are
// away, and a member for decisions while the reviewer is away; the peer is
// the job's hint.
func TestConnectedAsksThePeerForWhatItCanGive(t *testing.T) {
	net := newNetwork(t)
	n, partner, member, r := net.node(), net.node(), net.node(), net.node()
	away := newOrigin(t)
	n.roles.set([]peer.ID{partner.id, away.id}, []peer.ID{n.id, partner.id, member.id, r.id}, r.id)
	net.connect(n, partner)
	net.connect(n, member)

	n.svc.Connected(partner.id)
	n.svc.Connected(member.id)
	want := map[job][]peer.ID{
		{what: pb.SyncRequest_WHAT_RESOURCES, origin: away.id}: {partner.id},
		{what: pb.SyncRequest_WHAT_DECISIONS}:                  {partner.id, member.id},
	}
	if got := n.wants(); !maps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("asked for %s, want %s", describe(got), describe(want))
	}

	// With the reviewer connected, decisions come by its stream.
	net.connect(n, r)
	n.svc.jobs.mu.Lock()
	clear(n.svc.jobs.want)
	n.svc.jobs.mu.Unlock()
	n.svc.Connected(member.id)
	if got := n.wants(); len(got) != 0 {
		t.Fatalf("asked for %s with the reviewer connected", describe(got))
	}
}

// The asker checks every envelope of an answer against what it asked for,
// whoever serves it: a peer answering by hand with what a real server never
// sends gets nothing of its batch applied, and the job fails saying why.
func TestAskerChecksWhatItIsGiven(t *testing.T) {
	type setup struct {
		n, h *node
		o, x *origin
		rev  *origin // h signs as the reviewer
	}
	decision := func(t *testing.T, seq uint64, status string) []byte {
		b, err := proto.Marshal(&pb.ReviewDecision{Sequence: seq, Status: status,
			Request: &pb.ReviewRequest{Type: "insert", TableName: "sites", TableId: 1}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	chunk := func(t *testing.T, c *pb.SnapshotChunk) []byte {
		b, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		name    string
		what    pb.SyncRequest_What
		answer  func(t *testing.T, x *setup) []*pb.SyncBatch
		raw     []byte // written after the batches
		want    string
		forged  bool
		applied int
	}{
		{"resources: a change of another origin", pb.SyncRequest_WHAT_RESOURCES, func(_ *testing.T, x *setup) []*pb.SyncBatch {
			return []*pb.SyncBatch{{Envelopes: append(x.o.resources(2, 64), x.x.resources(1, 64)...), Done: true}}
		}, nil, "answer holds a change that is not a resource change of ", true, 0},
		{"resources: not a resource change", pb.SyncRequest_WHAT_RESOURCES, func(_ *testing.T, x *setup) []*pb.SyncBatch {
			return []*pb.SyncBatch{{Envelopes: []*pb.Envelope{x.o.other(pb.Kind_KIND_CONSIDERS, "")}, Done: true}}
		}, nil, "answer holds a change that is not a resource change of ", true, 0},
		{"resources: an addressed change", pb.SyncRequest_WHAT_RESOURCES, func(_ *testing.T, x *setup) []*pb.SyncBatch {
			return []*pb.SyncBatch{{Envelopes: []*pb.Envelope{x.o.one(&pb.Body{Kind: pb.Kind_KIND_RESOURCE_UPDATE, DataType: "vm",
				Payload: []byte(`{"id":"a"}`), To: []byte(x.n.id)})}, Done: true}}
		}, nil, "answer holds a change that is not a resource change of ", true, 0},
		{"resources: the answer ends without done", pb.SyncRequest_WHAT_RESOURCES, func(_ *testing.T, x *setup) []*pb.SyncBatch {
			return []*pb.SyncBatch{{Envelopes: x.o.resources(2, 64)}}
		}, nil, "answer ended without done", false, 2},
		{"resources: a frame that is not a batch", pb.SyncRequest_WHAT_RESOURCES, func(_ *testing.T, x *setup) []*pb.SyncBatch {
			return nil
		}, []byte{0xff, 0xff, 0xff}, "cannot parse invalid wire-format data", false, 0},
		{"own: a change of another origin", pb.SyncRequest_WHAT_OWN, func(_ *testing.T, x *setup) []*pb.SyncBatch {
			return []*pb.SyncBatch{{Envelopes: []*pb.Envelope{x.n.as().other(pb.Kind_KIND_PLANNER, x.h.id),
				x.x.other(pb.Kind_KIND_PLANNER, x.h.id)}, Done: true}}
		}, nil, "not of this node", true, 0},
		{"decisions: a change of the reviewer that is not a decision", pb.SyncRequest_WHAT_DECISIONS, func(_ *testing.T, x *setup) []*pb.SyncBatch {
			return []*pb.SyncBatch{{Envelopes: append(x.rev.decisions(3), x.rev.resources(1, 64)...), Done: true}}
		}, nil, "answer holds a decision not signed by the reviewer", true, 0},
		{"decisions: a rejection for another node is skipped", pb.SyncRequest_WHAT_DECISIONS, func(t *testing.T, x *setup) []*pb.SyncBatch {
			return []*pb.SyncBatch{{Envelopes: []*pb.Envelope{x.rev.one(&pb.Body{Kind: pb.Kind_KIND_REVIEW_DECISION, DataType: "sites",
				Payload: decision(t, 0, "rejected"), To: []byte(x.h.id)})}, Done: true}}
		}, nil, "", false, 0},
		{"snapshot: done before the last chunk", pb.SyncRequest_WHAT_SNAPSHOT, func(t *testing.T, x *setup) []*pb.SyncBatch {
			return []*pb.SyncBatch{{Envelopes: []*pb.Envelope{x.rev.one(&pb.Body{Kind: pb.Kind_KIND_SNAPSHOT, To: []byte(x.n.id),
				Payload: chunk(t, &pb.SnapshotChunk{Sequence: 9, Index: 0})})}, Done: true}}
		}, nil, "snapshot ended before its last chunk", false, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			net := newNetwork(t)
			x := &setup{n: net.node(), h: net.node(), o: newOrigin(t), x: newOrigin(t)}
			x.rev = x.h.as()
			x.n.roles.set([]peer.ID{x.h.id, x.o.id}, []peer.ID{x.n.id, x.h.id, x.o.id}, x.h.id)
			x.n.hold(x.o.resources(1, 64)...)
			x.n.hold(x.rev.decisions(1, 2)...)
			x.n.own.from = 77
			j := job{what: c.what}
			if c.what == pb.SyncRequest_WHAT_RESOURCES {
				j.origin = x.o.id
			}
			hand := answerByHand(t, x.h.host, c.raw, c.answer(t, x)...)
			net.connect(x.n, x.h)
			heldBefore, _ := x.n.res.Held(x.o.id)

			err := x.n.svc.run(j, []peer.ID{x.h.id})
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("job error %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("job error %v, want %q", err, c.want)
			}
			var got int
			switch c.what {
			case pb.SyncRequest_WHAT_RESOURCES:
				got = len(x.n.res.applied())
			case pb.SyncRequest_WHAT_DECISIONS:
				got = len(x.n.dec.applied())
			case pb.SyncRequest_WHAT_OWN:
				got = len(x.n.own.applied())
			case pb.SyncRequest_WHAT_SNAPSHOT:
				got = len(x.n.dec.snapshotApplied())
			}
			if got != c.applied {
				t.Fatalf("applied %d, want %d", got, c.applied)
			}
			if f := x.n.outcome(whatName(c.what), "forged"); (f == 1) != c.forged || f > 1 {
				t.Fatalf("forged outcomes %d, want forged %v", f, c.forged)
			}
			if r := x.n.outcome(whatName(c.what), "refused"); r != 0 {
				t.Fatalf("%d changes offered to the service and refused", r)
			}
			// What was asked: from where this node stands.
			reqs := hand.requests()
			if len(reqs) != 1 || reqs[0].What != c.what || peer.ID(reqs[0].Origin) != j.origin {
				t.Fatalf("requests %v", reqs)
			}
			wantAfter := map[pb.SyncRequest_What]uint64{pb.SyncRequest_WHAT_RESOURCES: heldBefore,
				pb.SyncRequest_WHAT_DECISIONS: 2, pb.SyncRequest_WHAT_OWN: 77}[c.what]
			if reqs[0].After != wantAfter {
				t.Fatalf("asked after %d, want %d", reqs[0].After, wantAfter)
			}
		})
	}
}

// A job asks its candidates in turn until one answers fully: resources the
// hints, the origin, then the partners; decisions the hints, the reviewer,
// then the members; never this node, and only peers connected now.
func TestCandidatesAreAskedInTurn(t *testing.T) {
	net := newNetwork(t)
	n, p1, p2, o, r, m, away := net.node(), net.node(), net.node(), net.node(), net.node(), net.node(), net.node()
	name := map[peer.ID]string{p1.id: "p1", p2.id: "p2", o.id: "o", r.id: "r", m.id: "m", away.id: "away"}
	var mu sync.Mutex
	var asked []string
	refuse := map[string]bool{}
	for _, x := range []*node{p1, p2, o, r, m, away} {
		x.host.SetStreamHandler(protocols.Sync, func(st network.Stream) {
			if err := protocols.NewFrameReader(st, maxRequestBytes).Read(&pb.SyncRequest{}); err != nil {
				_ = st.Reset()
				return
			}
			mu.Lock()
			who := name[x.id]
			asked = append(asked, who)
			b := &pb.SyncBatch{Done: true}
			if refuse[who] {
				b.Error = "not now"
			}
			mu.Unlock()
			fw := protocols.NewFrameWriter(st, 1<<20)
			_ = fw.Write(b)
			_ = fw.Flush()
			_ = st.Close()
		})
		if x != away {
			net.connect(n, x)
		}
	}
	n.roles.set([]peer.ID{p1.id, n.id, away.id, p2.id, o.id}, []peer.ID{n.id, away.id, m.id, p1.id, r.id}, r.id)
	for _, c := range []struct {
		name    string
		j       job
		hints   []peer.ID
		refused []string
		want    []string
		err     string
	}{
		{"resources: the origin first", job{what: pb.SyncRequest_WHAT_RESOURCES, origin: o.id}, nil, nil, []string{"o"}, ""},
		{"resources: hints, origin, partners", job{what: pb.SyncRequest_WHAT_RESOURCES, origin: o.id}, []peer.ID{p2.id, away.id},
			[]string{"p2", "o"}, []string{"p2", "o", "p1"}, ""},
		{"decisions: the reviewer first", job{what: pb.SyncRequest_WHAT_DECISIONS}, nil, nil, []string{"r"}, ""},
		{"decisions: hints, reviewer, members", job{what: pb.SyncRequest_WHAT_DECISIONS}, []peer.ID{p2.id}, []string{"p2", "r", "m"},
			[]string{"p2", "r", "m", "p1"}, ""},
		{"everyone refuses", job{what: pb.SyncRequest_WHAT_DECISIONS}, nil, []string{"r", "m", "p1"}, []string{"r", "m", "p1"},
			"refused: not now"},
		{"own: the hint only", job{what: pb.SyncRequest_WHAT_OWN}, []peer.ID{m.id}, nil, []string{"m"}, ""},
		{"no candidate connected", job{what: pb.SyncRequest_WHAT_OWN}, []peer.ID{away.id, n.id}, nil, nil, "no peer to ask is connected"},
	} {
		t.Run(c.name, func(t *testing.T) {
			mu.Lock()
			asked = nil
			clear(refuse)
			for _, x := range c.refused {
				refuse[x] = true
			}
			mu.Unlock()
			err := n.svc.run(c.j, c.hints)
			if (err == nil) != (c.err == "") || (err != nil && !strings.Contains(err.Error(), c.err)) {
				t.Fatalf("job error %v, want %q", err, c.err)
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(asked, c.want) {
				t.Fatalf("asked %v, want %v", asked, c.want)
			}
		})
	}
}

// closes runs Close and reports whether it returned within a few seconds.
// (mocknet ignores deadlines: a Close that waits for a stalled stream
// waits here until the test releases the peer; on real hosts it would wait
// until the stream's deadline, up to requestTimeout.)
func closes(n *node) bool {
	done := make(chan struct{})
	go func() {
		n.svc.Close()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

// Close stops catch-up at once even while a peer stalls, asking or
// answering: it resets the streams in progress rather than wait for their
// deadlines (a node's shutdown waits for it).
func TestCloseDoesNotWaitForAStalledPeer(t *testing.T) {
	t.Run("asking", func(t *testing.T) {
		net := newNetwork(t)
		n, h := net.node(), net.node()
		n.roles.set(nil, []peer.ID{n.id, h.id}, "")
		asked, release := make(chan struct{}), make(chan struct{})
		t.Cleanup(func() { close(release) })
		h.host.SetStreamHandler(protocols.Sync, func(st network.Stream) {
			_ = protocols.NewFrameReader(st, maxRequestBytes).Read(&pb.SyncRequest{})
			close(asked)
			<-release // never answers
			_ = st.Reset()
		})
		net.connect(n, h)
		n.start()
		n.svc.Recover(h.id)
		<-asked
		if !closes(n) {
			t.Fatal("Close waits for a peer that does not answer")
		}
		if r := n.own.recoveries(); len(r) != 1 || r[0].err == nil {
			t.Fatalf("recoveries %v, want one that failed", r)
		}
	})
	t.Run("answering", func(t *testing.T) {
		net := newNetwork(t)
		s, p := net.node(), net.node()
		o := newOrigin(t)
		s.roles.set([]peer.ID{p.id, o.id}, nil, "")
		s.hold(o.resources(3*BatchSize+10, 40)...) // four batches: mocknet hands one write on before the asker reads it
		net.connect(p, s)
		s.start()
		st, err := p.host.NewStream(t.Context(), s.id, protocols.Sync)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Reset() })
		fw := protocols.NewFrameWriter(st, maxRequestBytes)
		if err := fw.Write(&pb.SyncRequest{What: pb.SyncRequest_WHAT_RESOURCES, Origin: []byte(o.id)}); err != nil {
			t.Fatal(err)
		}
		if err := fw.Flush(); err != nil {
			t.Fatal(err)
		}
		// Read the first batch (the server is answering), then stop
		// reading: the server's next write waits for the asker.
		if err := protocols.NewFrameReader(st, s.svc.max).Read(&pb.SyncBatch{}); err != nil {
			t.Fatal(err)
		}
		if !closes(s) {
			t.Fatal("Close waits for an asker that does not read")
		}
	})
}

// A member of a review group whose first reviewer is away for good takes
// decisions from another reviewer of the group, asked before the members
// that relay them; with that reviewer connected, Everything asks for
// nothing (its stream brings them) unless decisions are held.
func TestDecisionsComeFromAnotherReviewerOfTheGroup(t *testing.T) {
	net := newNetwork(t)
	n, r2, m := net.node(), net.node(), net.node()
	r1 := newOrigin(t) // the first reviewer, away for good
	group := []peer.ID{r1.id, r2.id}
	members := []peer.ID{m.id, r2.id, r1.id, n.id} // m is listed (and would be asked) first
	n.roles.set(nil, members, r1.id)
	n.roles.setGroup(group)
	r2.roles.set(nil, members, r2.id)
	r2.roles.setGroup(group)
	m.roles.set(nil, members, r1.id)
	m.roles.setGroup(group)
	r2.hold(r2.as().decisions(1, 2, 3, 4, 5, 6)...)
	m.hold(r1.decisions(1, 2, 3, 4, 5, 6)...)
	n.hold(r1.decisions(1, 2)...)
	net.connect(n, m)
	net.connect(n, r2)

	n.svc.Everything()
	if got := n.wants(); len(got) != 0 {
		t.Fatalf("asked for %s with a reviewer of the group connected and nothing held", describe(got))
	}
	for _, p := range []*node{r2, m} {
		p.start()
	}
	if err := n.svc.run(job{what: pb.SyncRequest_WHAT_DECISIONS}, nil); err != nil {
		t.Fatal(err)
	}
	got := n.dec.applied()
	if len(got) != 4 {
		t.Fatalf("applied %d decisions, want 3 to 6", len(got))
	}
	for _, a := range got {
		if a.origin != r2.id {
			t.Fatalf("applied a decision signed by %s, want the connected reviewer %s's", a.origin, r2.id)
		}
	}
	if a := n.dec.Applied(); a != 6 {
		t.Fatalf("applied sequence %d, want 6", a)
	}
}

// A snapshot asked of the first reviewer while it is away comes from
// another reviewer of the group, signed by it; SnapshotDone reports success.
func TestSnapshotFromAnotherReviewerOfTheGroup(t *testing.T) {
	net := newNetwork(t)
	n, r2 := net.node(), net.node()
	r1 := newOrigin(t) // the first reviewer, away for good
	group := []peer.ID{r1.id, r2.id}
	members := []peer.ID{r1.id, r2.id, n.id}
	n.roles.set(nil, members, r1.id)
	n.roles.setGroup(group)
	r2.roles.set(nil, members, r2.id)
	r2.roles.setGroup(group)
	r2.dec.chunks = chunks(42, 3)
	net.connect(n, r2)
	r2.start()
	n.start()

	n.svc.FetchSnapshot(r1.id)
	wait.For(t, waitTimeout, "SnapshotDone", func() bool { return len(n.dec.snapshotDone()) > 0 })
	if d := n.dec.snapshotDone(); len(d) != 1 || d[0].err != nil {
		t.Fatalf("SnapshotDone %v, want once with nil", d)
	}
	got := n.dec.snapshotApplied()
	if len(got) != 3 {
		t.Fatalf("applied %d chunks, want 3", len(got))
	}
	for i, c := range got {
		if c.index != uint32(i) || c.reviewer != r2.id {
			t.Fatalf("chunk %d: index %d from %s, want %d from %s", i, c.index, c.reviewer, i, r2.id)
		}
	}
	if a := n.dec.Applied(); a != 42 {
		t.Fatalf("applied sequence %d after the snapshot, want 42", a)
	}
}

// The worker's decision asks while no reviewer is connected: every period
// while decisions come, doubling at rest up to restRounds periods, and at
// every period again while some are held.
func TestDecisionRoundsBackOffAtRest(t *testing.T) {
	const period = 30 * time.Second
	var r decisionRounds
	now := time.Unix(1_000_000, 0)
	var asked []time.Duration // the waits between asks
	last := now
	for range 60 {
		if r.due(now, period, false, 7) {
			asked = append(asked, now.Sub(last))
			last = now
		}
		now = now.Add(period)
	}
	want := []time.Duration{0, period, 2 * period, 4 * period, 8 * period, 8 * period, 8 * period, 8 * period, 8 * period, 8 * period}
	if len(asked) < len(want) || !slices.Equal(asked[:len(want)], want) {
		t.Fatalf("waits between asks at rest %v, want them to start %v", asked, want)
	}
	// A decision applied (by any way) brings the period back.
	if !r.due(last.Add(8*period), period, false, 8) || r.due(last.Add(8*period+period/2), period, false, 8) || !r.due(last.Add(9*period), period, false, 8) {
		t.Fatal("after news: not asked again a period later")
	}
	// Held decisions are asked for at every period whatever the wait.
	if !r.due(last.Add(9*period+time.Second), period, true, 8) || !r.due(last.Add(9*period+2*time.Second), period, true, 8) {
		t.Fatal("held decisions not asked for at once")
	}
}

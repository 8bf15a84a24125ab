package review

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Close() error  { m.closed = true; return nil }
func (m *memSink) Cancel() error { m.cancelled = true; return nil }

// ledgerOf is what a restore must make equal: every request by origin
// (without this node's own id, change version and a waiting row's
// reviewer), the decisions' bodies by sequence, the tables, the counters and
// the command records.
func ledgerOf(t *testing.T, st *store.Store) string {
	t.Helper()
	var b bytes.Buffer
	reqs, err := st.Requests("")
	if err != nil {
		t.Fatal(err)
	}
	byOrigin := map[string]*storepb.Request{}
	var origins []string
	for _, r := range reqs {
		byOrigin[r.Origin] = r
		origins = append(origins, r.Origin)
	}
	sortStrings(origins)
	for _, o := range origins {
		r := proto.Clone(byOrigin[o]).(*storepb.Request)
		got, err := st.RequestByOrigin(o)
		if err != nil || got.Id != r.Id {
			t.Fatalf("origin index of %s: %v %v", o, got, err)
		}
		r.Id, r.ChangeVersion = 0, 0
		if r.Status == "waiting" {
			r.Reviewer, r.ReviewerId = "", nil
		}
		fmt.Fprintf(&b, "request %s %v\n", o, r)
	}
	last, err := st.LastDecision()
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= last; seq++ {
		ver, err := st.DecisionVersion(seq)
		if err != nil {
			t.Fatalf("decision %d: %v", seq, err)
		}
		c, err := st.Change(ver)
		if err != nil {
			t.Fatalf("decision %d at %d: %v", seq, ver, err)
		}
		fmt.Fprintf(&b, "decision %d %x\n", seq, c.Envelope.Body)
	}
	for _, tb := range []string{"tb", "other"} {
		rows, err := st.Rows(tb)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			fmt.Fprintf(&b, "row %s %d %s\n", tb, r.ID, r.JSON)
		}
	}
	for _, c := range []string{store.CtrDecision, ctrApplied, ctrGroupIndex} {
		v, _ := st.Counter(c)
		fmt.Fprintf(&b, "counter %s %d\n", c, v)
	}
	cmds, err := st.AuxPrefix(cmdPrefix)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range cmds {
		names = append(names, k)
	}
	sortStrings(names)
	for _, k := range names {
		fmt.Fprintf(&b, "cmd %s %s\n", k, cmds[k])
	}
	return b.String()
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// snapNode opens a store and a lone reviewer's service on it.
func snapNode(t *testing.T, name string) (*store.Store, *Service, peer.ID, string) {
	t.Helper()
	key, id := newPeer(t)
	dir := t.TempDir()
	st, err := store.Open(dir, store.Options{Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st, New(Deps{Store: st, Roles: ledgerRoles{id, name}, Publisher: &events{}, MaxMessageBytes: 1 << 16}), id, dir
}

// takeSnapshot persists svc's group snapshot; between Snapshot and Persist
// it runs during (the applies that follow the snapshot).
func takeSnapshot(t *testing.T, svc *Service, during func()) []byte {
	t.Helper()
	s, err := svc.GroupFSM().Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	if during != nil {
		during()
	}
	sink := &memSink{}
	if err := s.Persist(sink); err != nil || !sink.closed {
		t.Fatalf("persist: %v (closed %v)", err, sink.closed)
	}
	return sink.Bytes()
}

// TestGroupSnapshotCarriesTheLedger: a group snapshot restores the ledger
// as it was when it was taken (not the commands applied while it was
// written) into an empty store; into a store that holds some of the origins
// under other ids (they keep them, the tables become the snapshot's); and a
// restore cut off halfway leaves a marker (no snapshot is taken of that
// store, the index does not move) and is redone whole, also after a
// restart of the store. A store that holds the snapshot already is not
// touched.
func TestGroupSnapshotCarriesTheLedger(t *testing.T) {
	ctx := context.Background()
	srcSt, src, srcID, _ := snapNode(t, "R")
	decide := func(id uint64, d string, data string) {
		t.Helper()
		req := DecideRequest{RequestID: id, Decision: d}
		if data != "" {
			req.Data = json.RawMessage(data)
		}
		if _, err := wait(t, func(done func(Row, error)) { src.Decide(ctx, req, done) }); err != nil {
			t.Fatal(err)
		}
	}
	submit := func(s *Service, n int) Row {
		t.Helper()
		row, err := wait(t, func(done func(Row, error)) {
			s.Submit(ctx, SubmitRequest{Type: "insert", TableName: "tb", TableID: uint64(n), Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))}, done)
		})
		if err != nil {
			t.Fatal(err)
		}
		return row
	}
	// 40 requests: 36 accepted, an edited one, a rejected one, two waiting;
	// then one act through the group's state machine (a command record
	// and the index).
	var rows []Row
	for i := 1; i <= 40; i++ {
		rows = append(rows, submit(src, i))
	}
	for i, r := range rows[:37] {
		if i == 5 {
			decide(r.ID, "edit", `{"n":500}`)
			continue
		}
		decide(r.ID, "accept", "")
	}
	decide(rows[37].ID, "reject", "")
	act := func(r Row, cmdID string) []byte {
		stored, err := srcSt.Request(r.ID)
		if err != nil {
			t.Fatal(err)
		}
		rr, _ := proto.Marshal(requestOf(stored))
		b, _ := json.Marshal(groupCmd{ID: cmdID, Op: opAct, Origin: stored.Origin, Applicant: stored.ApplicantId, Request: rr,
			Decision: "accept", Actor: []byte(srcID), ActorName: "R", At: 1, Approvals: 1})
		return b
	}
	if got := src.GroupFSM().Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: act(rows[38], "c1")}); asBytes(got) == nil {
		t.Fatalf("act: %v", got)
	}
	want := ledgerOf(t, srcSt)
	var later string
	snap := takeSnapshot(t, src, func() {
		// Applied while the snapshot is written: not in it.
		src.GroupFSM().Apply(&raft.Log{Index: 8, Type: raft.LogCommand, Data: act(rows[39], "c2")})
		later = ledgerOf(t, srcSt)
	})
	if later == want {
		t.Fatal("the act after the snapshot changed nothing")
	}
	// The source's own snapshot changes nothing there.
	if err := src.GroupFSM().Restore(io.NopCloser(bytes.NewReader(snap))); err != nil || ledgerOf(t, srcSt) != later {
		t.Fatalf("restore of a snapshot the store holds: %v", err)
	}

	t.Run("empty store", func(t *testing.T) {
		st, svc, _, _ := snapNode(t, "S")
		if err := svc.GroupFSM().Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
			t.Fatal(err)
		}
		if got := ledgerOf(t, st); got != want {
			t.Fatalf("restored ledger differs:\n%s\nwant\n%s", got, want)
		}
		// Every decision's change is the source's signed envelope, held as
		// a received change of the source.
		ver, _ := st.DecisionVersion(1)
		c, err := st.Change(ver)
		if err != nil || peer.ID(c.Body.Origin) != srcID {
			t.Fatalf("decision 1: %v %v", c.Body, err)
		}
		// A decided row points at this node's copy of its decision.
		r, _ := srcSt.Request(rows[0].ID)
		mine, _ := st.RequestByOrigin(r.Origin)
		if dv, _ := st.DecisionVersion(mine.Sequence); mine.ChangeVersion != dv || dv == 0 {
			t.Fatalf("row's change version %d, its decision's %d", mine.ChangeVersion, dv)
		}
	})

	t.Run("store holding some origins", func(t *testing.T) {
		st, svc, _, _ := snapNode(t, "S")
		// Three rows of its own first (ids 1-3), then copies of two of
		// the source's origins under ids 4 and 5, and a table row the
		// snapshot does not hold.
		for i := 100; i < 103; i++ {
			submit(svc, i)
		}
		own, _ := st.Requests("")
		var ids = map[string]uint64{}
		for i, idx := range []int{0, 39} {
			r, _ := srcSt.Request(rows[idx].ID)
			r.Id, r.Status, r.Sequence = uint64(4+i), "waiting", 0
			ids[r.Origin] = r.Id
			if err := st.Update(ctx, func(tx *store.Txn) error {
				if _, err := tx.Next(store.CtrRequest); err != nil {
					return err
				}
				tx.PutRequest(r)
				tx.PutRow("other", 9, []byte(`{"id":9}`))
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		if err := svc.GroupFSM().Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
			t.Fatal(err)
		}
		for o, id := range ids {
			if r, err := st.RequestByOrigin(o); err != nil || r.Id != id {
				t.Fatalf("origin %s: %v %v, want id %d", o, r, err, id)
			}
		}
		// Its own requests stay (the group has not seen them), the rest is
		// the snapshot's; new rows take ids after its own.
		for _, r := range own {
			got, err := st.RequestByOrigin(r.Origin)
			if err != nil || got.Id != r.Id {
				t.Fatalf("own request %s: %v %v", r.Origin, got, err)
			}
		}
		all, _ := st.Requests("")
		if len(all) != 40+len(own) {
			t.Fatalf("%d requests after the restore, want %d", len(all), 40+len(own))
		}
		for _, r := range all {
			if _, held := ids[r.Origin]; !held && r.Id <= 5 && r.Status != "waiting" {
				t.Fatalf("a new row of the snapshot took id %d", r.Id)
			}
		}
		got := ledgerOf(t, st)
		for _, r := range own {
			got = removeLine(got, r.Origin)
		}
		if got != want {
			t.Fatalf("restored ledger differs:\n%s\nwant\n%s", got, want)
		}
	})

	t.Run("interrupted and redone", func(t *testing.T) {
		key, self := newPeer(t)
		dir := t.TempDir()
		st, err := store.Open(dir, store.Options{Signer: key})
		if err != nil {
			t.Fatal(err)
		}
		roles := ledgerRoles{self, "S"}
		svc := New(Deps{Store: st, Roles: roles, Publisher: &events{}, MaxMessageBytes: 1 << 16})
		cut := snap[:len(snap)*2/3]
		if err := svc.GroupFSM().Restore(io.NopCloser(bytes.NewReader(cut))); err == nil {
			t.Fatal("a snapshot cut short restored")
		}
		if m, err := st.Aux(restoreMarker); err != nil || len(m) == 0 {
			t.Fatalf("no restore marker after a cut restore: %q %v", m, err)
		}
		if idx, _ := st.Counter(ctrGroupIndex); idx != 0 {
			t.Fatalf("index %d after a cut restore", idx)
		}
		if _, err := svc.GroupFSM().Snapshot(); err == nil {
			t.Fatal("a snapshot was taken of a half-restored ledger")
		}
		// A restart: the store is reopened, raft restores its snapshot again.
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		st, err = store.Open(dir, store.Options{Signer: key})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		svc = New(Deps{Store: st, Roles: roles, Publisher: &events{}, MaxMessageBytes: 1 << 16})
		if err := svc.GroupFSM().Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
			t.Fatal(err)
		}
		if got := ledgerOf(t, st); got != want {
			t.Fatalf("redone restore differs:\n%s\nwant\n%s", got, want)
		}
		if m, err := st.Aux(restoreMarker); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("marker after the restore: %q %v", m, err)
		}
		if _, err := svc.GroupFSM().Snapshot(); err != nil {
			t.Fatalf("snapshot after the restore: %v", err)
		}
	})
}

// removeLine drops the lines naming s.
func removeLine(text, s string) string {
	var out bytes.Buffer
	for _, l := range bytes.SplitAfter([]byte(text), []byte("\n")) {
		if !bytes.Contains(l, []byte(s)) {
			out.Write(l)
		}
	}
	return out.String()
}

package review

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// TestGroupFSMAppliesEachCommandOnce: the review group's state machine
// applies an act in one commit with its log index; a replay of the same
// entry (a restart) and a retry of the same command id at a later index
// change nothing and answer as the first time; a refused command writes
// nothing; a request command makes the waiting row once; a snapshot newer
// than the store cannot be restored.
func TestGroupFSMAppliesEachCommandOnce(t *testing.T) {
	keyR, r := newPeer(t)
	_, s := newPeer(t)
	_, p := newPeer(t)
	st, err := store.Open(t.TempDir(), store.Options{Signer: keyR})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	svc := New(Deps{Store: st, Roles: ledgerRoles{r, "R"}, Publisher: &events{}, MaxMessageBytes: 1 << 16})
	fsm := svc.GroupFSM()
	ctx := context.Background()
	sub, err := wait(t, func(done func(Row, error)) {
		svc.Submit(ctx, SubmitRequest{Type: "insert", TableName: "tb", TableID: 1, Data: json.RawMessage(`{"n":1}`)}, done)
	})
	if err != nil {
		t.Fatal(err)
	}
	row, err := st.Request(sub.ID)
	if err != nil {
		t.Fatal(err)
	}
	rr, _ := proto.Marshal(requestOf(row))
	act := func(id string) []byte {
		b, _ := json.Marshal(groupCmd{ID: id, Op: opAct, Origin: row.Origin, Applicant: row.ApplicantId, Request: rr,
			Decision: "accept", Actor: []byte(s), ActorName: "S", At: 1, Approvals: 1})
		return b
	}
	apply := func(index uint64, cmd []byte) any {
		return fsm.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: cmd})
	}
	counters := func() (seq, idx uint64) {
		seq, _ = st.Counter(store.CtrDecision)
		idx, _ = st.Counter(ctrGroupIndex)
		return
	}

	if got := apply(5, act("c1")); string(asBytes(got)) != row.Origin {
		t.Fatalf("act: %v", got)
	}
	decided, _ := st.RequestByOrigin(row.Origin)
	if decided.Status != "accepted" || decided.Sequence != 1 {
		t.Fatalf("after the act: %+v", decided)
	}
	if seq, idx := counters(); seq != 1 || idx != 5 {
		t.Fatalf("sequence %d, index %d after the act", seq, idx)
	}
	// The same entry again (raft replays the log after a restart), and
	// the same command retried at a later index: answered, nothing moves.
	for _, tc := range []struct {
		index uint64
		id    string
	}{{5, "c1"}, {3, "c0"}, {6, "c1"}} {
		if got, ok := apply(tc.index, act(tc.id)).([]byte); !ok || string(got) != row.Origin {
			t.Fatalf("replay %+v: %v", tc, got)
		}
	}
	if seq, idx := counters(); seq != 1 || idx != 6 {
		t.Fatalf("sequence %d, index %d after the replays, want 1 and 6", seq, idx)
	}
	// A new act on the decided request is refused with its code, and
	// writes nothing (not even the index).
	err, _ = apply(7, act("c2")).(error)
	if !errors.Is(err, ErrDecided) || ferry.Code(err) != ferry.CodeConflict {
		t.Fatalf("second act: %v", err)
	}
	if seq, idx := counters(); seq != 1 || idx != 6 {
		t.Fatalf("sequence %d, index %d after a refusal", seq, idx)
	}

	// A request this reviewer never received, from the group's log: one
	// waiting row, however often it comes.
	other := &storepb.Request{TableId: 2, TableName: "tb", Type: "insert", Data: []byte(`{"n":2}`), Applicant: "P",
		ApplicantId: []byte(p), Origin: originOf(p, 77)}
	reqCmd, err := requestCmd(other)
	if err != nil {
		t.Fatal(err)
	}
	for _, idx := range []uint64{8, 9} {
		if _, ok := apply(idx, reqCmd).([]byte); !ok {
			t.Fatalf("request command at %d refused", idx)
		}
	}
	rows, err := svc.Requests("waiting")
	if err != nil || len(rows) != 1 || rows[0].Origin != other.Origin || rows[0].Applicant != "P" {
		t.Fatalf("waiting rows after the request command: %+v %v", rows, err)
	}
	// A command whose request is not its origin's is refused.
	var bad groupCmd
	_ = json.Unmarshal(reqCmd, &bad)
	bad.ID, bad.Origin = "bad", originOf(p, 78)
	badCmd, _ := json.Marshal(bad)
	if err, _ := apply(10, badCmd).(error); ferry.Code(err) != ferry.CodeBadRequest {
		t.Fatalf("a request under another origin: %v", err)
	}
	if err, _ := apply(11, []byte("{")).(error); ferry.Code(err) != ferry.CodeBadRequest {
		t.Fatalf("a command that is not JSON: %v", err)
	}

	// Snapshots of the earlier format (the index only): one the store
	// holds restores; a newer one is refused (it carries no ledger).
	if err := fsm.Restore(io.NopCloser(strings.NewReader("9"))); err != nil {
		t.Fatalf("restore of a snapshot the store holds: %v", err)
	}
	if err := fsm.Restore(io.NopCloser(strings.NewReader("100"))); err == nil || !strings.Contains(err.Error(), "another reviewer's copy") {
		t.Fatalf("restore of a snapshot ahead of the store: %v", err)
	}
}

func asBytes(v any) []byte {
	b, _ := v.([]byte)
	return b
}

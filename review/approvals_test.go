package review

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/store"
)

// ledgerRoles is one reviewer node of a review group whose ledger is the
// store the test shares between them (what the group's consensus layer
// will give each reviewer node).
type ledgerRoles struct {
	self peer.ID
	name string
}

func (r ledgerRoles) Self() peer.ID                { return r.self }
func (r ledgerRoles) SelfName() string             { return r.name }
func (r ledgerRoles) Reviewer() peer.ID            { return r.self }
func (r ledgerRoles) InReviewGroup(p peer.ID) bool { return p != "" }
func (r ledgerRoles) ReviewGroup() []peer.ID       { return []peer.ID{r.self} }
func (r ledgerRoles) IsMember(peer.ID) bool        { return true }
func (r ledgerRoles) Members() []peer.ID           { return nil }
func (r ledgerRoles) Name(peer.ID) string          { return r.name }

// events records what a service published.
type events struct {
	mu   sync.Mutex
	subj []string
}

func (e *events) Publish(suffix string, _ any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.subj = append(e.subj, suffix)
}

func (e *events) list() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.subj, " ")
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

// TestApprovalsThroughDecide: with review.approvals 2, Decide records an
// approval in the request row (on disk, read back by a fresh read), refuses
// the same node again and the applicant's node, keeps an edit waiting, and
// the second distinct reviewer node's accept decides in the same commit
// (table row, sequence, decision in the log, approvals cleared).
func TestApprovalsThroughDecide(t *testing.T) {
	keyR, r := newPeer(t)
	_, sID := newPeer(t)
	_, tID := newPeer(t)
	st, err := store.Open(t.TempDir(), store.Options{Signer: keyR})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	pub := &events{}
	svc := func(id peer.ID, name string) *Service {
		return New(Deps{Store: st, Roles: ledgerRoles{id, name}, Publisher: pub, MaxMessageBytes: 1 << 16, Approvals: 2})
	}
	atR, atS, atT := svc(r, "R"), svc(sID, "S"), svc(tID, "T")
	ctx := context.Background()
	decide := func(s *Service, id uint64, d string, data string) (Row, error) {
		req := DecideRequest{RequestID: id, Decision: d}
		if data != "" {
			req.Data = json.RawMessage(data)
		}
		return wait(t, func(done func(Row, error)) { s.Decide(ctx, req, done) })
	}
	// R submits: R is the applicant's node.
	sub, err := wait(t, func(done func(Row, error)) {
		atR.Submit(ctx, SubmitRequest{Type: "insert", TableName: "tb", TableID: 1, Data: json.RawMessage(`{"n":1}`)}, done)
	})
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now().Unix()

	if _, err := decide(atR, sub.ID, "accept", ""); !errors.Is(err, ErrApplicantApproval) || ferry.Code(err) != ferry.CodeForbidden {
		t.Fatalf("the applicant's node accepts: %v", err)
	}
	row, err := decide(atS, sub.ID, "accept", "")
	if err != nil {
		t.Fatal(err)
	}
	if row.Status != "waiting" || len(row.Approvals) != 1 || row.Approvals[0].Reviewer != "S" || row.Approvals[0].ReviewerID != sID.String() ||
		row.Approvals[0].At < before || row.ApprovalsRequired != 2 || row.Sequence != 0 {
		t.Fatalf("after S accepts: %+v", row)
	}
	// On disk: the approval with the digest of the data it approved.
	stored, err := st.Request(sub.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored.Approvals) != 1 || peer.ID(stored.Approvals[0].ReviewerId) != sID || !bytes.Equal(stored.Approvals[0].Digest, DataDigest(stored.Data)) ||
		stored.Status != "waiting" || len(stored.EditedData) != 0 {
		t.Fatalf("stored row: %+v", stored)
	}
	// The request's event, from the change log, is the row as it was when
	// it came: no approval yet.
	body, err := st.ChangeBody(stored.ChangeVersion)
	if err != nil {
		t.Fatal(err)
	}
	if suffix, data, ok, err := atR.Event(stored.ChangeVersion, body); err != nil || !ok || suffix != SubjectRequested ||
		bytes.Contains(data, []byte("approvals")) || !bytes.Contains(data, []byte(`"status":"waiting"`)) {
		t.Fatalf("request event: %s %s %v %v", suffix, data, ok, err)
	}
	if _, err := decide(atS, sub.ID, "accept", ""); !errors.Is(err, ErrAlreadyApproved) ||
		!strings.Contains(err.Error(), "already approved by you; waiting for 1 more") || ferry.Code(err) != ferry.CodeConflict {
		t.Fatalf("S accepts twice: %v", err)
	}
	// The operator view of any reviewer node shows the approval.
	if v, err := atT.Request(sub.ID); err != nil || len(v.Approvals) != 1 || v.ApprovalsRequired != 2 || !v.Approved(sID.String()) || v.Approved(tID.String()) {
		t.Fatalf("view: %+v %v", v, err)
	}
	// T edits: a new round, T's approval of the edit only.
	row, err = decide(atT, sub.ID, "edit", `{"n":2}`)
	if err != nil {
		t.Fatal(err)
	}
	if row.Status != "waiting" || len(row.Approvals) != 1 || row.Approvals[0].Reviewer != "T" || string(row.EditedData) != `{"n":2}` ||
		string(row.Data) != `{"n":1}` || string(row.Round()) != `{"n":2}` {
		t.Fatalf("after T edits: %+v", row)
	}
	if rows, _ := st.Rows("tb"); len(rows) != 0 {
		t.Fatalf("an approval changed the table: %v", rows)
	}
	if seq, _ := st.Counter(store.CtrDecision); seq != 0 {
		t.Fatalf("an approval took a decision sequence: %d", seq)
	}
	if e := pub.list(); e != "review.requested" {
		t.Fatalf("events before the decision: %q", e)
	}
	// S accepts the edit: the second distinct node decides it, edited.
	row, err = decide(atS, sub.ID, "accept", "")
	if err != nil {
		t.Fatal(err)
	}
	if row.Status != "edited" || row.Sequence != 1 || string(row.Data) != `{"n":2}` || len(row.Approvals) != 0 || row.EditedData != nil ||
		row.ApprovalsRequired != 0 || row.Reviewer == "" {
		t.Fatalf("decided: %+v", row)
	}
	stored, _ = st.Request(sub.ID)
	if len(stored.Approvals) != 0 || len(stored.EditedData) != 0 || stored.Status != "edited" {
		t.Fatalf("stored decided row keeps approvals: %+v", stored)
	}
	if got, err := st.Row("tb", 1); err != nil || string(got) != `{"id":1,"n":2}` {
		t.Fatalf("table row: %s %v", got, err)
	}
	if e := pub.list(); e != "review.requested review.decided.tb" {
		t.Fatalf("events: %q", e)
	}
	body, err = st.ChangeBody(stored.ChangeVersion)
	if err != nil {
		t.Fatal(err)
	}
	if suffix, data, ok, err := atR.Event(stored.ChangeVersion, body); err != nil || !ok || suffix != SubjectDecided+".tb" ||
		bytes.Contains(data, []byte("approvals")) || !bytes.Contains(data, []byte(`"status":"edited"`)) {
		t.Fatalf("decision event: %s %s %v %v", suffix, data, ok, err)
	}
	if _, err := decide(atT, sub.ID, "accept", ""); !errors.Is(err, ErrDecided) {
		t.Fatalf("accept after the decision: %v", err)
	}
}

// TestApprovalsRejectAndNotes: a reject decides at once whatever was
// approved; a note given with an approval goes with the accepted decision
// unless the deciding act gives its own, never with a rejection.
func TestApprovalsRejectAndNotes(t *testing.T) {
	keyR, r := newPeer(t)
	_, sID := newPeer(t)
	st, err := store.Open(t.TempDir(), store.Options{Signer: keyR})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	atR := New(Deps{Store: st, Roles: ledgerRoles{r, "R"}, Publisher: &events{}, Approvals: 2})
	atS := New(Deps{Store: st, Roles: ledgerRoles{sID, "S"}, Publisher: &events{}, Approvals: 2})
	ctx := context.Background()
	submit := func(id uint64) Row {
		// Submitted at S: R's approvals count.
		row, err := wait(t, func(done func(Row, error)) {
			atS.Submit(ctx, SubmitRequest{Type: "insert", TableName: "tb", TableID: id, Data: json.RawMessage(`{"n":1}`)}, done)
		})
		if err != nil {
			t.Fatal(err)
		}
		return row
	}
	decide := func(s *Service, req DecideRequest) (Row, error) {
		return wait(t, func(done func(Row, error)) { s.Decide(ctx, req, done) })
	}
	one := submit(1)
	if row, err := decide(atR, DecideRequest{RequestID: one.ID, Decision: "accept", Note: "fine by R"}); err != nil || row.Status != "waiting" {
		t.Fatalf("%+v %v", row, err)
	}
	// The approval's note is not the rejection's.
	if row, err := decide(atR, DecideRequest{RequestID: one.ID, Decision: "reject"}); err != nil || row.Status != "rejected" || row.Approvals != nil ||
		row.Description.Receiver != "rejected" {
		t.Fatalf("reject after an approval: %+v %v", row, err)
	}
	two := submit(2)
	if _, err := decide(atR, DecideRequest{RequestID: two.ID, Decision: "accept", Note: "fine by R"}); err != nil {
		t.Fatal(err)
	}
	// S submitted it and is the applicant's node: S may not approve.
	if _, err := decide(atS, DecideRequest{RequestID: two.ID, Decision: "accept"}); !errors.Is(err, ErrApplicantApproval) {
		t.Fatalf("the applicant's node: %v", err)
	}
	stored, _ := st.Request(two.ID)
	if stored.DescriptionReceiver != "fine by R" || len(stored.Approvals) != 1 {
		t.Fatalf("stored: %+v", stored)
	}
	// T decides without a note: R's goes with the decision.
	_, tID := newPeer(t)
	atT := New(Deps{Store: st, Roles: ledgerRoles{tID, "T"}, Publisher: &events{}, Approvals: 2})
	if row, err := decide(atT, DecideRequest{RequestID: two.ID, Decision: "accept"}); err != nil || row.Status != "accepted" ||
		row.Description.Receiver != "fine by R" {
		t.Fatalf("decided: %+v %v", row, err)
	}
	// A note given with the deciding act is the decision's.
	three := submit(3)
	if _, err := decide(atR, DecideRequest{RequestID: three.ID, Decision: "accept", Note: "fine by R"}); err != nil {
		t.Fatal(err)
	}
	if row, err := decide(atT, DecideRequest{RequestID: three.ID, Decision: "accept", Note: "fine by T"}); err != nil ||
		row.Description.Receiver != "fine by T" {
		t.Fatalf("decided: %+v %v", row, err)
	}
}

// TestOneApprovalDecidesAsBefore: with review.approvals 1 (the default) the
// reviewer that is also the applicant decides its own request with one
// accept, as before approvals existed, and no approval is kept.
func TestOneApprovalDecidesAsBefore(t *testing.T) {
	keyR, r := newPeer(t)
	st, err := store.Open(t.TempDir(), store.Options{Signer: keyR})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	atR := New(Deps{Store: st, Roles: ledgerRoles{r, "R"}, Publisher: &events{}})
	ctx := context.Background()
	for i, d := range []DecideRequest{{Decision: "accept"}, {Decision: "edit", Data: json.RawMessage(`{"n":3}`)}, {Decision: "reject"}} {
		sub, err := wait(t, func(done func(Row, error)) {
			atR.Submit(ctx, SubmitRequest{Type: "insert", TableName: "tb", TableID: uint64(i + 1), Data: json.RawMessage(`{"n":1}`)}, done)
		})
		if err != nil {
			t.Fatal(err)
		}
		if v, err := atR.Request(sub.ID); err != nil || v.ApprovalsRequired != 1 || v.Approvals != nil {
			t.Fatalf("waiting row: %+v %v", v, err)
		}
		d.RequestID = sub.ID
		row, err := wait(t, func(done func(Row, error)) { atR.Decide(ctx, d, done) })
		want := map[string]string{"accept": "accepted", "edit": "edited", "reject": "rejected"}[d.Decision]
		if err != nil || row.Status != want || row.Approvals != nil || row.ApprovalsRequired != 0 {
			t.Fatalf("%s: %+v %v", d.Decision, row, err)
		}
		if stored, _ := st.Request(sub.ID); len(stored.Approvals) != 0 {
			t.Fatalf("%s: kept approvals %+v", d.Decision, stored.Approvals)
		}
	}
}

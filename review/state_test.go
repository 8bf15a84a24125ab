package review

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
)

// TestTransitions lists every transition of the review state machine,
// including the refused ones.
func TestTransitions(t *testing.T) {
	type want struct {
		next      Status
		apply     bool
		broadcast bool
		err       error
	}
	cases := []struct {
		from     Status
		typ      Type
		d        Decision
		reviewer bool
		data     bool
		want     want
	}{
		// The eight cases of source 000.
		{Waiting, Insert, Accept, true, false, want{Accepted, true, true, nil}},
		{Waiting, Insert, Reject, true, false, want{Rejected, false, false, nil}},
		{Waiting, Insert, Edit, true, true, want{Edited, true, true, nil}},
		{Waiting, Update, Accept, true, false, want{Accepted, true, true, nil}},
		{Waiting, Update, Reject, true, false, want{Rejected, false, false, nil}},
		{Waiting, Update, Edit, true, true, want{Edited, true, true, nil}},
		{Waiting, Delete, Accept, true, false, want{Accepted, true, true, nil}},
		{Waiting, Delete, Reject, true, false, want{Rejected, false, false, nil}},
		// Refusals.
		{Waiting, Delete, Edit, true, true, want{Waiting, false, false, ErrEditDelete}},
		{Waiting, Insert, Edit, true, false, want{Waiting, false, false, ErrEditWithoutData}},
		{Waiting, Insert, Accept, false, false, want{Waiting, false, false, ErrNotReviewer}},
		{Waiting, Update, Reject, false, false, want{Waiting, false, false, ErrNotReviewer}},
	}
	// Deciding twice, whatever the decision.
	for _, from := range []Status{Accepted, Edited, Rejected} {
		for _, d := range []Decision{Accept, Edit, Reject} {
			cases = append(cases, struct {
				from     Status
				typ      Type
				d        Decision
				reviewer bool
				data     bool
				want     want
			}{from, Insert, d, true, true, want{from, false, false, ErrDecided}})
		}
	}
	for _, c := range cases {
		// With one approval needed the machine decides as it did before
		// approvals, the applicant's own reviewer node included.
		for _, applicant := range []peer.ID{nodeA, nodeR} {
			t.Run(fmt.Sprintf("%s/%s/%s/reviewer=%v/applicant=%s", c.from, c.typ, c.d, c.reviewer, applicant), func(t *testing.T) {
				var data []byte
				if c.data {
					data = []byte(`{"n":2}`)
				}
				out, err := Transition(RequestState{Status: c.from, Type: c.typ, Applicant: applicant, Data: []byte(`{"n":1}`)},
					Act{Decision: c.d, By: nodeR, ByName: "R", IsReviewer: c.reviewer, At: 100, HasData: c.data, Data: data}, 1)
				if !errors.Is(err, c.want.err) || (err == nil) != (c.want.err == nil) {
					t.Fatalf("err = %v, want %v", err, c.want.err)
				}
				if out.Status != c.want.next || out.Effects.Apply != c.want.apply || out.Effects.Broadcast != c.want.broadcast {
					t.Fatalf("got %s %+v, want %+v", out.Status, out.Effects, c.want)
				}
				if err == nil && (len(out.Approvals) != 0 || out.Edited != nil) {
					t.Fatalf("a decision keeps no approvals: %+v", out)
				}
				if want := map[Status]string{Accepted: `{"n":1}`, Rejected: `{"n":1}`, Edited: `{"n":2}`}[out.Status]; err == nil && string(out.Data) != want {
					t.Fatalf("data %s, want %s", out.Data, want)
				}
			})
		}
	}
}

// Nodes of the approval tables: R, S, T, U are reviewer nodes; A is an
// applicant outside the group.
var (
	nodeA = peer.ID("A")
	nodeR = peer.ID("R")
	nodeS = peer.ID("S")
	nodeT = peer.ID("T")
	nodeU = peer.ID("U")
)

// step is one act of an approvals table and what follows it.
type step struct {
	d    Decision
	by   peer.ID
	data string // edit: the edited data
	// want: the status after it, the approvers of the round after it (in
	// order), the round's edit ("" none), or the error.
	status    Status
	approvers string
	edited    string
	err       error
	msg       string // the error's text contains it
}

// TestApprovals plays every case of review.approvals k > 1 through the
// state machine, one act after another, each on the state the one before
// left: accepts at distinct reviewer nodes decide, the same node twice is
// refused, the applicant's node does not count, an edit starts a new round,
// a reject decides, and a decided request takes nothing more.
func TestApprovals(t *testing.T) {
	cases := []struct {
		name      string
		k         int
		typ       Type
		applicant peer.ID
		steps     []step
	}{
		{"k=2 two accepts decide", 2, Insert, nodeA, []step{
			{d: Accept, by: nodeR, status: Waiting, approvers: "R"},
			{d: Accept, by: nodeS, status: Accepted},
		}},
		{"k=2 the same node twice", 2, Insert, nodeA, []step{
			{d: Accept, by: nodeR, status: Waiting, approvers: "R"},
			{d: Accept, by: nodeR, status: Waiting, approvers: "R", err: ErrAlreadyApproved, msg: "already approved by you; waiting for 1 more"},
			{d: Accept, by: nodeS, status: Accepted},
		}},
		{"k=2 the applicant's node is refused", 2, Update, nodeR, []step{
			{d: Accept, by: nodeR, status: Waiting, err: ErrApplicantApproval, msg: "the applicant's node does not count towards its approvals"},
			{d: Accept, by: nodeS, status: Waiting, approvers: "S"},
			{d: Accept, by: nodeR, status: Waiting, approvers: "S", err: ErrApplicantApproval},
			{d: Accept, by: nodeT, status: Accepted},
		}},
		{"k=2 the applicant's node may reject", 2, Update, nodeR, []step{
			{d: Accept, by: nodeS, status: Waiting, approvers: "S"},
			{d: Reject, by: nodeR, status: Rejected},
		}},
		{"k=2 the applicant's node may edit; its approval does not count", 2, Update, nodeR, []step{
			{d: Accept, by: nodeS, status: Waiting, approvers: "S"},
			{d: Edit, by: nodeR, data: `{"n":5}`, status: Waiting, edited: `{"n":5}`},
			{d: Accept, by: nodeS, status: Waiting, approvers: "S", edited: `{"n":5}`},
			{d: Accept, by: nodeT, status: Edited},
		}},
		{"k=2 an edit starts a new round", 2, Insert, nodeA, []step{
			{d: Accept, by: nodeR, status: Waiting, approvers: "R"},
			{d: Edit, by: nodeS, data: `{"n":2}`, status: Waiting, approvers: "S", edited: `{"n":2}`},
			// R's approval was of the request's data: R may approve the edit.
			{d: Accept, by: nodeS, status: Waiting, approvers: "S", edited: `{"n":2}`, err: ErrAlreadyApproved},
			{d: Accept, by: nodeR, status: Edited},
		}},
		{"k=2 an edit after an edit", 2, Insert, nodeA, []step{
			{d: Edit, by: nodeR, data: `{"n":2}`, status: Waiting, approvers: "R", edited: `{"n":2}`},
			{d: Edit, by: nodeS, data: `{"n":3}`, status: Waiting, approvers: "S", edited: `{"n":3}`},
			{d: Edit, by: nodeR, data: `{"n":3}`, status: Edited},
		}},
		{"k=2 an edit to data already approved keeps its approvals", 2, Insert, nodeA, []step{
			{d: Edit, by: nodeR, data: `{"n":2}`, status: Waiting, approvers: "R", edited: `{"n":2}`},
			{d: Edit, by: nodeS, data: `{"n":2}`, status: Edited},
		}},
		// A round keeps only approvals of its data that the round before
		// held: R's approval of the request's data went with S's edit.
		{"k=2 editing back to the request's data is a new round", 2, Insert, nodeA, []step{
			{d: Accept, by: nodeR, status: Waiting, approvers: "R"},
			{d: Edit, by: nodeS, data: `{"n":2}`, status: Waiting, approvers: "S", edited: `{"n":2}`},
			{d: Edit, by: nodeT, data: `{"n":1}`, status: Waiting, approvers: "T", edited: `{"n":1}`},
			{d: Accept, by: nodeR, status: Edited},
		}},
		{"k=2 the editor edits the same data again", 2, Insert, nodeA, []step{
			{d: Edit, by: nodeR, data: `{"n":2}`, status: Waiting, approvers: "R", edited: `{"n":2}`},
			{d: Edit, by: nodeR, data: `{"n":2}`, status: Waiting, approvers: "R", edited: `{"n":2}`, err: ErrAlreadyApproved, msg: "waiting for 1 more"},
		}},
		{"k=2 a delete cannot be edited", 2, Delete, nodeA, []step{
			{d: Accept, by: nodeR, status: Waiting, approvers: "R"},
			{d: Edit, by: nodeS, data: `{"n":2}`, status: Waiting, approvers: "R", err: ErrEditDelete},
			{d: Accept, by: nodeS, status: Accepted},
		}},
		{"k=2 an edit needs data", 2, Insert, nodeA, []step{
			{d: Edit, by: nodeS, status: Waiting, err: ErrEditWithoutData},
		}},
		{"k=2 a node outside the group", 2, Insert, nodeA, []step{
			{d: Accept, by: nodeA, status: Waiting, err: ErrNotReviewer},
			{d: Accept, by: nodeR, status: Waiting, approvers: "R"},
			{d: Reject, by: nodeA, status: Waiting, approvers: "R", err: ErrNotReviewer},
		}},
		{"k=3 three distinct accepts", 3, Update, nodeA, []step{
			{d: Accept, by: nodeR, status: Waiting, approvers: "R"},
			{d: Accept, by: nodeR, status: Waiting, approvers: "R", err: ErrAlreadyApproved, msg: "waiting for 2 more"},
			{d: Accept, by: nodeS, status: Waiting, approvers: "RS"},
			{d: Accept, by: nodeS, status: Waiting, approvers: "RS", err: ErrAlreadyApproved, msg: "waiting for 1 more"},
			{d: Accept, by: nodeT, status: Accepted},
		}},
		{"k=3 an edit in the middle", 3, Update, nodeA, []step{
			{d: Accept, by: nodeR, status: Waiting, approvers: "R"},
			{d: Accept, by: nodeS, status: Waiting, approvers: "RS"},
			{d: Edit, by: nodeT, data: `{"n":9}`, status: Waiting, approvers: "T", edited: `{"n":9}`},
			{d: Accept, by: nodeR, status: Waiting, approvers: "TR", edited: `{"n":9}`},
			{d: Accept, by: nodeU, status: Edited},
		}},
		{"k=3 a reject after two approvals", 3, Insert, nodeA, []step{
			{d: Accept, by: nodeR, status: Waiting, approvers: "R"},
			{d: Accept, by: nodeS, status: Waiting, approvers: "RS"},
			{d: Reject, by: nodeT, status: Rejected},
		}},
		{"k=3 the applicant's node and two others are not enough", 3, Insert, nodeR, []step{
			{d: Edit, by: nodeR, data: `{"n":4}`, status: Waiting, edited: `{"n":4}`},
			{d: Accept, by: nodeS, status: Waiting, approvers: "S", edited: `{"n":4}`},
			{d: Accept, by: nodeR, status: Waiting, approvers: "S", edited: `{"n":4}`, err: ErrApplicantApproval},
			{d: Accept, by: nodeT, status: Waiting, approvers: "ST", edited: `{"n":4}`},
			{d: Accept, by: nodeU, status: Edited},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := RequestState{Status: Waiting, Type: c.typ, Applicant: c.applicant, Data: []byte(`{"n":1}`)}
			var decidedData []byte
			for i, s := range c.steps {
				var data []byte
				if s.data != "" {
					data = []byte(s.data)
				}
				isReviewer := s.by != nodeA
				out, err := Transition(st, Act{Decision: s.d, By: s.by, ByName: string(s.by), IsReviewer: isReviewer, At: int64(100 + i),
					HasData: data != nil, Data: data}, c.k)
				if !errors.Is(err, s.err) || (err == nil) != (s.err == nil) || (s.msg != "" && (err == nil || !strings.Contains(err.Error(), s.msg))) {
					t.Fatalf("step %d (%s by %s): err = %v, want %v %q", i, s.d, s.by, err, s.err, s.msg)
				}
				if out.Status != s.status {
					t.Fatalf("step %d (%s by %s): status %s, want %s", i, s.d, s.by, out.Status, s.status)
				}
				if err != nil {
					// A refusal changes nothing: the state stays as it was.
					continue
				}
				var who string
				for _, a := range out.Approvals {
					who += string(a.ReviewerID)
					if a.Reviewer != string(a.ReviewerID) || a.At < 100 || a.At > int64(100+i) {
						t.Fatalf("step %d: approval %+v", i, a)
					}
					round := st.Data
					if out.Edited != nil {
						round = out.Edited
					}
					if string(a.Digest) != string(DataDigest(round)) {
						t.Fatalf("step %d: approval of %s names other data", i, a.ReviewerID)
					}
				}
				if s.status == Waiting && (who != s.approvers || string(out.Edited) != s.edited || out.Needed != c.k-len(s.approvers) ||
					out.Effects != (Effects{}) || string(out.Data) != `{"n":1}`) {
					t.Fatalf("step %d (%s by %s): approvers %q edited %s needed %d effects %+v data %s, want %q %s %d", i, s.d, s.by, who,
						out.Edited, out.Needed, out.Effects, out.Data, s.approvers, s.edited, c.k-len(s.approvers))
				}
				if s.status != Waiting {
					if who != "" || out.Edited != nil {
						t.Fatalf("step %d: decided with approvals %q, edit %s", i, who, out.Edited)
					}
					wantEff := Effects{Apply: s.status != Rejected, Broadcast: s.status != Rejected}
					if out.Effects != wantEff {
						t.Fatalf("step %d: effects %+v, want %+v", i, out.Effects, wantEff)
					}
					decidedData = out.Data
				}
				st = RequestState{Status: out.Status, Type: st.Type, Applicant: st.Applicant, Data: st.Data, Edited: out.Edited, Approvals: out.Approvals}
			}
			// The data decided is the last round's: an edit's, else the request's.
			if st.Status == Edited {
				if last := c.steps[len(c.steps)-1]; last.d == Edit && string(decidedData) != last.data {
					t.Fatalf("edited with %s, want %s", decidedData, last.data)
				}
			}
			if st.Status == Accepted && string(decidedData) != `{"n":1}` {
				t.Fatalf("accepted with %s", decidedData)
			}
			// Once decided, nothing more: every act is a conflict.
			if st.Status != Waiting {
				for _, d := range []Decision{Accept, Edit, Reject} {
					if _, err := Transition(st, Act{Decision: d, By: nodeU, IsReviewer: true, HasData: true, Data: []byte(`{"n":7}`)}, c.k); !errors.Is(err, ErrDecided) {
						t.Fatalf("%s after %s: %v", d, st.Status, err)
					}
				}
			}
		})
	}
}

// TestApprovalsOfEditedData: an edit decided by the k-th approval applies
// the edited data, not the request's.
func TestApprovalsOfEditedData(t *testing.T) {
	st := RequestState{Status: Waiting, Type: Update, Applicant: nodeA, Data: []byte(`{"n":1}`)}
	out, err := Transition(st, Act{Decision: Edit, By: nodeR, IsReviewer: true, HasData: true, Data: []byte(`{"n":2}`)}, 2)
	if err != nil || out.Status != Waiting {
		t.Fatal(out, err)
	}
	st.Edited, st.Approvals = out.Edited, out.Approvals
	out, err = Transition(st, Act{Decision: Accept, By: nodeS, IsReviewer: true}, 2)
	if err != nil || out.Status != Edited || string(out.Data) != `{"n":2}` || !out.Effects.Apply {
		t.Fatalf("%+v %v", out, err)
	}
}

// TestApprovalsAfterKIsLowered: approvals recorded under a larger
// review.approvals decide at the next accept once it is lowered, even by a
// node that approved already; approvals of other data, by the applicant's
// node, or repeated, never count.
func TestApprovalsAfterKIsLowered(t *testing.T) {
	d := DataDigest([]byte(`{"n":1}`))
	st := RequestState{Status: Waiting, Type: Insert, Applicant: nodeA, Data: []byte(`{"n":1}`),
		Approvals: []Approval{{ReviewerID: nodeR, Digest: d}, {ReviewerID: nodeS, Digest: d}}}
	out, err := Transition(st, Act{Decision: Accept, By: nodeR, IsReviewer: true}, 2)
	if err != nil || out.Status != Accepted {
		t.Fatalf("%+v %v", out, err)
	}
	st.Approvals = []Approval{{ReviewerID: nodeR, Digest: d}, {ReviewerID: nodeR, Digest: d}, {ReviewerID: nodeA, Digest: d},
		{ReviewerID: nodeS, Digest: DataDigest([]byte(`{"n":2}`))}}
	out, err = Transition(st, Act{Decision: Accept, By: nodeT, IsReviewer: true}, 3)
	if err != nil || out.Status != Waiting || len(out.Approvals) != 2 || out.Needed != 1 {
		t.Fatalf("%+v %v", out, err)
	}
}

func TestRefusalsMapToWireCodes(t *testing.T) {
	for err, code := range map[error]string{
		ErrNotReviewer: ferry.CodeForbidden, ErrDecided: ferry.CodeConflict, ErrEditDelete: ferry.CodeBadRequest,
		ErrEditWithoutData: ferry.CodeBadRequest, ErrRowExists: ferry.CodeConflict, ErrRowMissing: ferry.CodeConflict,
		ErrAlreadyApproved: ferry.CodeConflict, ErrApplicantApproval: ferry.CodeForbidden,
	} {
		if got := ferry.Code(err); got != code {
			t.Errorf("%v: code %s, want %s", err, got, code)
		}
	}
}

func TestApplyRow(t *testing.T) {
	cases := []struct {
		typ      Type
		existing string
		data     string
		strict   bool
		row      string
		del      bool
		err      error
	}{
		{Insert, "", `{"a":1}`, true, `{"a":1,"id":7}`, false, nil},
		{Insert, `{"id":7,"a":0}`, `{"a":1}`, true, "", false, ErrRowExists},
		{Insert, `{"id":7,"a":0}`, `{"a":1}`, false, `{"a":1,"id":7}`, false, nil},
		{Update, `{"id":7,"a":0,"b":2}`, `{"a":1}`, true, `{"a":1,"b":2,"id":7}`, false, nil},
		{Update, "", `{"a":1}`, true, "", false, ErrRowMissing},
		{Update, "", `{"a":1}`, false, `{"a":1,"id":7}`, false, nil},
		{Delete, `{"id":7}`, `{}`, true, "", true, nil},
		{Delete, "", `{}`, true, "", false, ErrRowMissing},
		{Delete, "", `{}`, false, "", true, nil},
	}
	for _, c := range cases {
		var existing []byte
		if c.existing != "" {
			existing = []byte(c.existing)
		}
		got, err := ApplyRow(c.typ, 7, existing, []byte(c.data), c.strict)
		if !errors.Is(err, c.err) || (err == nil) != (c.err == nil) {
			t.Errorf("%s %q strict=%v: err %v, want %v", c.typ, c.existing, c.strict, err, c.err)
			continue
		}
		if err == nil && (string(got.Row) != c.row || got.Delete != c.del) {
			t.Errorf("%s %q strict=%v: got %s del=%v, want %s del=%v", c.typ, c.existing, c.strict, got.Row, got.Delete, c.row, c.del)
		}
	}
}

func TestCheckDataAndSetFields(t *testing.T) {
	if _, err := CheckData(3, []byte(`{"id":4}`), Insert); !errors.Is(err, ferry.ErrBadRequest) {
		t.Errorf("data.id differing from table_id: %v", err)
	}
	if b, err := CheckData(3, []byte(`{"id":3,"x":"<a>"}`), Insert); err != nil || string(b) != `{"x":"<a>"}` {
		t.Errorf("data.id equal to table_id is dropped, HTML is not escaped: %s %v", b, err)
	}
	if b, err := CheckData(3, nil, Delete); err != nil || string(b) != `{}` {
		t.Errorf("a delete needs no data: %s %v", b, err)
	}
	for _, bad := range []string{``, `null`, `[]`, `"x"`, `{`} {
		if _, err := CheckData(3, []byte(bad), Insert); !errors.Is(err, ferry.ErrBadRequest) {
			t.Errorf("data %q: %v", bad, err)
		}
	}
	b, err := SetFields([]byte(`{"a":1,"b":"x"}`), map[string]string{"a": "2", "b": "plain text", "c": `{"n":1}`})
	if err != nil || string(b) != `{"a":2,"b":"plain text","c":{"n":1}}` {
		t.Errorf("SetFields: %s %v", b, err)
	}
	if _, err := SetFields([]byte(`{}`), map[string]string{"id": "9"}); !errors.Is(err, ferry.ErrBadRequest) {
		t.Errorf("setting id: %v", err)
	}
}

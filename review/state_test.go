package review

import (
	"errors"
	"fmt"
	"testing"

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
		t.Run(fmt.Sprintf("%s/%s/%s/reviewer=%v", c.from, c.typ, c.d, c.reviewer), func(t *testing.T) {
			next, eff, err := Transition(c.from, c.typ, c.d, c.reviewer, c.data)
			if !errors.Is(err, c.want.err) || (err == nil) != (c.want.err == nil) {
				t.Fatalf("err = %v, want %v", err, c.want.err)
			}
			if next != c.want.next || eff.Apply != c.want.apply || eff.Broadcast != c.want.broadcast {
				t.Fatalf("got %s %+v, want %+v", next, eff, c.want)
			}
		})
	}
}

func TestRefusalsMapToWireCodes(t *testing.T) {
	for err, code := range map[error]string{
		ErrNotReviewer: ferry.CodeForbidden, ErrDecided: ferry.CodeConflict, ErrEditDelete: ferry.CodeBadRequest,
		ErrEditWithoutData: ferry.CodeBadRequest, ErrRowExists: ferry.CodeConflict, ErrRowMissing: ferry.CodeConflict,
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

package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
)

// TestApprovalsText: `ferry requests show` and the decide commands say who
// approved a waiting request and what it still needs; with one approval
// needed (the default) they say nothing of approvals.
func TestApprovalsText(t *testing.T) {
	ref := time.Date(2026, 1, 2, 12, 0, 4, 0, time.UTC)
	old := now
	now = func() time.Time { return ref }
	t.Cleanup(func() { now = old })
	at := ref.Add(-3 * time.Second).Unix()
	waiting := review.Row{ID: 7, Type: "insert", TableName: "tb", TableID: 1, Status: "waiting", Data: json.RawMessage(`{"n":1}`),
		ApprovalsRequired: 3, Approvals: []review.ApprovalRow{{Reviewer: "S", ReviewerID: "12D3S", At: at}}}
	for _, tc := range []struct {
		name string
		g    *globals
		row  review.Row
		want string
	}{
		{"one of three", &globals{}, waiting, "1 of 3: S 3s ago; waiting for 2 more"},
		{"absolute", &globals{absolute: true}, waiting, "1 of 3: S 2026-01-02T12:00:01Z; waiting for 2 more"},
		{"none yet", &globals{}, review.Row{Status: "waiting", ApprovalsRequired: 2}, "0 of 2; waiting for 2 more"},
		{"one needed", &globals{}, review.Row{Status: "waiting", ApprovalsRequired: 1}, ""},
		{"a member's row", &globals{}, review.Row{Status: "waiting"}, ""},
		{"decided", &globals{}, review.Row{Status: "accepted", ApprovalsRequired: 2}, ""},
	} {
		if got := tc.g.approvals(tc.row); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}

	// The detail view: the edit that waits, and the approvals line.
	r := waiting
	r.EditedData = json.RawMessage(`{"n": 2}`)
	var b bytes.Buffer
	w := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	(&globals{}).requestDetail(w, node.RequestDetail{Request: r, Current: json.RawMessage("null")})
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(b.String(), "\n") {
		if k, v, ok := strings.Cut(l, "  "); ok {
			lines[k] = strings.TrimSpace(v)
		}
	}
	if got, want := lines["edited data"], `{"n":2} (an edit waiting for approvals: accepting approves it)`; got != want {
		t.Errorf("edited data: %q, want %q\n%s", got, want, b.String())
	}
	if got, want := lines["approvals"], "1 of 3: S 3s ago; waiting for 2 more"; got != want {
		t.Errorf("approvals: %q, want %q\n%s", got, want, b.String())
	}
}

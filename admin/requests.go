package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/review"
	"github.com/ferrynet/ferry/store"
)

// RequestDetail is what an operator reads before deciding a request: the
// row, the table row it changes as this node holds it now, the change field
// by field, and who receives each decision.
type RequestDetail struct {
	Request   review.Row      `json:"request"`
	Current   json.RawMessage `json:"current"` // the table row now; null: none
	Diff      []FieldChange   `json:"diff"`
	Receivers Receivers       `json:"receivers"`
}

// FieldChange is one field of a request's change against the current row.
type FieldChange struct {
	Field  string          `json:"field"`
	Change string          `json:"change"` // added, changed, removed, same
	Before json.RawMessage `json:"before,omitempty"`
	After  json.RawMessage `json:"after,omitempty"`
}

// Receivers names who a decision goes to: accepted and edited decisions to
// every member (and the applicant), a rejection to the applicant only.
type Receivers struct {
	Accept []string `json:"accept"`
	Reject []string `json:"reject"`
}

// RequestDetail reads one request with its current row, diff and receivers.
func (srv *Server) RequestDetail(id uint64) (RequestDetail, error) {
	row, err := srv.review.Request(id)
	if err != nil {
		return RequestDetail{}, err
	}
	d := RequestDetail{Request: row, Current: json.RawMessage("null"), Diff: []FieldChange{}}
	cur, err := srv.st.Row(row.TableName, row.TableID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return RequestDetail{}, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	if cur != nil {
		d.Current = json.RawMessage(cur)
	}
	typ, err := review.ParseType(row.Type)
	if err != nil {
		return RequestDetail{}, err
	}
	d.Diff, err = DiffRow(typ, row.TableID, cur, row.Round())
	if err != nil {
		return RequestDetail{}, err
	}
	d.Receivers = srv.decisionReceivers(row)
	return d, nil
}

// DiffRow compares a table row (nil: none) with the row a request of type
// typ with data would leave, field by field in name order ("id" left out).
func DiffRow(typ review.Type, tableID uint64, current []byte, data json.RawMessage) ([]FieldChange, error) {
	before := map[string]json.RawMessage{}
	if current != nil {
		if err := json.Unmarshal(current, &before); err != nil {
			return nil, fmt.Errorf("%w: the stored row is not a JSON object: %w", ferry.ErrUnavailable, err)
		}
	}
	after := map[string]json.RawMessage{}
	change, err := review.ApplyRow(typ, tableID, current, data, false)
	if err != nil {
		return nil, err
	}
	if !change.Delete {
		if err := json.Unmarshal(change.Row, &after); err != nil {
			return nil, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
		}
	}
	fields := map[string]bool{}
	for k := range before {
		fields[k] = true
	}
	for k := range after {
		fields[k] = true
	}
	delete(fields, "id")
	out := []FieldChange{}
	for _, f := range slices.Sorted(maps.Keys(fields)) {
		b, inB := before[f]
		a, inA := after[f]
		fc := FieldChange{Field: f, Before: b, After: a}
		switch {
		case !inB:
			fc.Change = "added"
		case !inA:
			fc.Change = "removed"
		case jsonEqual(a, b):
			fc.Change = "same"
		default:
			fc.Change = "changed"
		}
		out = append(out, fc)
	}
	return out, nil
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

func (srv *Server) decisionReceivers(row review.Row) Receivers {
	var r Receivers
	applicant, _ := peer.Decode(row.ApplicantID)
	names := map[string]bool{}
	for _, m := range srv.book.Members() {
		names[srv.book.Name(m)] = true
	}
	if applicant != "" && applicant != srv.id {
		names[srv.book.Name(applicant)] = true
		r.Reject = []string{srv.book.Name(applicant)}
	}
	r.Accept = append([]string{}, slices.Sorted(maps.Keys(names))...)
	if r.Reject == nil {
		r.Reject = []string{}
	}
	return r
}

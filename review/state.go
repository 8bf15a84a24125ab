// Package review is the central review flow of source 000: a change to a
// shared table goes to the one reviewer node as a request; a person there
// accepts, edits or rejects it; accepted and edited changes are applied at
// the reviewer with the next decision sequence and sent to every member,
// which apply them in that order; a rejection goes to the applicant only.
//
// state.go is the pure state machine (no I/O): statuses, decisions, the
// table row change a decision makes. service.go runs its effects against
// the store and the stream layer.
package review

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/ferrynet/ferry"
)

// Status is a request's state.
type Status int

// Statuses of the request table (source 000).
const (
	Waiting Status = iota
	Accepted
	Edited
	Rejected
)

func (s Status) String() string {
	switch s {
	case Waiting:
		return "waiting"
	case Accepted:
		return "accepted"
	case Edited:
		return "edited"
	case Rejected:
		return "rejected"
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// ParseStatus reads a status name.
func ParseStatus(s string) (Status, error) {
	for _, x := range []Status{Waiting, Accepted, Edited, Rejected} {
		if x.String() == s {
			return x, nil
		}
	}
	return 0, fmt.Errorf("%w: status %q is not waiting, accepted, edited or rejected", ferry.ErrBadRequest, s)
}

// Type is what a request does to its row.
type Type int

// Request types.
const (
	Insert Type = iota + 1
	Update
	Delete
)

func (t Type) String() string {
	switch t {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	}
	return fmt.Sprintf("type(%d)", int(t))
}

// ParseType reads a request type.
func ParseType(s string) (Type, error) {
	for _, x := range []Type{Insert, Update, Delete} {
		if x.String() == s {
			return x, nil
		}
	}
	return 0, fmt.Errorf("%w: type %q is not insert, update or delete", ferry.ErrBadRequest, s)
}

// Decision is what the reviewer's operator chose.
type Decision int

// Decisions.
const (
	Accept Decision = iota + 1
	Edit
	Reject
)

func (d Decision) String() string {
	switch d {
	case Accept:
		return "accept"
	case Edit:
		return "edit"
	case Reject:
		return "reject"
	}
	return fmt.Sprintf("decision(%d)", int(d))
}

// ParseDecision reads a decision name.
func ParseDecision(s string) (Decision, error) {
	for _, x := range []Decision{Accept, Edit, Reject} {
		if x.String() == s {
			return x, nil
		}
	}
	return 0, fmt.Errorf("%w: decision %q is not accept, edit or reject", ferry.ErrBadRequest, s)
}

// Refusals of the state machine, each wrapping its wire code.
var (
	ErrNotReviewer     = fmt.Errorf("%w: only the reviewer decides", ferry.ErrForbidden)
	ErrDecided         = fmt.Errorf("%w: the request is not waiting", ferry.ErrConflict)
	ErrEditDelete      = fmt.Errorf("%w: a delete cannot be edited; accept or reject it", ferry.ErrBadRequest)
	ErrEditWithoutData = fmt.Errorf("%w: an edit needs the edited data", ferry.ErrBadRequest)
	ErrRowExists       = fmt.Errorf("%w: the row exists", ferry.ErrConflict)
	ErrRowMissing      = fmt.Errorf("%w: the row does not exist", ferry.ErrConflict)
)

// Effects is what a transition asks the service to do.
type Effects struct {
	// Apply: change the reviewer's table and take the next decision sequence.
	Apply bool
	// Broadcast: send the decision to every member; otherwise to the applicant only.
	Broadcast bool
}

// Transition decides a request. It is pure: the caller runs the effects.
func Transition(current Status, typ Type, d Decision, isReviewer, hasData bool) (Status, Effects, error) {
	if !isReviewer {
		return current, Effects{}, ErrNotReviewer
	}
	if current != Waiting {
		return current, Effects{}, fmt.Errorf("%w (it is %s)", ErrDecided, current)
	}
	switch d {
	case Accept:
		return Accepted, Effects{Apply: true, Broadcast: true}, nil
	case Edit:
		if typ == Delete {
			return current, Effects{}, ErrEditDelete
		}
		if !hasData {
			return current, Effects{}, ErrEditWithoutData
		}
		return Edited, Effects{Apply: true, Broadcast: true}, nil
	case Reject:
		return Rejected, Effects{}, nil
	}
	return current, Effects{}, fmt.Errorf("%w: unknown decision %d", ferry.ErrBadRequest, d)
}

// RowChange is what applying a request does to one table row: the new row
// (a JSON object holding "id"), or Delete.
type RowChange struct {
	Row    []byte
	Delete bool
}

// ApplyRow computes the row change of an accepted request. existing is the
// current row (nil: none). strict refuses an insert over an existing row
// and an update or delete of a missing one (the reviewer, before it
// decides); members apply the reviewer's order as given, so they are lenient.
func ApplyRow(typ Type, tableID uint64, existing, data []byte, strict bool) (RowChange, error) {
	switch typ {
	case Insert:
		if existing != nil && strict {
			return RowChange{}, fmt.Errorf("%w: insert of row %d", ErrRowExists, tableID)
		}
		row, err := rowJSON(tableID, nil, data)
		return RowChange{Row: row}, err
	case Update:
		if existing == nil && strict {
			return RowChange{}, fmt.Errorf("%w: update of row %d", ErrRowMissing, tableID)
		}
		row, err := rowJSON(tableID, existing, data)
		return RowChange{Row: row}, err
	case Delete:
		if existing == nil && strict {
			return RowChange{}, fmt.Errorf("%w: delete of row %d", ErrRowMissing, tableID)
		}
		return RowChange{Delete: true}, nil
	}
	return RowChange{}, fmt.Errorf("%w: unknown type %d", ferry.ErrBadRequest, typ)
}

// rowJSON merges data's fields over base's and sets "id".
func rowJSON(id uint64, base, data []byte) ([]byte, error) {
	fields := map[string]json.RawMessage{}
	if base != nil {
		if err := json.Unmarshal(base, &fields); err != nil {
			return nil, fmt.Errorf("stored row %d is not a JSON object: %w", id, err)
		}
	}
	if len(data) > 0 {
		var upd map[string]json.RawMessage
		if err := json.Unmarshal(data, &upd); err != nil {
			return nil, fmt.Errorf("%w: data is not a JSON object", ferry.ErrBadRequest)
		}
		maps.Copy(fields, upd)
	}
	fields["id"], _ = json.Marshal(id)
	return json.Marshal(fields)
}

// CheckData validates a request's data: a JSON object whose "id", if any,
// is the table id. It returns the object re-encoded without "id".
func CheckData(tableID uint64, data json.RawMessage, typ Type) ([]byte, error) {
	if len(data) == 0 || string(data) == "null" {
		if typ == Delete {
			return []byte("{}"), nil
		}
		return nil, fmt.Errorf("%w: data is missing", ferry.ErrBadRequest)
	}
	if err := ferry.CheckJSONDepth(data); err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("%w: data is not a JSON object", ferry.ErrBadRequest)
	}
	if raw, ok := obj["id"]; ok {
		var id uint64
		if json.Unmarshal(raw, &id) != nil || id != tableID {
			return nil, fmt.Errorf("%w: data.id %s differs from table_id %d", ferry.ErrBadRequest, raw, tableID)
		}
		delete(obj, "id")
	}
	return encodeJSON(obj)
}

// encodeJSON encodes without HTML escaping, so data does not grow past the
// size it was checked at.
func encodeJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// SetFields applies FIELD=VALUE edits to a data object: VALUE is JSON if it
// parses, else a string.
func SetFields(data []byte, sets map[string]string) ([]byte, error) {
	obj := map[string]json.RawMessage{}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &obj); err != nil {
			return nil, fmt.Errorf("%w: data is not a JSON object", ferry.ErrBadRequest)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(sets)) {
		if k == "" || k == "id" {
			return nil, fmt.Errorf("%w: field %q cannot be set", ferry.ErrBadRequest, k)
		}
		v := sets[k]
		if json.Valid([]byte(v)) {
			obj[k] = json.RawMessage(v)
		} else {
			obj[k], _ = json.Marshal(v)
		}
	}
	return encodeJSON(obj)
}

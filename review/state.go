// Package review is the central review flow of source 000: a change to a
// shared table goes to the one reviewer node as a request; a person there
// accepts, edits or rejects it; accepted and edited changes are applied at
// the reviewer with the next decision sequence and sent to every member,
// which apply them in that order; a rejection goes to the applicant only.
// With review.approvals k > 1 a request is decided only once k distinct
// reviewer nodes accepted the same data; until then its row keeps their
// approvals.
//
// state.go is the pure state machine (no I/O): statuses, decisions,
// approvals, the table row change a decision makes. service.go runs its effects against
// the store and the stream layer.
package review

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"

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

// Refusals of approvals (review.approvals > 1).
var (
	ErrAlreadyApproved   = fmt.Errorf("%w: already approved by you", ferry.ErrConflict)
	ErrApplicantApproval = fmt.Errorf("%w: the applicant's node does not count towards its approvals; another reviewer node must accept it", ferry.ErrForbidden)
)

// Effects is what a transition asks the service to do.
type Effects struct {
	// Apply: change the reviewer's table and take the next decision sequence.
	Apply bool
	// Broadcast: send the decision to every member; otherwise to the applicant only.
	Broadcast bool
}

// Approval is one reviewer node's accept of a request's data: the node, when
// (Unix seconds), and the DataDigest of the data it accepted.
type Approval struct {
	ReviewerID peer.ID
	Reviewer   string
	At         int64
	Digest     []byte
}

// DataDigest names request data for approvals: the SHA-256 of its bytes as
// the node keeps them (CheckData and SetFields encode objects with their
// keys in order, so the same data has the same bytes).
func DataDigest(data []byte) []byte {
	h := sha256.Sum256(data)
	return h[:]
}

// RequestState is what the state machine reads of a request.
type RequestState struct {
	Status    Status
	Type      Type
	Applicant peer.ID
	// Data is the request's data; Edited, while it waits, an edit that has
	// not reached its approvals yet (nil: none). The round approves Edited
	// if set, else Data.
	Data, Edited []byte
	// Approvals of the round's data (others no longer count).
	Approvals []Approval
}

// Act is one decision asked of a node.
type Act struct {
	Decision Decision
	By       peer.ID
	ByName   string
	// IsReviewer: By is a node of the review group.
	IsReviewer bool
	At         int64 // Unix seconds
	// HasData: an edit came with data or fields to set; Data is the edited
	// data (the service computes it).
	HasData bool
	Data    []byte
}

// Outcome is what a transition leads to.
type Outcome struct {
	// Status is the request's new status: Waiting when the act was an
	// approval that did not reach review.approvals (the row keeps it).
	Status  Status
	Effects Effects
	// Data is the data applied (decided), or the request's data (waiting).
	Data []byte
	// Edited and Approvals are what the waiting row keeps: the edit the
	// round approves (nil: none) and the approvals of the round's data.
	Edited    []byte
	Approvals []Approval
	// Needed is how many more approvals the round needs (waiting only).
	Needed int
}

// Transition decides a request, or records an approval of it, with k the
// distinct reviewer nodes that must accept the same data (review.approvals;
// below 1 counts as 1). It is pure: the caller runs the effects.
//
// With k = 1 one accept or edit by a reviewer node decides, the applicant's
// node too (a reviewer that submitted a request may decide it, as with one
// reviewer). With k > 1 an accept records the node's approval of the
// round's data, and the k-th distinct one decides (accepted, or edited when
// the round approves an edit); the applicant's node does not count towards
// them; an edit starts a new round for its data with the editor's approval
// (approvals of the same data still count); one reject decides rejected.
func Transition(s RequestState, a Act, k int) (Outcome, error) {
	if !a.IsReviewer {
		return Outcome{Status: s.Status}, ErrNotReviewer
	}
	if s.Status != Waiting {
		return Outcome{Status: s.Status}, fmt.Errorf("%w (it is %s)", ErrDecided, s.Status)
	}
	k = max(k, 1)
	// counts: whether a node's approval counts towards k.
	counts := func(p peer.ID) bool { return k == 1 || p != s.Applicant }
	refuse := func(err error) (Outcome, error) {
		return Outcome{Status: Waiting, Data: s.Data, Edited: s.Edited, Approvals: s.Approvals}, err
	}
	switch a.Decision {
	case Reject:
		return Outcome{Status: Rejected, Data: s.Data}, nil
	case Accept:
		if !counts(a.By) {
			return refuse(ErrApplicantApproval)
		}
		round, edited := s.Data, false
		if s.Edited != nil {
			round, edited = s.Edited, true
		}
		approvals, err := approve(s.Approvals, DataDigest(round), a, k, counts)
		if err != nil {
			return refuse(err)
		}
		return settle(s, round, edited, approvals, k), nil
	case Edit:
		if s.Type == Delete {
			return refuse(ErrEditDelete)
		}
		if !a.HasData {
			return refuse(ErrEditWithoutData)
		}
		d := DataDigest(a.Data)
		var approvals []Approval
		var err error
		if counts(a.By) {
			approvals, err = approve(s.Approvals, d, a, k, counts)
		} else {
			approvals = current(s.Approvals, d, counts)
		}
		if err != nil {
			return refuse(err)
		}
		return settle(s, a.Data, true, approvals, k), nil
	}
	return refuse(fmt.Errorf("%w: unknown decision %d", ferry.ErrBadRequest, a.Decision))
}

// current is the approvals that count for data of digest d: one per node,
// of that data, by nodes that count.
func current(have []Approval, d []byte, counts func(peer.ID) bool) []Approval {
	var out []Approval
	for _, x := range have {
		if bytes.Equal(x.Digest, d) && counts(x.ReviewerID) &&
			!slices.ContainsFunc(out, func(y Approval) bool { return y.ReviewerID == x.ReviewerID }) {
			out = append(out, x)
		}
	}
	return out
}

// approve adds a's approval of the data of digest d to the ones that count;
// a node that approved that data already is refused while more are needed.
func approve(have []Approval, d []byte, a Act, k int, counts func(peer.ID) bool) ([]Approval, error) {
	out := current(have, d, counts)
	if slices.ContainsFunc(out, func(x Approval) bool { return x.ReviewerID == a.By }) {
		if len(out) < k {
			return nil, fmt.Errorf("%w; waiting for %d more", ErrAlreadyApproved, k-len(out))
		}
		return out, nil // k was lowered since: it decides
	}
	return append(out, Approval{ReviewerID: a.By, Reviewer: a.ByName, At: a.At, Digest: d}), nil
}

// settle decides the round's data once it has k approvals, else keeps them.
func settle(s RequestState, round []byte, edited bool, approvals []Approval, k int) Outcome {
	if len(approvals) >= k {
		st := Accepted
		if edited {
			st = Edited
		}
		return Outcome{Status: st, Effects: Effects{Apply: true, Broadcast: true}, Data: round}
	}
	var e []byte
	if edited {
		e = round
	}
	return Outcome{Status: Waiting, Data: s.Data, Edited: e, Approvals: approvals, Needed: k - len(approvals)}
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

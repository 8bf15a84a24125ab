package review

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// Row is a request row as apps and operators see it (SPEC.md "The review ledger").
type Row struct {
	ID          uint64          `json:"id"`
	TableID     uint64          `json:"table_id"`
	TableName   string          `json:"table_name"`
	Applicant   string          `json:"applicant"`
	Reviewer    string          `json:"reviewer"`
	Type        string          `json:"type"`
	Status      string          `json:"status"`
	Data        json.RawMessage `json:"data"`
	Description Description     `json:"description"`
	CreatedAt   int64           `json:"created_at"`
	ApplicantID string          `json:"applicant_id"`
	ReviewerID  string          `json:"reviewer_id"`
	Origin      string          `json:"origin"`
	Sequence    uint64          `json:"sequence"`
	DecidedAt   int64           `json:"decided_at,omitempty"` // Unix seconds; 0 while waiting
	// Conflict, on the reviewer for a waiting request, says why accepting it
	// would be refused (the row it updates or deletes is missing, or the row
	// it inserts exists).
	Conflict string `json:"conflict,omitempty"`
	// Approvals, on a waiting request at a reviewer node, are the reviewer
	// nodes that accepted the data it waits on (EditedData, else Data), in
	// the order they did; absent when none has, and once it is decided.
	Approvals []ApprovalRow `json:"approvals,omitempty"`
	// ApprovalsRequired is review.approvals, on a waiting request in a
	// reviewer node's operator views and decide replies.
	ApprovalsRequired int `json:"approvals_required,omitempty"`
	// EditedData, on a waiting request at a reviewer node, is an edit that
	// has not yet reached review.approvals: what accepting it now approves.
	EditedData json.RawMessage `json:"edited_data,omitempty"`
}

// ApprovalRow is one reviewer node's approval as a request row shows it.
type ApprovalRow struct {
	Reviewer   string `json:"reviewer"`    // node name
	ReviewerID string `json:"reviewer_id"` // peer id
	At         int64  `json:"at"`          // Unix seconds
}

// Round is the data the request waits on: the pending edit, else its data.
func (r Row) Round() json.RawMessage {
	if len(r.EditedData) > 0 {
		return r.EditedData
	}
	return r.Data
}

// Approved reports whether the reviewer node id approved the data the
// request waits on.
func (r Row) Approved(id string) bool {
	for _, a := range r.Approvals {
		if a.ReviewerID == id {
			return true
		}
	}
	return false
}

// Description is the request's description column.
type Description struct {
	Sender   string `json:"sender"`
	Receiver string `json:"receiver"`
}

// render is a row as events carry it.
func (s *Service) render(r *storepb.Request) Row {
	data := json.RawMessage(r.Data)
	if !json.Valid(data) {
		data = json.RawMessage("{}")
	}
	row := Row{ID: r.Id, TableID: r.TableId, TableName: r.TableName, Applicant: r.Applicant, Reviewer: r.Reviewer,
		Type: r.Type, Status: r.Status, Data: data, Description: Description{Sender: r.DescriptionSender, Receiver: r.DescriptionReceiver},
		CreatedAt: r.CreatedAt, ApplicantID: peer.ID(r.ApplicantId).String(), ReviewerID: peer.ID(r.ReviewerId).String(),
		Origin: r.Origin, Sequence: r.Sequence, DecidedAt: r.DecidedAt}
	if r.Status == Waiting.String() {
		for _, a := range r.Approvals {
			row.Approvals = append(row.Approvals, ApprovalRow{Reviewer: a.Reviewer, ReviewerID: peer.ID(a.ReviewerId).String(), At: a.At})
		}
		if len(r.EditedData) > 0 && json.Valid(r.EditedData) {
			row.EditedData = json.RawMessage(r.EditedData)
		}
	}
	return row
}

// replied is a row as a decision's reply carries it: a request still
// waiting says how many approvals it needs.
func (s *Service) replied(r *storepb.Request) Row {
	row := s.render(r)
	if r.Status == Waiting.String() && s.IsReviewer() {
		row.ApprovalsRequired = s.approvals
	}
	return row
}

// view is a row as the operator reads it: on the reviewer, a waiting row
// says how many approvals it needs and whether accepting it now would be
// refused.
func (s *Service) view(r *storepb.Request) Row {
	row := s.replied(r)
	if r.Status == Waiting.String() && s.IsReviewer() {
		row.Conflict = s.conflict(r)
	}
	return row
}

// conflict checks a waiting request against the reviewer's table now.
func (s *Service) conflict(r *storepb.Request) string {
	typ, err := ParseType(r.Type)
	if err != nil {
		return err.Error()
	}
	existing, err := s.st.Row(r.TableName, r.TableId)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return ""
	}
	data := r.Data
	if len(r.EditedData) > 0 {
		data = r.EditedData
	}
	if _, err := ApplyRow(typ, r.TableId, existing, data, true); err != nil {
		return err.Error()
	}
	return ""
}

// Requests lists request rows, all or with one status.
func (s *Service) Requests(status string) ([]Row, error) {
	if status != "" {
		if _, err := ParseStatus(status); err != nil {
			return nil, err
		}
	}
	rs, err := s.st.Requests(status)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	out := make([]Row, 0, len(rs))
	for _, r := range rs {
		out = append(out, s.view(r))
	}
	return out, nil
}

// Request reads one request row.
func (s *Service) Request(id uint64) (Row, error) {
	r, err := s.st.Request(id)
	if errors.Is(err, store.ErrNotFound) {
		return Row{}, fmt.Errorf("%w: request %d", ferry.ErrNotFound, id)
	}
	if err != nil {
		return Row{}, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	return s.view(r), nil
}

// RequestByOrigin reads a request row by its origin.
func (s *Service) RequestByOrigin(origin string) (Row, error) {
	r, err := s.st.RequestByOrigin(origin)
	if errors.Is(err, store.ErrNotFound) {
		return Row{}, fmt.Errorf("%w: request %s", ferry.ErrNotFound, origin)
	}
	if err != nil {
		return Row{}, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	return s.view(r), nil
}

// Applied is the last decision sequence applied here.
func (s *Service) Applied() uint64 {
	v, _ := s.st.Counter(ctrApplied)
	return v
}

// Held reports whether decisions are held here behind a missing one (a
// gap that catch-up has to fill).
func (s *Service) Held() bool {
	m, _ := s.st.Counter(ctrHeldMax)
	return m > s.Applied()
}

// Seed writes rows into an empty table without review: the initial shared
// state every member starts from, as in the source's walk-through (the demo
// uses it). It refuses a table that already has rows.
func (s *Service) Seed(ctx context.Context, table string, rows map[uint64]json.RawMessage) error {
	if !ValidTable(table) {
		return fmt.Errorf("%w: table name %q", ferry.ErrBadRequest, table)
	}
	have, err := s.st.Rows(table)
	if err != nil {
		return err
	}
	if len(have) > 0 {
		return fmt.Errorf("%w: table %s already has rows", ferry.ErrConflict, table)
	}
	return s.st.Update(ctx, func(tx *store.Txn) error {
		for id, data := range rows {
			clean, err := CheckData(id, data, Insert)
			if err != nil {
				return err
			}
			row, err := rowJSON(id, nil, clean)
			if err != nil {
				return err
			}
			tx.PutRow(table, id, row)
		}
		return nil
	})
}

// RequestsPage lists at most limit request rows with an id after `after`,
// all or those with one status, and the id to ask after next (0: no more).
func (s *Service) RequestsPage(status string, after uint64, limit int) ([]Row, uint64, error) {
	if status != "" {
		if _, err := ParseStatus(status); err != nil {
			return nil, 0, err
		}
	}
	rs, next, err := s.st.RequestsPage(status, after, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	out := make([]Row, 0, len(rs))
	for _, r := range rs {
		out = append(out, s.view(r))
	}
	return out, next, nil
}

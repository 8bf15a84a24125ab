package propagate

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// Change limits of <prefix>.changes.
const (
	DefaultChangesLimit = 1000
	MaxChangesLimit     = 10000
)

// ChangesRequest is the body of <prefix>.changes.
type ChangesRequest struct {
	Since uint64 `json:"since"`
	Limit int    `json:"limit"`
}

// Change is one entry of the answer: a change this node holds, own or received.
type Change struct {
	Version       uint64          `json:"version"`
	Origin        string          `json:"origin"`
	OriginVersion uint64          `json:"origin_version"`
	Kind          string          `json:"kind"`
	DataType      string          `json:"data_type"`
	Payload       json.RawMessage `json:"payload"`
	CreatedAt     time.Time       `json:"created_at"`
}

// KindName is the name of an envelope kind in changes.
func KindName(k pb.Kind) string {
	switch k {
	case pb.Kind_KIND_RESOURCE_CREATE:
		return ActionCreate
	case pb.Kind_KIND_RESOURCE_UPDATE:
		return ActionUpdate
	case pb.Kind_KIND_RESOURCE_DELETE:
		return ActionDelete
	case pb.Kind_KIND_CONSIDERS:
		return ActionConsiders
	case pb.Kind_KIND_PLANNER:
		return ActionPlanner
	case pb.Kind_KIND_REVIEW_REQUEST:
		return "review_request"
	case pb.Kind_KIND_REVIEW_DECISION:
		return "review_decision"
	}
	return "unknown"
}

// Changes answers <prefix>.changes: the changes after a store version, in
// version order, and the version to ask from next.
func (s *Service) Changes(req ChangesRequest) ([]Change, uint64, error) {
	if req.Limit < 0 || req.Limit > MaxChangesLimit {
		return nil, 0, fmt.Errorf("%w: limit must be 0-%d", ferry.ErrBadRequest, MaxChangesLimit)
	}
	if req.Limit == 0 {
		req.Limit = DefaultChangesLimit
	}
	cs, err := s.st.Changes(req.Since, req.Limit)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	out := make([]Change, 0, len(cs))
	next := req.Since
	for _, c := range cs {
		out = append(out, RenderChange(c))
		next = c.Version
	}
	return out, next, nil
}

// RenderChange turns a stored change into its JSON form.
func RenderChange(c store.Change) Change {
	payload := json.RawMessage(c.Body.Payload)
	var m proto.Message
	switch c.Body.Kind {
	case pb.Kind_KIND_REVIEW_REQUEST:
		m = &pb.ReviewRequest{}
	case pb.Kind_KIND_REVIEW_DECISION:
		m = &pb.ReviewDecision{}
	}
	if m != nil {
		if proto.Unmarshal(c.Body.Payload, m) == nil {
			if b, err := protojson.Marshal(m); err == nil {
				payload = b
			}
		}
	}
	if !json.Valid(payload) {
		payload = json.RawMessage("null")
	}
	return Change{Version: c.Version, Origin: peer.ID(c.Body.Origin).String(), OriginVersion: c.Body.OriginVersion,
		Kind: KindName(c.Body.Kind), DataType: c.Body.DataType, Payload: payload,
		CreatedAt: time.Unix(0, c.Body.CreatedAtUnixNano).UTC()}
}

package propagate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// Change limits of <prefix>.changes. A page also stops before it would
// outgrow the reply's byte budget (the NATS server's max payload).
const (
	DefaultChangesLimit = 1000
	MaxChangesLimit     = 10000
	// changesChunk is how many changes are read from the store at a time
	// while a page fills (bounds the memory of one answer to what it sends).
	changesChunk = 32
	// pageOverhead is room for the envelope around the changes:
	// {"ok":true,"changes":[...],"next":<20 digits>,"more":false}.
	pageOverhead = 96
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
		return nil, 0, storeErr(err)
	}
	out := make([]Change, 0, len(cs))
	next := req.Since
	for _, c := range cs {
		out = append(out, RenderChange(c))
		next = c.Version
	}
	return out, next, nil
}

// ChangesPage is one answer of <prefix>.changes: changes in version order,
// the version to ask from next, and whether more changes are held after it.
type ChangesPage struct {
	Changes []json.RawMessage `json:"changes"` // each a Change
	Next    uint64            `json:"next"`
	More    bool              `json:"more"`
}

// ChangesPage answers <prefix>.changes within maxBytes of JSON (0: no byte
// bound): the changes after req.Since, at most req.Limit of them (default
// DefaultChangesLimit), cut where the next one would not fit. More says
// that changes remain after Next (ask again with since = Next). A single
// change too large for maxBytes is refused with too_large, naming it.
func (s *Service) ChangesPage(req ChangesRequest, maxBytes int) (ChangesPage, error) {
	if req.Limit < 0 || req.Limit > MaxChangesLimit {
		return ChangesPage{}, fmt.Errorf("%w: limit must be 0-%d", ferry.ErrBadRequest, MaxChangesLimit)
	}
	if req.Limit == 0 {
		req.Limit = DefaultChangesLimit
	}
	page := ChangesPage{Changes: []json.RawMessage{}, Next: req.Since}
	budget, size := maxBytes-pageOverhead, 0
	for len(page.Changes) < req.Limit {
		want := min(req.Limit-len(page.Changes), changesChunk)
		cs, err := s.st.Changes(page.Next, want)
		if err != nil {
			return ChangesPage{}, storeErr(err)
		}
		for _, c := range cs {
			b, err := encodeChange(RenderChange(c))
			if err != nil {
				return ChangesPage{}, fmt.Errorf("%w: change %d: %w", ferry.ErrUnavailable, c.Version, err)
			}
			if maxBytes > 0 && size+len(b)+1 > budget {
				if len(page.Changes) == 0 {
					return ChangesPage{}, fmt.Errorf("%w: change %d is %d bytes of JSON, over the reply limit of %d bytes", ferry.ErrTooLarge, c.Version, len(b), budget)
				}
				page.More = true
				return page, nil
			}
			page.Changes = append(page.Changes, b)
			size += len(b) + 1
			page.Next = c.Version
		}
		if len(cs) < want {
			return page, nil // the end of what is held (on disk)
		}
	}
	more, err := s.st.Changes(page.Next, 1)
	if err != nil {
		return ChangesPage{}, storeErr(err)
	}
	page.More = len(more) > 0
	return page, nil
}

// encodeChange is compact JSON without HTML escaping: a payload is sent as
// it was stored, and '<' does not grow to six bytes.
func encodeChange(c Change) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
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

// storeErr is a failed read of the store as apps see it: `corrupt` when a
// block failed its checksum (asking again gets the same answer), else
// `unavailable`.
func storeErr(err error) error {
	if errors.Is(err, ferry.ErrCorrupt) {
		return err
	}
	return fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
}

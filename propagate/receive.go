package propagate

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// Event subjects (under the node's prefix).
const (
	SubjectResource  = "resource"  // resource.<created|updated|deleted>.<data_type>
	SubjectConsiders = "considers" // considers.<data_type>
	SubjectPlanner   = "planner"   // planner.<data_type>
)

// ResourceEvent is the body of resource.<verb>.<data_type>.
type ResourceEvent struct {
	Origin       string          `json:"origin"`
	Version      uint64          `json:"version"`       // the origin's version of this change
	LocalVersion uint64          `json:"local_version"` // this node's store version of it
	Resource     json.RawMessage `json:"resource"`
}

// PayloadEvent is the body of considers.<data_type> and planner.<data_type>.
type PayloadEvent struct {
	Origin       string          `json:"origin"`
	Version      uint64          `json:"version"`
	LocalVersion uint64          `json:"local_version"`
	Payload      json.RawMessage `json:"payload"`
}

// prepared is a received change checked before it reaches the store.
type prepared struct {
	reject  error  // authentic but refused for good
	id      string // resource id
	subject string // event subject suffix
	origin  string // origin peer id, as text
	field   string // "resource" or "payload"
}

// Admit lets in only what a partner sends of its own: resources travel from
// their creator to its partners and are never relayed on this path.
func (s *Service) Admit(in *stream.Inbound) error {
	if !s.roles.IsPartner(in.From) {
		return fmt.Errorf("%s is not a partner", in.From)
	}
	if in.Origin != in.From {
		return fmt.Errorf("origin %s differs from sender %s", in.Origin, in.From)
	}
	return nil
}

// Prepare decodes and checks a received change on the stream's goroutine.
func (s *Service) Prepare(in *stream.Inbound) { in.Prepared = s.prepare(in.Body) }

func (s *Service) prepare(body *pb.Body) *prepared {
	o := peerOf(body)
	p := &prepared{origin: s.idString(o), field: "payload"}
	if !ValidDataType(body.DataType) {
		p.reject = stream.Reject("data type %q is not valid", body.DataType)
		return p
	}
	switch body.Kind {
	case pb.Kind_KIND_RESOURCE_CREATE, pb.Kind_KIND_RESOURCE_UPDATE, pb.Kind_KIND_RESOURCE_DELETE:
		id, creatorRaw, err := checkResource(body.Payload)
		if err != nil {
			p.reject = stream.Reject("%v", err)
			return p
		}
		p.id = id
		if creator, ok := jsonString(creatorRaw); !ok || creator != p.origin {
			p.reject = stream.Reject("resource %q: creator_id is not its origin %s", p.id, o)
			return p
		}
		p.subject, p.field, _ = eventOf(body.Kind, body.DataType)
	case pb.Kind_KIND_CONSIDERS, pb.Kind_KIND_PLANNER:
		if !json.Valid(body.Payload) {
			p.reject = stream.Reject("payload is not JSON")
			return p
		}
		p.subject, p.field, _ = eventOf(body.Kind, body.DataType)
	default:
		p.reject = stream.Reject("kind %s is not a resource change", body.Kind)
	}
	return p
}

// eventOf is the subject suffix of the event a received change of kind k
// and data type dt is published on, and the body's field that carries the
// payload; ok false for a kind that has no event.
func eventOf(k pb.Kind, dt string) (subject, field string, ok bool) {
	switch k {
	case pb.Kind_KIND_RESOURCE_CREATE:
		return SubjectResource + ".created." + dt, "resource", true
	case pb.Kind_KIND_RESOURCE_UPDATE:
		return SubjectResource + ".updated." + dt, "resource", true
	case pb.Kind_KIND_RESOURCE_DELETE:
		return SubjectResource + ".deleted." + dt, "resource", true
	case pb.Kind_KIND_CONSIDERS:
		return SubjectConsiders + "." + dt, "payload", true
	case pb.Kind_KIND_PLANNER:
		return SubjectPlanner + "." + dt, "payload", true
	}
	return "", "", false
}

// event encodes the published body by hand: the payload is JSON already.
func (p *prepared) event(version, local uint64, payload []byte) []byte {
	b := make([]byte, 0, len(payload)+len(p.origin)+96)
	b = append(b, `{"origin":"`...)
	b = append(b, p.origin...)
	b = append(b, `","version":`...)
	b = strconv.AppendUint(b, version, 10)
	b = append(b, `,"local_version":`...)
	b = strconv.AppendUint(b, local, 10)
	b = append(b, `,"`...)
	b = append(b, p.field...)
	b = append(b, `":`...)
	b = append(b, payload...)
	return append(b, '}')
}

func isResource(k pb.Kind) bool {
	return k == pb.Kind_KIND_RESOURCE_CREATE || k == pb.Kind_KIND_RESOURCE_UPDATE || k == pb.Kind_KIND_RESOURCE_DELETE
}

// advanceChain moves an origin's held-up-to mark over a change whose
// predecessor it covers: every change up to the mark is held, and the
// origin made no resource change between the predecessor and this one, so
// every change up to this one is held. (The predecessor is the mark itself
// but for a node restored from an older copy, whose first changes name an
// older predecessor.) A change that arrives after a gap leaves the mark
// where it is; sync fetches from the mark and the chain closes.
func advanceChain(tx *store.Txn, o peer.ID, body *pb.Body) error {
	held, err := tx.CounterValue(ChainCounter(o))
	if err != nil {
		return err
	}
	if body.PrevVersion <= held && body.OriginVersion > held {
		tx.SetCounter(ChainCounter(o), body.OriginVersion)
	}
	return nil
}

// collides refuses a second create of one resource by one origin: the row
// holds an earlier create's resource that no delete ended. An origin makes
// that only when its store lost the first (restored from an older copy and
// written to before a partner told it what it had): the first acknowledged
// content stays, the later is refused for good and said at ERROR.
func (s *Service) collides(o peer.ID, p *prepared, body *pb.Body, cur *storepb.Resource) error {
	if body.Kind != pb.Kind_KIND_RESOURCE_CREATE || cur == nil || cur.Deleted || cur.OriginVersion >= body.OriginVersion {
		return nil
	}
	s.log.Error("refused a second create of a resource its origin created before: the first is kept (was the origin's store restored from an older copy?)",
		"origin", o, "data_type", body.DataType, "id", p.id, "first_version", cur.OriginVersion, "refused_version", body.OriginVersion)
	return stream.RejectKeeping("conflict: %s %q was created by %s at version %d; a second create at version %d is refused", body.DataType, p.id, p.origin, cur.OriginVersion, body.OriginVersion)
}

// Held is how far this node holds every resource change of origin.
func (s *Service) Held(o peer.ID) (uint64, error) { return s.st.Counter(ChainCounter(o)) }

// idString caches the text form of peer ids (base58 is not free).
func (s *Service) idString(p peer.ID) string {
	if v, ok := s.ids.Load(p); ok {
		return v.(string)
	}
	str := p.String()
	s.ids.Store(p, str)
	return str
}

// Apply commits a received change once and publishes it after the commit.
func (s *Service) Apply(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error) {
	return s.apply(tx, in, true)
}

// ApplyChange applies one change of origin that came through catch-up. The
// envelope must have been verified against the body's origin.
func (s *Service) ApplyChange(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error) {
	return s.apply(tx, in, false)
}

// ctrSynced + origin is the highest origin version sync ever applied here.
const ctrSynced = "resource_synced/"

// apply commits one change. On the delivery path (viaLink) a change beyond
// anything sync brought cannot be held already: the lane's position turns
// away the link's own resends. Such a fresh change needs no reads to find
// duplicates or a newer row, which keeps the store's writer lean.
func (s *Service) apply(tx *store.Txn, in *stream.Inbound, viaLink bool) (pb.AckStatus, error) {
	body := in.Body
	o := peerOf(body)
	if isResource(body.Kind) {
		if err := advanceChain(tx, o, body); err != nil {
			return 0, err
		}
	}
	synced, err := tx.CounterValue(originNames(o).synced)
	if err != nil {
		return 0, err
	}
	fresh := viaLink && body.OriginVersion > synced
	if !fresh {
		if held, err := stream.CheckHeld(tx, o, body.OriginVersion, in.Hash); err != nil || held {
			return pb.AckStatus_ACK_STATUS_DUPLICATE, err
		}
	}
	p, _ := in.Prepared.(*prepared)
	if p == nil {
		p = s.prepare(body)
	}
	if p.reject != nil {
		// Refused for good, but held as far as the chain goes: the mark
		// moved past it, so catch-up does not fetch it again and again.
		return 0, stream.RejectKeeping("%v", p.reject)
	}
	var cur *storepb.Resource
	looked := p.field == "resource" && (!fresh || body.Kind == pb.Kind_KIND_RESOURCE_CREATE)
	if looked {
		// A fresh create of an id the filter never saw (the common case)
		// collides with nothing and needs no read.
		if fresh {
			cur, err = s.heldRow(tx, o, body.DataType, p.id)
		} else {
			cur, err = tx.GetResource(body.DataType, o, p.id)
		}
		if errors.Is(err, store.ErrNotFound) {
			cur, err = nil, nil
		}
		if err != nil {
			return 0, err
		}
		if err := s.collides(o, p, body, cur); err != nil {
			return 0, err
		}
	}
	ver, err := in.AppendTo(tx)
	if err != nil {
		return 0, err
	}
	if !viaLink && body.OriginVersion > synced {
		tx.SetCounter(originNames(o).synced, body.OriginVersion)
	}
	if p.field == "resource" {
		// Keep the newest state: a change that arrives late (through sync,
		// after a later one) is kept in the change log but does not roll
		// back the row, and apps are not told of it.
		if cur != nil && cur.OriginVersion >= body.OriginVersion {
			s.markQuiet(tx, ver)
			return pb.AckStatus_ACK_STATUS_APPLIED, nil
		}
		if looked && cur == nil { // a new row (a fresh update's row is known)
			s.noteHeld(o, body.DataType, p.id)
		}
		tx.PutResource(&storepb.Resource{DataType: body.DataType, Id: p.id, Creator: body.Origin, OriginVersion: body.OriginVersion,
			Version: ver, Deleted: body.Kind == pb.Kind_KIND_RESOURCE_DELETE, UpdatedAt: tx.Now().UnixNano()})
	}
	ev := p.event(body.OriginVersion, ver, body.Payload)
	subject := p.subject
	if s.tail != nil {
		tx.OnCommit(func() {
			s.pub.PublishRaw(subject, ev)
			s.tail.Add(ver, subject, ev)
		})
	} else {
		tx.OnCommit(func() { s.pub.PublishRaw(subject, ev) })
	}
	return pb.AckStatus_ACK_STATUS_APPLIED, nil
}

package propagate

import (
	"encoding/json"
	"errors"
	"fmt"

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

// Apply commits a received change once and publishes it after the commit.
func (s *Service) Apply(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error) {
	return s.ApplyChange(tx, in.Envelope, in.Body)
}

// ApplyChange applies one verified change of origin; sync uses it too.
// The envelope must have been verified against the body's origin.
func (s *Service) ApplyChange(tx *store.Txn, env *pb.Envelope, body *pb.Body) (pb.AckStatus, error) {
	o := peerOf(body)
	if _, dup, err := tx.HasOrigin(o, body.OriginVersion); err != nil || dup {
		return pb.AckStatus_ACK_STATUS_DUPLICATE, err
	}
	if !ValidDataType(body.DataType) {
		return 0, stream.Reject("data type %q is not valid", body.DataType)
	}
	switch body.Kind {
	case pb.Kind_KIND_RESOURCE_CREATE, pb.Kind_KIND_RESOURCE_UPDATE, pb.Kind_KIND_RESOURCE_DELETE:
		return s.applyResource(tx, env, body)
	case pb.Kind_KIND_CONSIDERS, pb.Kind_KIND_PLANNER:
		if !json.Valid(body.Payload) {
			return 0, stream.Reject("payload is not JSON")
		}
		ver, _, err := tx.AppendReceived(o, body.OriginVersion, env)
		if err != nil {
			return 0, err
		}
		subj := SubjectConsiders
		if body.Kind == pb.Kind_KIND_PLANNER {
			subj = SubjectPlanner
		}
		ev := PayloadEvent{Origin: o.String(), Version: body.OriginVersion, LocalVersion: ver, Payload: body.Payload}
		tx.OnCommit(func() { s.pub.Publish(subj+"."+body.DataType, ev) })
		return pb.AckStatus_ACK_STATUS_APPLIED, nil
	}
	return 0, stream.Reject("kind %s is not a resource change", body.Kind)
}

func (s *Service) applyResource(tx *store.Txn, env *pb.Envelope, body *pb.Body) (pb.AckStatus, error) {
	o := peerOf(body)
	obj, err := jsonObject(body.Payload)
	if err != nil {
		return 0, stream.Reject("%v", err)
	}
	id, err := resourceID(obj)
	if err != nil {
		return 0, stream.Reject("%v", err)
	}
	var creator string
	if err := json.Unmarshal(obj["creator_id"], &creator); err != nil || creator != o.String() {
		return 0, stream.Reject("resource %q: creator_id is not its origin %s", id, o)
	}
	ver, _, err := tx.AppendReceived(o, body.OriginVersion, env)
	if err != nil {
		return 0, err
	}
	cur, err := tx.GetResource(body.DataType, o, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return 0, err
	}
	// Keep the newest state: a change that arrives late (through sync, after
	// a later one) is kept in the change log but does not roll back the row.
	if cur == nil || cur.OriginVersion < body.OriginVersion {
		tx.PutResource(&storepb.Resource{DataType: body.DataType, Id: id, Creator: []byte(o), OriginVersion: body.OriginVersion,
			Version: ver, Deleted: body.Kind == pb.Kind_KIND_RESOURCE_DELETE, Json: body.Payload, UpdatedAt: tx.Now().UnixNano()})
	}
	verb := map[pb.Kind]string{pb.Kind_KIND_RESOURCE_CREATE: "created", pb.Kind_KIND_RESOURCE_UPDATE: "updated",
		pb.Kind_KIND_RESOURCE_DELETE: "deleted"}[body.Kind]
	ev := ResourceEvent{Origin: o.String(), Version: body.OriginVersion, LocalVersion: ver, Resource: body.Payload}
	tx.OnCommit(func() { s.pub.Publish(SubjectResource+"."+verb+"."+body.DataType, ev) })
	return pb.AckStatus_ACK_STATUS_APPLIED, nil
}

// Package protocols holds what Ferry nodes agree on over the wire: protocol
// ids, frame limits, the varint-delimited framing, and the signing and
// verification of envelopes. It does no networking and keeps no state beyond a
// verification cache.
package protocols

import (
	"time"

	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/ferrynet/ferry/protocols/pb"
)

// Peer protocol ids. They are versioned on their own, not with Ferry's release.
const (
	// The delivery protocols carry Batch frames answered by Reply frames
	// (3.0.0: compact envelopes, a tree's proof once per batch; 2.0.0 sent
	// every envelope with its audit path and signature; 1.0.0 carried one
	// Message per frame, each acked alone).
	ResourceCreate   protocol.ID = "/ferry/resource/create/3.0.0"
	ResourceUpdate   protocol.ID = "/ferry/resource/update/3.0.0"
	ResourceDelete   protocol.ID = "/ferry/resource/delete/3.0.0"
	ResourceConsider protocol.ID = "/ferry/resource/considers/3.0.0"
	Planner          protocol.ID = "/ferry/planner/3.0.0"
	Search           protocol.ID = "/ferry/search/1.0.0"
	Sync             protocol.ID = "/ferry/sync/1.0.0"
	Hello            protocol.ID = "/ferry/hello/1.0.0"
	// Applied carries a member's AppliedReport to the reviewer.
	Applied protocol.ID = "/ferry/applied/1.0.0"
	// AppliedRelay carries one AppliedRelay frame, member-signed reports,
	// from a member to a neighbour on its way to the review group, or to a
	// reviewer (spread/relay.go).
	AppliedRelay protocol.ID = "/ferry/applied-relay/1.0.0"
	// Members answers a joining node with every membership record held.
	Members protocol.ID = "/ferry/members/1.0.0"
	// Trace asks a member where one change is on it: one TraceQuery, one
	// TraceAnswer (admin/trace.go).
	Trace protocol.ID = "/ferry/trace/1.0.0"
	// ReviewRaft carries the review group's consensus log between its
	// members: hashicorp/raft's NetworkTransport RPCs (msgpack) on
	// long-lived streams that raft opens and pools like TCP connections
	// (reviewgroup/transport.go).
	ReviewRaft protocol.ID = "/ferry/review-raft/1.0.0"
	// ReviewForward carries one ForwardRequest and one ForwardReply between
	// members of the review group: a command a follower hands to the
	// leader, or a member's status (reviewgroup/forward.go).
	ReviewForward protocol.ID = "/ferry/review-forward/1.0.0"

	// DHTPrefix is the Kademlia protocol prefix; the DHT speaks /ferry/kad/1.0.0.
	DHTPrefix protocol.ID = "/ferry"
)

// SearchTopic is the gossipsub topic of a network's search queries.
func SearchTopic(network string) string { return "/ferry/" + network + "/search/1.0.0" }

// DecisionsTopic is the gossipsub topic the reviewer publishes its
// decisions on (DecisionNews).
func DecisionsTopic(network string) string { return "/ferry/" + network + "/decisions/1.0.0" }

// MembersTopic is the gossipsub topic of a network's signed membership
// records.
func MembersTopic(network string) string { return "/ferry/" + network + "/members/1.0.0" }

// Resource-manager service names, one per protocol family.
const (
	ServiceDelivery = "ferry.delivery"
	ServiceSearch   = "ferry.search"
	ServiceSync     = "ferry.sync"
	ServiceHello    = "ferry.hello"
	ServiceSpread   = "ferry.spread"
	ServiceMembers  = "ferry.members"
	ServiceTrace    = "ferry.trace"
	// ServiceReviewGroup holds both review group protocols.
	ServiceReviewGroup = "ferry.reviewgroup"
)

// Limits and timeouts shared by both ends of a stream.
const (
	// DefaultMaxMessageBytes is limits.max_message_bytes when unset.
	DefaultMaxMessageBytes = 1 << 20
	// FrameOverhead is what a frame adds around one envelope's payload: the
	// body's other fields, the envelope's leaf index, tree size, audit path
	// and signature, and the Batch (epoch, lane, after, head sequence) or
	// the sync and search frames around it. A frame may be this much larger
	// than the largest payload.
	FrameOverhead = 4096
	// HelloTimeout bounds the hello exchange on a new connection.
	HelloTimeout = 10 * time.Second
	// WriteTimeout bounds one write on a long-lived stream.
	WriteTimeout = 30 * time.Second
	// IdleTimeout closes an inbound long-lived stream nothing arrives on.
	IdleTimeout = 10 * time.Minute
	// MaxReplyBytes bounds a delivery Reply frame (a few numbers, and the
	// reasons of refused entries).
	MaxReplyBytes = 1 << 20
)

// ProtocolFor returns the stream protocol that carries an envelope kind.
// Review messages ride the resource protocol of their action: insert on
// create, update on update, delete on delete.
func ProtocolFor(kind pb.Kind, reviewType string) (protocol.ID, bool) {
	switch kind {
	case pb.Kind_KIND_RESOURCE_CREATE:
		return ResourceCreate, true
	case pb.Kind_KIND_RESOURCE_UPDATE:
		return ResourceUpdate, true
	case pb.Kind_KIND_RESOURCE_DELETE:
		return ResourceDelete, true
	case pb.Kind_KIND_CONSIDERS:
		return ResourceConsider, true
	case pb.Kind_KIND_PLANNER:
		return Planner, true
	case pb.Kind_KIND_REVIEW_REQUEST, pb.Kind_KIND_REVIEW_DECISION:
		switch reviewType {
		case "insert":
			return ResourceCreate, true
		case "update":
			return ResourceUpdate, true
		case "delete":
			return ResourceDelete, true
		}
	}
	return "", false
}

// KindAllowed reports whether an envelope kind may arrive on a protocol.
func KindAllowed(p protocol.ID, kind pb.Kind) bool {
	switch p {
	case ResourceCreate:
		return kind == pb.Kind_KIND_RESOURCE_CREATE || kind == pb.Kind_KIND_REVIEW_REQUEST || kind == pb.Kind_KIND_REVIEW_DECISION
	case ResourceUpdate:
		return kind == pb.Kind_KIND_RESOURCE_UPDATE || kind == pb.Kind_KIND_REVIEW_REQUEST || kind == pb.Kind_KIND_REVIEW_DECISION
	case ResourceDelete:
		return kind == pb.Kind_KIND_RESOURCE_DELETE || kind == pb.Kind_KIND_REVIEW_REQUEST || kind == pb.Kind_KIND_REVIEW_DECISION
	case ResourceConsider:
		return kind == pb.Kind_KIND_CONSIDERS
	case Planner:
		return kind == pb.Kind_KIND_PLANNER
	}
	return false
}

// DeliveryProtocols are the protocols that carry Batches answered by Replies.
var DeliveryProtocols = []protocol.ID{ResourceCreate, ResourceUpdate, ResourceDelete, ResourceConsider, Planner}

// ProtocolCode is a delivery protocol's one-byte code (stored in the
// delivery index instead of the id); 0 for any other protocol.
func ProtocolCode(id protocol.ID) byte {
	for i, p := range DeliveryProtocols {
		if p == id {
			return byte(i + 1)
		}
	}
	return 0
}

// ProtocolByCode is the delivery protocol with a code ("" for none).
func ProtocolByCode(c byte) protocol.ID {
	if c == 0 || int(c) > len(DeliveryProtocols) {
		return ""
	}
	return DeliveryProtocols[c-1]
}

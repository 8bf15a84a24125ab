package node

import (
	"context"
	"encoding/json"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/admin"
)

// What the operator sees is package admin's; these names keep the node's
// API (cmd/ferry, tests) as it was.

// The admin API's file and header.
const (
	AdminAddrFile = admin.AdminAddrFile
	PeerHeader    = admin.PeerHeader
)

// Types of the admin API's answers.
type (
	Status        = admin.Status
	GroupStatus   = admin.GroupStatus
	PeerInfo      = admin.PeerInfo
	ResourceRow   = admin.ResourceRow
	RequestDetail = admin.RequestDetail
	TraceReport   = admin.TraceReport
	TraceNode     = admin.TraceNode
	Event         = admin.Event
	AckQuery      = admin.AckQuery
	AckPage       = admin.AckPage
	AckRow        = admin.AckRow
	DeliveryState = admin.DeliveryState
	MemberRow     = admin.MemberRow
)

// Acknowledgement rows: states, kinds and page limits.
const (
	AckPending      = admin.AckPending
	AckSended       = admin.AckSended
	AckRejected     = admin.AckRejected
	AckClosed       = admin.AckClosed
	MaxAckPage      = admin.MaxAckPage
	DefaultAckLimit = admin.DefaultAckLimit
	MaxAckLimit     = admin.MaxAckLimit
	MaxPageLimit    = admin.MaxPageLimit
)

// What acknowledgement rows may be filtered by.
var (
	AckStates = admin.AckStates
	AckKinds  = admin.AckKinds
)

// Event types.
const (
	EventCommitted = admin.EventCommitted
	EventAcked     = admin.EventAcked
	EventRejected  = admin.EventRejected
	EventApplied   = admin.EventApplied
	EventSubmitted = admin.EventSubmitted
	EventDecided   = admin.EventDecided
	EventPublished = admin.EventPublished
)

// AdminAddr is the admin API's address ("" before Start).
func (n *Node) AdminAddr() string { return n.admin.Addr() }

// Status reports the node's state.
func (n *Node) Status() Status { return n.admin.Status() }

// PeerInfos lists every peer the node knows.
func (n *Node) PeerInfos() []PeerInfo { return n.admin.PeerInfos() }

// Acks lists acknowledgement rows (admin.Server.Acks).
func (n *Node) Acks(q AckQuery) (AckPage, error) { return n.admin.Acks(q) }

// Deliveries reports every receiver lane that has had something to receive.
func (n *Node) Deliveries() []DeliveryState { return n.admin.Deliveries() }

// Trace follows the change (origin, version) across the network.
func (n *Node) Trace(ctx context.Context, origin peer.ID, version uint64) (TraceReport, error) {
	return n.admin.Trace(ctx, origin, version)
}

// Rows lists every row of a shared table.
func (n *Node) Rows(table string) ([]json.RawMessage, error) { return n.admin.Rows(table) }

// Resources lists every resource of a data type ("" for all) held here.
func (n *Node) Resources(dataType string) ([]ResourceRow, error) { return n.admin.Resources(dataType) }

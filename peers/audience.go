package peers

import (
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/stream"
)

// The peer book is the stream layer's Audience: who receives the broadcast
// entries of a lane. Resources go to partners; decisions, which only the
// reviewer makes, to every member.

// Receives reports whether p receives lane l's broadcast entries.
func (b *Book) Receives(p peer.ID, l stream.Lane) bool {
	switch l {
	case stream.LaneResource:
		return b.IsPartner(p)
	case stream.LaneDecision:
		return p != b.self && b.self == b.reviewer && b.IsMember(p)
	}
	return false
}

// Receivers lists every receiver of lane l's broadcast entries.
func (b *Book) Receivers(l stream.Lane) []peer.ID {
	switch l {
	case stream.LaneResource:
		return b.Partners()
	case stream.LaneDecision:
		if b.self == b.reviewer {
			return b.Members()
		}
	}
	return nil
}

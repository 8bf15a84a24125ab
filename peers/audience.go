package peers

import (
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/stream"
)

// The peer book is the stream layer's Audience: who receives the broadcast
// entries of a lane. Resources go to partners; decisions, which only the
// reviewer makes, to every member (on a review group, every member but the
// group's other reviewers: they apply the group's log, not each other's
// copies).

// Receives reports whether p receives lane l's broadcast entries.
func (b *Book) Receives(p peer.ID, l stream.Lane) bool {
	switch l {
	case stream.LaneResource:
		return b.IsPartner(p)
	case stream.LaneDecision:
		return p != b.self && b.self == b.reviewer && b.IsMember(p) && !b.inGroupOfMany(p)
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
			if len(b.group) < 2 {
				return b.Members()
			}
			var out []peer.ID
			for _, p := range b.Members() {
				if !b.inGroupOfMany(p) {
					out = append(out, p)
				}
			}
			return out
		}
	}
	return nil
}

// inGroupOfMany reports whether p is a reviewer of a review group of more
// than one.
func (b *Book) inGroupOfMany(p peer.ID) bool { return len(b.group) > 1 && b.InReviewGroup(p) }

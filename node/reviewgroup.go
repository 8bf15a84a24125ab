package node

import (
	"fmt"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/reviewgroup"
)

// RaftDir is the review group's directory in the data directory
// (<home>/data/raft/): its log, stable store and snapshots.
const RaftDir = "raft"

// buildReviewGroup builds the review group's log on a reviewer of a group
// of more than one (`reviewers`), with the review service's state machine,
// and attaches it to the service: from then on every decision and approval
// is a command of the group. A member, and a lone reviewer, run none.
//
// The founder (`reviewer`, else reviewers[0]) is the only one that
// bootstraps: with every listed reviewer on a fresh network, alone when its
// store holds a ledger already (a lone reviewer turned founder), which the
// others then receive in a snapshot when `ferry reviewers add` adds them.
func (n *Node) buildReviewGroup(home Home) error {
	group := n.book.ReviewGroup()
	if len(group) < 2 || !n.book.InReviewGroup(n.id) {
		return nil
	}
	// The founder: `reviewer` when set, else reviewers[0]. Only it
	// bootstraps; the others wait for the group to reach them.
	founder, err := peer.Decode(n.cfg.ReviewerID())
	if err != nil {
		return fmt.Errorf("review group: the founder %q: %w", n.cfg.ReviewerID(), err)
	}
	prior := false
	if founder == n.id {
		if prior, err = n.review.HoldsLedger(); err != nil {
			return fmt.Errorf("review group: read the ledger: %w", err)
		}
	}
	rc := reviewgroup.Config{Host: n.host, Dir: filepath.Join(home.DataPath(), RaftDir), Self: n.id,
		Bootstrap: group, Founder: founder, PriorState: prior, FSM: n.review.GroupFSM(), Allowed: n.book.InReviewGroup, Name: n.book.Name,
		Logger: n.log, Registry: n.reg, Timing: n.opts.ReviewGroupTiming,
		MaxCommandBytes: 2*n.cfg.Limits.MaxMessageBytes + reviewgroup.DefaultMaxCommandBytes/2}
	if n.opts.ReviewGroupTune != nil {
		n.opts.ReviewGroupTune(&rc)
	}
	g, err := reviewgroup.New(rc)
	if err != nil {
		return err
	}
	n.group = g
	n.review.AttachGroup(g)
	return nil
}

// ReviewGroup is the review group's log on this node (nil on a member or a
// lone reviewer).
func (n *Node) ReviewGroup() *reviewgroup.Group { return n.group }

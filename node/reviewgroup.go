package node

import (
	"path/filepath"

	"github.com/ferrynet/ferry/reviewgroup"
)

// RaftDir is the review group's directory in the data directory
// (<home>/data/raft/): its log, stable store and snapshots.
const RaftDir = "raft"

// buildReviewGroup builds the review group's log on a reviewer of a group
// of more than one (`reviewers`), with the review service's state machine,
// and attaches it to the service: from then on every decision and approval
// is a command of the group. A member, and a lone reviewer, run none.
func (n *Node) buildReviewGroup(home Home) error {
	group := n.book.ReviewGroup()
	if len(group) < 2 || !n.book.InReviewGroup(n.id) {
		return nil
	}
	g, err := reviewgroup.New(reviewgroup.Config{Host: n.host, Dir: filepath.Join(home.DataPath(), RaftDir), Self: n.id,
		Bootstrap: group, FSM: n.review.GroupFSM(), Allowed: n.book.InReviewGroup, Name: n.book.Name,
		Logger: n.log, Registry: n.reg, Timing: n.opts.ReviewGroupTiming,
		MaxCommandBytes: 2*n.cfg.Limits.MaxMessageBytes + reviewgroup.DefaultMaxCommandBytes/2})
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

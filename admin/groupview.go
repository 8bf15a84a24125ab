package admin

// groupview.go: the review group as `ferry status`, GET /api/v1/status and
// the console's header show it. Asking every reviewer for its status is a
// stream to each over the group's forward protocol, and every open console
// asks every 5 s; so the answer is kept for groupViewTTL and one fetch at a
// time serves every caller that arrives while it runs.
//
// Why a cache and not raft's own numbers: hashicorp/raft v1.7.2 keeps the
// leader's replication state per follower (its match index, its last
// contact) private, and Raft.Stats() reports only this member's own
// indexes; a follower's applied index (how far its state machine, which
// signs and stores decisions, has got) is known only by asking it.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ferrynet/ferry/reviewgroup"
)

// groupViewTTL is how long one view of the group is served: long enough
// that consoles polling every 5 s and `ferry status` callers in the same
// second share one fan-out, short enough that a leader change shows within
// a poll.
const groupViewTTL = time.Second

// groupStatusWait bounds how long a fetch waits for the other reviewers.
const groupStatusWait = 2 * time.Second

// GroupStatus is the review group seen from one of its reviewers: the
// leader it knows and each reviewer with its own state, asked over the
// group's forward protocol (Error when it did not answer). It is shared by
// the callers of one groupViewTTL: read it, never change it.
type GroupStatus struct {
	Leader     string               `json:"leader,omitempty"` // peer id; empty: no leader known
	LeaderName string               `json:"leader_name,omitempty"`
	Servers    []reviewgroup.Server `json:"servers"`
	Error      string               `json:"error,omitempty"` // why the servers are missing
	// AsOf is when the reviewers were asked (the view is at most
	// groupViewTTL old when served).
	AsOf time.Time `json:"as_of"`
	// Voters is how many voters the group's configuration has; Reachable
	// how many of them answered (this node included), Quorum how many
	// make a majority.
	Voters    int `json:"voters"`
	Reachable int `json:"reachable"`
	Quorum    int `json:"quorum"`
	// Warning says why the group cannot decide from here: no leader, or
	// this node is cut off from a majority. Empty when it can.
	Warning string `json:"warning,omitempty"`
}

// fetchGroupStatus asks every reviewer of the group (at most
// groupStatusWait).
func (srv *Server) fetchGroupStatus() *GroupStatus {
	g := srv.group
	gs := &GroupStatus{AsOf: time.Now().UTC()}
	if l, ok := g.Leader(); ok {
		gs.Leader, gs.LeaderName = l.String(), srv.book.Name(l)
	}
	ctx, cancel := context.WithTimeout(srv.ctx, groupStatusWait)
	defer cancel()
	servers, err := g.Servers(ctx)
	if err != nil {
		gs.Error = err.Error()
	}
	gs.Servers = servers
	gs.judge()
	return gs
}

// judge counts the voters that answered and sets Warning: this node is cut
// off when fewer than a majority of the voters answered it (itself
// included), and the group has no leader when none is known here.
func (gs *GroupStatus) judge() {
	var reached []string
	var missing []string
	for _, sv := range gs.Servers {
		if sv.Suffrage != "Voter" {
			continue
		}
		gs.Voters++
		if sv.Status != nil {
			gs.Reachable++
			reached = append(reached, sv.Name)
		} else {
			missing = append(missing, sv.Name)
		}
	}
	gs.Quorum = gs.Voters/2 + 1
	switch {
	case gs.Voters == 0:
		gs.Warning = "no leader: the review group's configuration is not known here"
		if gs.Error != "" {
			gs.Warning += " (" + gs.Error + ")"
		}
	case gs.Reachable < gs.Quorum:
		gs.Warning = fmt.Sprintf("cut off: this node reaches %d of %d reviewers (%s), a majority is %d; it cannot decide (not answering: %s)",
			gs.Reachable, gs.Voters, strings.Join(reached, ", "), gs.Quorum, strings.Join(missing, ", "))
	case gs.Leader == "":
		gs.Warning = "no leader: the review group is electing one; decisions wait for it"
	}
}

// groupView serves one GroupStatus for ttl, fetched by one caller at a
// time while the others wait for its answer.
type groupView struct {
	fetch func() *GroupStatus
	ttl   time.Duration
	now   func() time.Time

	mu       sync.Mutex
	last     *GroupStatus
	at       time.Time     // when last was fetched
	inflight chan struct{} // closed when the fetch in flight ends; nil: none
	waiting  int           // callers waiting for the fetch in flight (for tests)
}

func newGroupView(fetch func() *GroupStatus, now func() time.Time) *groupView {
	return &groupView{fetch: fetch, ttl: groupViewTTL, now: now}
}

// get returns the view: the last one while it is younger than ttl, else
// the one the fetch in flight brings, else a new fetch's. Nil on a node
// that is not a reviewer of a group.
func (v *groupView) get() *GroupStatus {
	if v == nil {
		return nil
	}
	v.mu.Lock()
	if v.last != nil && v.now().Sub(v.at) < v.ttl {
		gs := v.last
		v.mu.Unlock()
		return gs
	}
	if ch := v.inflight; ch != nil {
		v.waiting++
		v.mu.Unlock()
		<-ch // the fetch is bounded (groupStatusWait)
		v.mu.Lock()
		v.waiting--
		gs := v.last
		v.mu.Unlock()
		return gs
	}
	ch := make(chan struct{})
	v.inflight = ch
	v.mu.Unlock()
	var gs *GroupStatus
	defer func() {
		v.mu.Lock()
		v.last, v.at, v.inflight = gs, v.now(), nil
		v.mu.Unlock()
		close(ch)
	}()
	gs = v.fetch()
	return gs
}

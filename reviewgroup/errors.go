package reviewgroup

import (
	"fmt"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
)

// codeNotLeader is the forward protocol's answer of a member that is not
// the leader: nothing was done, ask the leader.
const codeNotLeader = "not_leader"

// sentinels maps the Ferry error codes back to their sentinel errors, so an
// error that crossed the forward protocol still satisfies errors.Is.
var sentinels = map[string]error{
	ferry.CodeBadRequest:    ferry.ErrBadRequest,
	ferry.CodeUnknownAction: ferry.ErrUnknownAction,
	ferry.CodeNotOwner:      ferry.ErrNotOwner,
	ferry.CodeTooLarge:      ferry.ErrTooLarge,
	ferry.CodeNotFound:      ferry.ErrNotFound,
	ferry.CodeConflict:      ferry.ErrConflict,
	ferry.CodeForbidden:     ferry.ErrForbidden,
	ferry.CodeUnavailable:   ferry.ErrUnavailable,
	ferry.CodeCorrupt:       ferry.ErrCorrupt,
}

// RemoteError is an error a member answered over the forward protocol: its
// message, and the sentinel of its code.
type RemoteError struct {
	Code    string // a Ferry error code (ferry.Code)
	Message string
	From    peer.ID // the member that answered
}

func (e *RemoteError) Error() string { return e.Message }

// Unwrap is the sentinel error of the code (ferry.ErrUnavailable for a code
// this node does not know).
func (e *RemoteError) Unwrap() error {
	if s, ok := sentinels[e.Code]; ok {
		return s
	}
	return ferry.ErrUnavailable
}

// remoteError is the error of a reply's code and message.
func remoteError(code, msg string, from peer.ID) error {
	return &RemoteError{Code: code, Message: msg, From: from}
}

// uncertain is the error of an operation that may or may not have been
// committed.
func (g *Group) uncertain(what string, err error) error {
	return fmt.Errorf("%w: review group %s: %s did not finish: %w; it may or may not have been committed (retry it with the same id)",
		ferry.ErrUnavailable, g.groupName(), what, err)
}

// noLeader is the answer of a member that found no reachable leader: it
// names the group, this member, and whom it can reach.
func (g *Group) noLeader(last peer.ID, why error) error {
	var reach, unreach []string
	window := 2 * g.cfg.Timing.ElectionTimeout
	for _, p := range g.voters() {
		if p == g.cfg.Self {
			continue
		}
		if at := g.layer.lastHeard(p); !at.IsZero() && time.Since(at) < window {
			reach = append(reach, g.cfg.Name(p))
		} else {
			unreach = append(unreach, g.cfg.Name(p))
		}
	}
	list := func(s []string) string {
		if len(s) == 0 {
			return "none"
		}
		return strings.Join(s, ", ")
	}
	msg := fmt.Sprintf("review group %s has no leader reachable from %s (reachable: %s; unreachable: %s)",
		g.groupName(), g.cfg.Name(g.cfg.Self), list(reach), list(unreach))
	if last != "" && last != g.cfg.Self {
		msg += fmt.Sprintf("; the last leader it knew, %s, does not answer", g.cfg.Name(last))
	}
	msg += "; a majority of the group must be up and connected to decide"
	if why != nil {
		msg += " (last try: " + why.Error() + ")"
	}
	return fmt.Errorf("%w: %s", ferry.ErrUnavailable, msg)
}

// groupName names the group by its voters: "A, B, C".
func (g *Group) groupName() string {
	vs := g.voters()
	names := make([]string, len(vs))
	for i, p := range vs {
		names[i] = g.cfg.Name(p)
	}
	if len(names) == 0 {
		return "(no voters known)"
	}
	return strings.Join(names, ", ")
}

// errNotStarted answers calls before Start.
var errNotStarted = fmt.Errorf("%w: review group not started", ferry.ErrUnavailable)

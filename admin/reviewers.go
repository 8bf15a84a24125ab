package admin

// reviewers.go: the review group's membership (`ferry reviewers`,
// /api/v1/reviewers), on a reviewer of a group: list the group's
// configuration with each reviewer's state, add a reviewer that every
// node's `reviewers` lists (raft's AddVoter, on the leader), remove one
// (RemoveServer; a removed leader steps down).

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
)

// reviewersWait bounds a change of the group (below the CLI's 60 s): an
// added reviewer counts in the quorum at once, so the change commits once
// it caught up from the leader's snapshot; one that takes longer is
// answered unavailable and may still commit (`ferry reviewers list`).
const reviewersWait = 55 * time.Second

func (srv *Server) reviewerRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/reviewers", func(w http.ResponseWriter, _ *http.Request) {
		if err := srv.noGroup(); err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"review_group": srv.fetchGroupStatus()})
	})
	mux.HandleFunc("POST /api/v1/reviewers", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			PeerID string `json:"peer_id"`
		}
		if err := srv.decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		srv.reviewerCall(w, r, req.PeerID, true)
	})
	mux.HandleFunc("DELETE /api/v1/reviewers/{id}", func(w http.ResponseWriter, r *http.Request) {
		srv.reviewerCall(w, r, r.PathValue("id"), false)
	})
}

// noGroup is the error of a node that runs no review group.
func (srv *Server) noGroup() error {
	if srv.group != nil {
		return nil
	}
	if srv.review.IsReviewer() {
		return fmt.Errorf("%w: there is no review group here: this node is the lone reviewer (`reviewer`); to make a group, list the reviewers in `reviewers` "+
			"in every node's ferry.yaml (this node first, or named in `reviewer`), restart them, then add the others with `ferry reviewers add`", ferry.ErrForbidden)
	}
	return fmt.Errorf("%w: there is no review group here: this node is not a reviewer of a group (`reviewers`); run the command on one of its reviewers", ferry.ErrForbidden)
}

func (srv *Server) reviewerCall(w http.ResponseWriter, r *http.Request, id string, add bool) {
	if err := srv.noGroup(); err != nil {
		fail(w, err)
		return
	}
	p, err := peer.Decode(strings.TrimSpace(id))
	if err != nil {
		fail(w, badReq("%q is not a peer id", id))
		return
	}
	name := srv.book.Name(p)
	ctx, cancel := context.WithTimeout(r.Context(), reviewersWait)
	defer cancel()
	if add {
		if !srv.book.InReviewGroup(p) {
			fail(w, badReq("%s is not in this node's `reviewers`: add it to `reviewers` in every node's ferry.yaml and restart them first", name))
			return
		}
		err = srv.group.AddVoter(ctx, p)
	} else {
		if !slices.Contains(srv.group.Voters(), p) {
			fail(w, fmt.Errorf("%w: %s is not a reviewer of the group (%s)", ferry.ErrNotFound, name, srv.votersLine()))
			return
		}
		err = srv.group.RemoveServer(ctx, p)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	if err != nil {
		fail(w, err)
		return
	}
	ok(w, map[string]any{"peer_id": p.String(), "name": name, "reviewer": add, "voters": srv.voterIDs()})
}

func (srv *Server) voterIDs() []string {
	out := []string{}
	for _, v := range srv.group.Voters() {
		out = append(out, v.String())
	}
	return out
}

func (srv *Server) votersLine() string {
	var names []string
	for _, v := range srv.group.Voters() {
		names = append(names, srv.book.Name(v))
	}
	if len(names) == 0 {
		return "none known here"
	}
	return "its reviewers: " + strings.Join(names, ", ")
}

package admin

// members.go is the operator's view of who is a member and who left
// (issue 22): `ferry members list|add|remove`, GET/POST /api/v1/members,
// DELETE /api/v1/members/{id}.

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/peers"
)

// MemberRow is a row of `ferry members list`: a member of this node, or a
// peer that was one and left.
type MemberRow struct {
	PeerID string `json:"peer_id"`
	Name   string `json:"name"`
	// State is "member", "left" (its record expired) or "removed" (by the
	// operator, or by the config's `members`).
	State string `json:"state"`
	// RecordExpiresAt is when its membership record expires unless it
	// signs a new one (absent: no record of it held yet: a partner, a
	// `members` entry or the reviewer named before their first record).
	RecordExpiresAt time.Time `json:"record_expires_at,omitzero"`
	// LeftAt and Reason say when and why a peer that left did.
	LeftAt time.Time `json:"left_at,omitzero"`
	Reason string    `json:"reason,omitempty"`
	// Connected: a connection to it is open now.
	Connected bool `json:"connected"`
}

// Members lists the members and the peers that left, in the order of
// their names.
func (srv *Server) Members() []MemberRow {
	states := srv.book.MemberStates()
	out := make([]MemberRow, 0, len(states))
	for _, s := range states {
		r := MemberRow{PeerID: s.Peer.String(), Name: srv.book.Name(s.Peer), State: s.State,
			Connected: len(srv.host.Network().ConnsToPeer(s.Peer)) > 0}
		if !s.Expires.IsZero() {
			r.RecordExpiresAt = s.Expires.UTC()
		}
		if s.State != "member" {
			r.LeftAt, r.Reason = s.Left.At.UTC(), s.Left.Reason
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b MemberRow) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.PeerID, b.PeerID)
	})
	return out
}

// membersPage answers GET /api/v1/members: a page of Members (limit,
// after), as the peers pages.
func (srv *Server) membersPage(w http.ResponseWriter, r *http.Request) {
	out, next, done := namePage(w, r, srv.Members(), func(m MemberRow) (string, string) { return m.Name, m.PeerID })
	if !done {
		ok(w, map[string]any{"members": out, "next": next})
	}
}

// memberCall is POST /api/v1/members {"peer_id"} (on) and DELETE
// /api/v1/members/{id}: it answers the peer's row as it is now.
func (srv *Server) memberCall(w http.ResponseWriter, r *http.Request, id string, on bool) {
	p, err := peer.Decode(id)
	if err != nil {
		fail(w, badReq("%q is not a peer id", id))
		return
	}
	if err := srv.node.SetMember(r.Context(), p, on); err != nil {
		if errors.Is(err, peers.ErrMemberSelf) || errors.Is(err, peers.ErrMemberReviewer) || errors.Is(err, peers.ErrMemberPartner) {
			fail(w, fmt.Errorf("%w: %w", ferry.ErrConflict, err))
			return
		}
		fail(w, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err))
		return
	}
	row := MemberRow{PeerID: p.String(), Name: srv.book.Name(p), Connected: len(srv.host.Network().ConnsToPeer(p)) > 0}
	d, left := srv.book.Left(p)
	switch {
	case left && d.Why == peers.LeftExpired:
		row.State, row.LeftAt, row.Reason = "left", d.At.UTC(), d.Reason
	case left:
		row.State, row.LeftAt, row.Reason = "removed", d.At.UTC(), d.Reason
	case srv.book.IsMember(p):
		row.State = "member"
	default:
		// Added, and no record of it held: a member once its record comes.
		row.State = "allowed"
	}
	ok(w, map[string]any{"member": row})
}

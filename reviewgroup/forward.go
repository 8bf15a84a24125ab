package reviewgroup

// forward.go: /ferry/review-forward/1.0.0. A member opens a stream to
// another, writes one ForwardRequest frame (an unsigned varint length, then
// the protobuf message), closes its side, and reads one ForwardReply frame.
// Mutating operations (apply, add a voter, remove a server) and the read
// index go to the leader, which answers "not_leader" when it is not (nothing
// was done); a status goes to any member.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/inbound"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// The forward protocol's limits.
const (
	// forwardOverhead is what a ForwardRequest or ForwardReply adds around a
	// command or a result: the op, the code, a message, a peer id, numbers.
	forwardOverhead = 4096
	// forwardReserve is the memory reserved for one inbound forward
	// stream's buffers (the frame itself is reserved as it arrives).
	forwardReserve = 16 << 10
)

// maxFrame bounds a forward frame either way: a command or a result of at
// most MaxCommandBytes, and the fields around it.
func (g *Group) maxFrame() int { return g.cfg.MaxCommandBytes + forwardOverhead }

// serveForward answers one forwarded request (inbound.Handle has checked
// that the peer is allowed).
func (g *Group) serveForward(s network.Stream) error {
	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.Timing.ForwardTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	_ = s.SetDeadline(time.Now().Add(g.cfg.Timing.ForwardTimeout))
	fr := protocols.NewFrameReader(s, g.maxFrame()).Account(s.Scope())
	defer fr.Release()
	req := &pb.ForwardRequest{}
	if err := fr.Read(req); err != nil {
		return inbound.Refuse("read the forwarded request", err)
	}
	rep := g.answer(ctx, s.Conn().RemotePeer(), req)
	g.m.served(req.Op, rep.Code)
	fw := protocols.NewFrameWriter(s, g.maxFrame())
	defer fw.Release()
	if err := fw.Write(rep); err != nil {
		return fmt.Errorf("write the reply: %w", err)
	}
	return fw.Flush()
}

// answer does what a forwarded request of from asks. Anyone allowed may
// ask a status; the rest is for servers of the group's configuration only
// (a member removed from the group, still allowed by the node's config,
// decides nothing).
func (g *Group) answer(ctx context.Context, from peer.ID, req *pb.ForwardRequest) *pb.ForwardReply {
	r := g.raft.Load()
	if r == nil {
		return &pb.ForwardReply{Code: ferry.CodeUnavailable, Message: errNotStarted.Error()}
	}
	op := req.Op
	var p peer.ID
	switch op {
	case pb.ForwardOp_FORWARD_OP_STATUS:
		return &pb.ForwardReply{Status: g.localStatus().proto()}
	case pb.ForwardOp_FORWARD_OP_APPLY:
		if len(req.Command) > g.cfg.MaxCommandBytes {
			return &pb.ForwardReply{Code: ferry.CodeTooLarge, Message: fmt.Sprintf("a review group command of %d bytes is over the limit of %d", len(req.Command), g.cfg.MaxCommandBytes)}
		}
	case pb.ForwardOp_FORWARD_OP_READ_INDEX:
	case pb.ForwardOp_FORWARD_OP_ADD_VOTER, pb.ForwardOp_FORWARD_OP_REMOVE_SERVER:
		var err error
		if p, err = peer.IDFromBytes(req.Peer); err != nil {
			return &pb.ForwardReply{Code: ferry.CodeBadRequest, Message: fmt.Sprintf("%s: peer is not a peer id: %v", op, err)}
		}
		if op == pb.ForwardOp_FORWARD_OP_ADD_VOTER && !g.cfg.Allowed(p) {
			return &pb.ForwardReply{Code: ferry.CodeBadRequest, Message: fmt.Sprintf("add a voter: %s is not allowed to talk to the review group at the leader: make it a member first", g.cfg.Name(p))}
		}
	default:
		return &pb.ForwardReply{Code: ferry.CodeBadRequest, Message: fmt.Sprintf("unknown forward op %d", op)}
	}
	if r.State() != raft.Leader {
		return g.notLeader()
	}
	if !g.inConfiguration(from) {
		return &pb.ForwardReply{Code: ferry.CodeForbidden, Message: fmt.Sprintf("%s is not a server of review group %s (the configuration at its leader %s)",
			g.cfg.Name(from), g.groupName(), g.cfg.Name(g.cfg.Self))}
	}
	var st step
	switch op {
	case pb.ForwardOp_FORWARD_OP_APPLY:
		st = g.applyLocal(ctx, req.Command)
	case pb.ForwardOp_FORWARD_OP_READ_INDEX:
		st = g.barrierLocal(ctx)
	default:
		st = g.changeLocal(ctx, op, p)
	}
	switch {
	case st.retry:
		return g.notLeader()
	case st.err != nil:
		return &pb.ForwardReply{Code: ferry.Code(st.err), Message: st.err.Error(), Index: st.index}
	}
	return &pb.ForwardReply{Result: st.result, Index: st.index}
}

// inConfiguration reports whether p is a server (of any suffrage) of the
// latest configuration this member knows.
func (g *Group) inConfiguration(p peer.ID) bool {
	f := g.raft.Load().GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == p.String() {
			return true
		}
	}
	return false
}

// notLeader is the answer of a member that is not the leader.
func (g *Group) notLeader() *pb.ForwardReply {
	rep := &pb.ForwardReply{Code: codeNotLeader, Message: g.cfg.Name(g.cfg.Self) + " is not the review group's leader"}
	if l, ok := g.Leader(); ok {
		rep.Leader = []byte(l)
	}
	return rep
}

// untilLeaderChanges is ctx, cancelled as soon as this member sees another
// leader than leader, or none: a request forwarded to a leader that was
// cut off a moment ago (packets dropped, the connection still up) gets no
// answer until ForwardTimeout, while the group may have a new leader
// within an election. The outcome is the same as at the timeout, only
// sooner: uncertain, to be asked again under the same id (the review
// service does so once). stop ends the watch; the caller calls it when
// the exchange is over.
func (g *Group) untilLeaderChanges(ctx context.Context, leader peer.ID) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		for {
			wake := g.leaderChanged()
			if l, ok := g.Leader(); !ok || l != leader {
				cancel()
				return
			}
			select {
			case <-wake:
			case <-done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return ctx, func() {
		close(done)
		<-watching
		cancel()
	}
}

// forward hands req to the leader. Whatever fails before the request left
// is retried; what fails after is uncertain unless the operation is
// idempotent.
func (g *Group) forward(ctx context.Context, leader peer.ID, req *pb.ForwardRequest, idempotent bool) step {
	ctx, stop := g.untilLeaderChanges(ctx, leader)
	defer stop()
	rep, sent, err := g.ask(ctx, leader, req)
	if err != nil {
		if !sent || idempotent {
			return step{retry: true, err: err}
		}
		return step{err: g.uncertain(fmt.Sprintf("%s forwarded to %s", opWhat(req.Op), g.cfg.Name(leader)), err)}
	}
	switch rep.Code {
	case "":
		return step{result: rep.Result, index: rep.Index}
	case codeNotLeader:
		return step{retry: true, err: errors.New(rep.Message)}
	}
	return step{err: remoteError(rep.Code, rep.Message, leader), index: rep.Index}
}

// opWhat names an operation in messages.
func opWhat(op pb.ForwardOp) string {
	switch op {
	case pb.ForwardOp_FORWARD_OP_APPLY:
		return "the command"
	case pb.ForwardOp_FORWARD_OP_ADD_VOTER:
		return "adding a voter"
	case pb.ForwardOp_FORWARD_OP_REMOVE_SERVER:
		return "removing a server"
	}
	return op.String()
}

// ask sends req to p and reads its reply. sent says whether the request
// may have reached p (an error before that means p did nothing).
func (g *Group) ask(ctx context.Context, p peer.ID, req *pb.ForwardRequest) (rep *pb.ForwardReply, sent bool, err error) {
	if !g.cfg.Allowed(p) {
		return nil, false, fmt.Errorf("%s is not a member of the group here: not asked", g.cfg.Name(p))
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timing.ForwardTimeout)
	defer cancel()
	// The group's Close ends the exchange too.
	unlink := context.AfterFunc(g.ctx, cancel)
	defer unlink()
	s, err := g.cfg.Host.NewStream(network.WithForceDirectDial(ctx, "ferry review group"), p, protocols.ReviewForward)
	if err != nil {
		return nil, false, fmt.Errorf("cannot reach %s: %w", g.cfg.Name(p), err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = s.Reset()
		}
	}()
	if err := s.Scope().SetService(protocols.ServiceReviewGroup); err != nil {
		return nil, false, fmt.Errorf("stream to %s: %w", g.cfg.Name(p), err)
	}
	if d, has := ctx.Deadline(); has {
		_ = s.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	fw := protocols.NewFrameWriter(s, g.maxFrame())
	defer fw.Release()
	if err := fw.Write(req); err != nil {
		return nil, false, fmt.Errorf("write to %s: %w", g.cfg.Name(p), err)
	}
	if err := fw.Flush(); err != nil {
		return nil, true, fmt.Errorf("write to %s: %w", g.cfg.Name(p), err)
	}
	_ = s.CloseWrite()
	fr := protocols.NewFrameReader(s, g.maxFrame()).Account(s.Scope())
	defer fr.Release()
	rep = &pb.ForwardReply{}
	if err := fr.Read(rep); err != nil {
		return nil, true, fmt.Errorf("read %s's answer: %w", g.cfg.Name(p), err)
	}
	ok = true
	_ = s.Close()
	return rep, true, nil
}

// Status is one member's own view of the group.
type Status struct {
	State        string    `json:"state"` // Follower, Candidate, Leader, Shutdown
	Term         uint64    `json:"term"`
	LastLogIndex uint64    `json:"last_log_index"`
	CommitIndex  uint64    `json:"commit_index"`
	AppliedIndex uint64    `json:"applied_index"` // the last entry its state machine applied
	Leader       peer.ID   `json:"leader,omitempty"`
	LastContact  time.Time `json:"last_contact,omitzero"` // its last contact with the leader (zero on the leader, or never)
}

func (s Status) proto() *pb.GroupStatus {
	p := &pb.GroupStatus{State: s.State, Term: s.Term, LastLogIndex: s.LastLogIndex, CommitIndex: s.CommitIndex,
		AppliedIndex: s.AppliedIndex, Leader: []byte(s.Leader)}
	if !s.LastContact.IsZero() {
		p.LastContactUnixNano = s.LastContact.UnixNano()
	}
	return p
}

func statusOf(p *pb.GroupStatus) *Status {
	if p == nil {
		return nil
	}
	s := &Status{State: p.State, Term: p.Term, LastLogIndex: p.LastLogIndex, CommitIndex: p.CommitIndex, AppliedIndex: p.AppliedIndex}
	if l, err := peer.IDFromBytes(p.Leader); err == nil {
		s.Leader = l
	}
	if p.LastContactUnixNano != 0 {
		s.LastContact = time.Unix(0, p.LastContactUnixNano)
	}
	return s
}

// localStatus is this member's view.
func (g *Group) localStatus() Status {
	r := g.raft.Load()
	if r == nil {
		return Status{State: raft.Shutdown.String()}
	}
	st := Status{State: r.State().String(), Term: r.CurrentTerm(), LastLogIndex: r.LastIndex(),
		CommitIndex: r.CommitIndex(), AppliedIndex: g.fsm.last.Load()}
	st.Leader, _ = g.Leader()
	if r.State() != raft.Leader {
		st.LastContact = r.LastContact()
	}
	return st
}

// Server is one server of the group's latest configuration, as this member
// sees it, with its own status when it answered.
type Server struct {
	ID       peer.ID `json:"id"`
	Name     string  `json:"name"`
	Suffrage string  `json:"suffrage"` // Voter, Nonvoter, Staging
	Self     bool    `json:"self,omitempty"`
	Leader   bool    `json:"leader,omitempty"` // the leader this member knows
	// LastHeard is when this member last received raft traffic from it (a
	// leader hears each follower every heartbeat; zero: not since start).
	LastHeard time.Time `json:"last_heard,omitzero"`
	Status    *Status   `json:"status,omitempty"`
	Error     string    `json:"error,omitempty"` // why Status is missing
}

// Servers lists the servers of the group's latest configuration, each with
// its own status, asked over the forward protocol (at once, within ctx and
// ForwardTimeout); one that does not answer has Error instead. Comparing
// the members' applied indexes shows how far each follower lags.
func (g *Group) Servers(ctx context.Context) ([]Server, error) {
	r := g.raft.Load()
	if r == nil {
		return nil, errNotStarted
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("%w: review group configuration: %w", ferry.ErrUnavailable, err)
	}
	leader, _ := g.Leader()
	var out []Server
	for _, s := range f.Configuration().Servers {
		p, err := peer.Decode(string(s.ID))
		if err != nil {
			continue
		}
		out = append(out, Server{ID: p, Name: g.cfg.Name(p), Suffrage: s.Suffrage.String(), Self: p == g.cfg.Self,
			Leader: p == leader, LastHeard: g.layer.lastHeard(p)})
	}
	var wg sync.WaitGroup
	for i := range out {
		if out[i].Self {
			st := g.localStatus()
			out[i].Status = &st
			continue
		}
		wg.Add(1)
		go func(sv *Server) {
			defer wg.Done()
			rep, _, err := g.ask(ctx, sv.ID, &pb.ForwardRequest{Op: pb.ForwardOp_FORWARD_OP_STATUS})
			switch {
			case err != nil:
				sv.Error = err.Error()
			case rep.Code != "":
				sv.Error = rep.Message
			default:
				sv.Status = statusOf(rep.Status)
			}
		}(&out[i])
	}
	wg.Wait()
	return out, nil
}

package spread

// relay.go: applied reports that travel to the reviewers through the
// members' neighbours (/ferry/applied-relay/1.0.0), so a reviewer needs no
// connection of its own to each member.
//
// A member signs its report (SignedApplied: member, sequence) and sends it,
// with the reports it relays, to each reviewer of the group it is connected
// to, or else to its way up towards that reviewer: the neighbour the latest
// decision news published by that reviewer came through (gossipsub's
// ReceivedFrom), or, before any news came, a neighbour on the topic
// (wayUpLocked). That neighbour got the news earlier, so following the way
// up leads to the reviewer, hop by hop, as the news came down. Each hop
// checks every signature, keeps the highest sequence per member and
// reviewer, and passes on at its next report (at most every ReportEvery),
// so a burst of decisions sends one frame per hop, not one per member. A
// reviewer takes each signed report as the member's acknowledgement.
//
// A hop passes a report on once per (reviewer, member, sequence), and the
// same sequence again only after HeadEvery: a way up that changed between
// two news cannot make a report go round. A member that did not reach a
// reviewer directly sends the same report again up to relayResends times,
// HeadEvery apart, over the way up of that moment; the delivery stream's
// DecisionFallback stays the last resort, as before.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/stream"
)

const (
	// appliedSignPrefix starts what a member signs in a SignedApplied.
	appliedSignPrefix = "ferry-applied:"
	// relayResends is how many times a member sends the same report again
	// when it reached no reviewer directly: HeadEvery after the first
	// send, then twice as long each time, up to headQuiet HeadEvery
	// (ownDueLocked). A way up that changes while news spreads can turn a
	// report back for a while (a hop drops a report it passed on less
	// than HeadEvery ago): sends spread over minutes meet a settled way.
	relayResends = 6
	// maxRelayFrame bounds one AppliedRelay frame: a report is about 115
	// bytes (a 38-byte peer id, a sequence, a 64-byte signature, tags).
	maxRelayFrame = 256 << 10
	// maxRelayReports bounds the reports of one frame; more wait for the
	// next one.
	maxRelayReports = 2000
	// relayReserve is the memory an inbound relay stream reserves.
	relayReserve = 16 << 10
)

// relayState is what a node holds to pass reports on; Service.mu guards it.
type relayState struct {
	// up is, per reviewer, the neighbour the latest news from it came
	// through.
	up map[peer.ID]peer.ID
	// pend holds, per reviewer, the highest report of each member not yet
	// passed on towards it.
	pend map[peer.ID]map[peer.ID]*pb.SignedApplied
	// sent is, per reviewer, what was last passed on for each member.
	sent map[peer.ID]map[peer.ID]sentMark
	// own is, per reviewer, this member's own last report to it.
	own map[peer.ID]ownMark
}

type sentMark struct {
	seq uint64
	at  time.Time
}

type ownMark struct {
	seq    uint64
	direct bool // the reviewer itself took it
	sends  int
	at     time.Time
}

func newRelayState() relayState {
	return relayState{up: map[peer.ID]peer.ID{}, pend: map[peer.ID]map[peer.ID]*pb.SignedApplied{},
		sent: map[peer.ID]map[peer.ID]sentMark{}, own: map[peer.ID]ownMark{}}
}

// appliedSigned is what a member signs for network: it applied every
// decision through seq.
func appliedSigned(network string, member peer.ID, seq uint64) []byte {
	b := make([]byte, 0, len(appliedSignPrefix)+len(network)+1+len(member)+8)
	b = append(b, appliedSignPrefix...)
	b = append(b, network...)
	b = append(b, 0)
	b = append(b, member...)
	return binary.BigEndian.AppendUint64(b, seq)
}

// signApplied is this node's signed report of seq.
func (s *Service) signApplied(seq uint64) (*pb.SignedApplied, error) {
	self := s.d.Host.ID()
	key := s.d.Host.Peerstore().PrivKey(self)
	if key == nil {
		return nil, errors.New("sign an applied report: this node's key is not in its peerstore")
	}
	sig, err := key.Sign(appliedSigned(s.d.Network, self, seq))
	if err != nil {
		return nil, fmt.Errorf("sign an applied report: %w", err)
	}
	return &pb.SignedApplied{Member: []byte(self), Sequence: seq, Signature: sig}, nil
}

// checkApplied verifies a relayed report: a member of the network, a
// sequence, its own signature.
func (s *Service) checkApplied(r *pb.SignedApplied) (peer.ID, error) {
	m, err := peer.IDFromBytes(r.Member)
	if err != nil {
		return "", fmt.Errorf("a report's member is not a peer id: %w", err)
	}
	if r.Sequence == 0 {
		return "", fmt.Errorf("%s's report names no sequence", m)
	}
	if !s.d.Roles.IsMember(m) {
		return "", fmt.Errorf("%s is not a member", m)
	}
	pk, err := m.ExtractPublicKey()
	if err != nil {
		return "", fmt.Errorf("%s's key is not in its id: %w", m, err)
	}
	if ok, err := pk.Verify(appliedSigned(s.d.Network, m, r.Sequence), r.Signature); err != nil || !ok {
		return "", fmt.Errorf("%s's report of %d: the signature does not verify", m, r.Sequence)
	}
	return m, nil
}

// noteUp records that news from reviewer came through from.
func (s *Service) noteUp(reviewer, from peer.ID) {
	if from == "" || from == s.d.Host.ID() || reviewer == s.d.Host.ID() {
		return
	}
	s.mu.Lock()
	s.rl.up[reviewer] = from
	s.mu.Unlock()
}

// serveRelay takes an AppliedRelay from a neighbour: each report is
// checked, taken as an acknowledgement if this node is a reviewer, and
// kept to be passed on towards the group's other reviewers.
func (s *Service) serveRelay(st network.Stream) error {
	p := st.Conn().RemotePeer()
	defer context.AfterFunc(s.ctx, func() { _ = st.Reset() })()
	_ = st.SetReadDeadline(time.Now().Add(reportTimeout))
	f := &pb.AppliedRelay{}
	if err := protocols.NewFrameReader(st, maxRelayFrame).Read(f); err != nil {
		s.m.reports.WithLabelValues("in", "failed").Inc()
		return fmt.Errorf("read relayed reports from %s: %w", p, err)
	}
	if len(f.Reports) > maxRelayReports {
		s.m.reports.WithLabelValues("in", "refused").Inc()
		return fmt.Errorf("relayed reports from %s: %d in one frame, at most %d", p, len(f.Reports), maxRelayReports)
	}
	var bad error
	for _, r := range f.Reports {
		m, err := s.checkApplied(r)
		if err != nil {
			s.m.reports.WithLabelValues("in", "refused").Inc()
			bad = err
			continue
		}
		if m == s.d.Host.ID() {
			continue
		}
		if !s.reviewer() {
			s.m.reports.WithLabelValues("relay", "ok").Inc()
		} else {
			ver, err := s.d.Store.DecisionVersion(r.Sequence)
			if err != nil {
				// A reviewer of a group behind the others: the member
				// reports again, and the stream is the last resort.
				s.m.reports.WithLabelValues("in", "refused").Inc()
			} else {
				s.d.Acker.Acknowledge(m, stream.LaneDecision, ver)
				s.m.reports.WithLabelValues("in", "ok").Inc()
			}
		}
		s.keep(m, r)
	}
	s.wantReport()
	if bad != nil {
		return fmt.Errorf("relayed reports from %s: %w", p, bad)
	}
	return nil
}

// keep holds member m's report r to be passed on towards every reviewer
// but this node, unless it was passed on already (the same sequence again
// only after HeadEvery).
func (s *Service) keep(m peer.ID, r *pb.SignedApplied) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rv := range s.d.Roles.ReviewGroup() {
		if rv == s.d.Host.ID() || rv == m {
			continue
		}
		if last, ok := s.rl.sent[rv][m]; ok && (r.Sequence < last.seq || (r.Sequence == last.seq && now.Sub(last.at) < s.d.HeadEvery)) {
			continue
		}
		if cur := s.rl.pend[rv][m]; cur != nil && cur.Sequence >= r.Sequence {
			continue
		}
		if s.rl.pend[rv] == nil {
			s.rl.pend[rv] = map[peer.ID]*pb.SignedApplied{}
		}
		s.rl.pend[rv][m] = r
	}
}

// relayDue reports whether reports wait to be passed on, or this member's
// own report to some reviewer is due (applied: what it applied).
func (s *Service) relayDue(applied uint64) bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rv := range s.d.Roles.ReviewGroup() {
		if rv == s.d.Host.ID() {
			continue
		}
		if len(s.rl.pend[rv]) > 0 || s.ownDueLocked(rv, applied, now) {
			return true
		}
	}
	return false
}

// ownDueLocked: this member's report of applied to reviewer rv is due:
// never sent, or sent only up the way fewer than relayResends+1 times and
// long enough ago (resendGap).
func (s *Service) ownDueLocked(rv peer.ID, applied uint64, now time.Time) bool {
	if applied == 0 || s.reviewer() {
		return false
	}
	o := s.rl.own[rv]
	if applied > o.seq {
		return true
	}
	return !o.direct && o.sends <= relayResends && now.Sub(o.at) >= resendGap(s.d.HeadEvery, o.sends)
}

// resendGap is the wait before sending a report again that went up the
// way sends times: HeadEvery, doubling with each send, up to headQuiet
// HeadEvery.
func resendGap(every time.Duration, sends int) time.Duration {
	return min(every<<min(max(sends-1, 0), 4), headQuiet*every)
}

// relay sends, towards every reviewer of the group, this member's report of
// applied (when due) and the reports it holds for that reviewer: to the
// reviewer itself when connected to it, else up the way the news came. The
// reviewers whose way goes through the same peer get one frame (that peer
// keeps every report for every reviewer). It fails only when it had
// something to send and nothing went.
func (s *Service) relay(applied uint64) error {
	type leg struct {
		rvs   []peer.ID
		own   []peer.ID // the reviewers this member's own report is due to
		batch map[peer.ID]*pb.SignedApplied
	}
	now := time.Now()
	legs := map[peer.ID]*leg{}
	var order []peer.ID
	s.mu.Lock()
	for _, rv := range s.d.Roles.ReviewGroup() {
		if rv == s.d.Host.ID() {
			continue
		}
		ownDue := s.ownDueLocked(rv, applied, now)
		if len(s.rl.pend[rv]) == 0 && !ownDue {
			continue
		}
		target := s.wayUpLocked(rv)
		l := legs[target]
		if l == nil {
			l = &leg{batch: map[peer.ID]*pb.SignedApplied{}}
			legs[target] = l
			order = append(order, target)
		}
		l.rvs = append(l.rvs, rv)
		if ownDue {
			l.own = append(l.own, rv)
		}
		for m, r := range s.rl.pend[rv] {
			if cur := l.batch[m]; (cur == nil || cur.Sequence < r.Sequence) && len(l.batch) < maxRelayReports-1 {
				l.batch[m] = r
			}
		}
	}
	s.mu.Unlock()
	var own *pb.SignedApplied
	var errs []error
	took := false
	for _, target := range order {
		l := legs[target]
		batch := make([]*pb.SignedApplied, 0, len(l.batch)+1)
		for _, r := range l.batch {
			batch = append(batch, r)
		}
		if len(l.own) > 0 {
			if own == nil {
				var err error
				if own, err = s.signApplied(applied); err != nil {
					return err
				}
			}
			batch = append(batch, own)
		}
		if err := s.sendRelay(target, batch); err != nil {
			s.m.reports.WithLabelValues("out", "failed").Inc()
			errs = append(errs, fmt.Errorf("to %s for reviewers %v: %w", target, l.rvs, err))
			continue
		}
		took = true
		s.m.reports.WithLabelValues("out", "ok").Inc()
		s.mu.Lock()
		for _, rv := range l.own {
			o := s.rl.own[rv]
			if applied > o.seq {
				o = ownMark{seq: applied}
			}
			o.direct = o.direct || target == rv
			o.sends++
			o.at = now
			s.rl.own[rv] = o
		}
		for _, rv := range l.rvs {
			if s.rl.sent[rv] == nil {
				s.rl.sent[rv] = map[peer.ID]sentMark{}
			}
			for m, r := range l.batch {
				s.rl.sent[rv][m] = sentMark{seq: r.Sequence, at: now}
				if cur := s.rl.pend[rv][m]; cur != nil && cur.Sequence <= r.Sequence {
					delete(s.rl.pend[rv], m)
				}
			}
		}
		s.mu.Unlock()
	}
	if len(order) == 0 || took {
		return nil
	}
	return errors.Join(errs...)
}

// wayUpLocked is where reports for reviewer rv go: rv itself when
// connected; else the neighbour the latest news from rv came through, if
// still connected; else a connected neighbour on the decisions topic (a
// member that took decisions by catch-up before any news reached it knows
// no way up yet; the neighbour's own way leads on); else rv, dialed, when
// this node has no neighbour at all. s.mu held.
func (s *Service) wayUpLocked(rv peer.ID) peer.ID {
	nw := s.d.Host.Network()
	if nw.Connectedness(rv) == network.Connected {
		return rv
	}
	if up, ok := s.rl.up[rv]; ok && nw.Connectedness(up) == network.Connected {
		return up
	}
	if s.topic != nil {
		for _, p := range s.topic.ListPeers() {
			if p != s.d.Host.ID() && nw.Connectedness(p) == network.Connected {
				return p
			}
		}
	}
	return rv
}

// sendRelay sends one AppliedRelay frame to p.
func (s *Service) sendRelay(p peer.ID, batch []*pb.SignedApplied) error {
	ctx, cancel := context.WithTimeout(s.ctx, reportTimeout)
	defer cancel()
	st, err := s.d.Host.NewStream(ctx, p, protocols.AppliedRelay)
	if err != nil {
		return fmt.Errorf("open %s: %w", protocols.AppliedRelay, err)
	}
	_ = st.SetDeadline(time.Now().Add(reportTimeout))
	fw := protocols.NewFrameWriter(st, maxRelayFrame)
	if err := fw.Write(&pb.AppliedRelay{Reports: batch}); err != nil {
		_ = st.Reset()
		return err
	}
	if err := fw.Flush(); err != nil {
		_ = st.Reset()
		return err
	}
	return st.Close()
}

package catchup

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// serve answers one sync request.
func (s *Service) serve(st network.Stream) error {
	remote := st.Conn().RemotePeer()
	// Close resets the stream: an asker that stops reading (or never sends
	// its request) must not hold Close until the deadline.
	stop := context.AfterFunc(s.ctx, func() { _ = st.Reset() })
	defer stop()
	_ = st.SetDeadline(time.Now().Add(requestTimeout))
	req := &pb.SyncRequest{}
	fr := protocols.NewFrameReader(st, maxRequestBytes)
	defer fr.Release()
	if err := fr.Read(req); err != nil {
		return fmt.Errorf("read sync request: %w", err)
	}
	fw := protocols.NewFrameWriter(st, s.max)
	defer fw.Release()
	refuse := func(format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		s.log.Info("sync request refused", "peer", remote, "reason", msg)
		if err := fw.Write(&pb.SyncBatch{Error: msg, Done: true}); err != nil {
			return err
		}
		return fw.Flush()
	}
	// next returns the changes after a position and the position reached.
	var next func(after uint64) ([]store.Change, uint64, error)
	var latest uint64
	self := s.d.Roles.Self()
	switch req.What {
	case pb.SyncRequest_WHAT_RESOURCES:
		origin, err := peer.IDFromBytes(req.Origin)
		if err != nil {
			return refuse("origin is not a peer id")
		}
		if !s.d.Roles.IsPartner(remote) || (origin != self && !s.d.Roles.IsPartner(origin)) {
			return refuse("resources of %s are shared with partners only", origin)
		}
		if latest, err = s.d.Store.LastOriginVersion(origin); err != nil {
			return err
		}
		if latest == 0 && origin != self {
			return refuse("unknown origin %s", origin)
		}
		next = func(after uint64) ([]store.Change, uint64, error) {
			return s.d.Store.OriginChanges(origin, after, BatchSize,
				pb.Kind_KIND_RESOURCE_CREATE, pb.Kind_KIND_RESOURCE_UPDATE, pb.Kind_KIND_RESOURCE_DELETE)
		}
	case pb.SyncRequest_WHAT_DECISIONS:
		if !s.d.Roles.IsMember(remote) {
			return refuse("decisions are shared with members only")
		}
		var err error
		if latest, err = s.d.Store.LastDecision(); err != nil {
			return err
		}
		next = func(after uint64) ([]store.Change, uint64, error) {
			cs, err := s.d.Store.Decisions(after, BatchSize)
			if len(cs) > 0 {
				after = decisionSequence(cs[len(cs)-1].Body)
			}
			return cs, after, err
		}
	case pb.SyncRequest_WHAT_OWN:
		// A peer's own changes go back to it, whatever their kind: it sent
		// them (or they were addressed to this node), and lost them.
		if !s.d.Roles.IsMember(remote) {
			return refuse("changes are given back to members only")
		}
		var err error
		if latest, err = s.d.Store.LastOriginVersion(remote); err != nil {
			return err
		}
		next = func(after uint64) ([]store.Change, uint64, error) {
			return s.d.Store.OriginChanges(remote, after, BatchSize)
		}
		if req.After > latest {
			// Nothing to give back; an empty answer, not a refusal.
			if err := fw.Write(&pb.SyncBatch{Done: true}); err != nil {
				return err
			}
			return fw.Flush()
		}
	case pb.SyncRequest_WHAT_SNAPSHOT:
		return s.serveSnapshot(st, fw, remote, refuse)
	default:
		return refuse("unknown request %v", req.What)
	}
	if req.After > latest {
		return refuse("position %d is in the future (this node holds up to %d)", req.After, latest)
	}
	position := func(c store.Change) uint64 {
		if req.What == pb.SyncRequest_WHAT_DECISIONS {
			return decisionSequence(c.Body)
		}
		return c.Body.OriginVersion
	}
	after, sent := req.After, 0
	for {
		if s.ctx.Err() != nil {
			return s.ctx.Err()
		}
		cs, reached, err := next(after)
		if err != nil {
			return err
		}
		// A batch ends at BatchSize changes, at MaxBatchBytes, or at the
		// asker's limit; the next starts after its last change.
		batch := &pb.SyncBatch{Done: len(cs) < BatchSize}
		size := 0
		limited := func() bool { return req.Limit > 0 && sent >= int(req.Limit) }
		for i, c := range cs {
			n := proto.Size(c.Envelope)
			if i > 0 && (size+n > MaxBatchBytes || limited()) {
				reached = position(cs[i-1])
				batch.Done = false
				break
			}
			batch.Envelopes = append(batch.Envelopes, c.Envelope)
			size += n
			sent++
		}
		if limited() {
			batch.Done = true
		}
		after = reached
		_ = st.SetWriteDeadline(time.Now().Add(protocols.WriteTimeout))
		if err := fw.Write(batch); err != nil {
			return err
		}
		if err := fw.Flush(); err != nil {
			return err
		}
		if batch.Done {
			return nil
		}
	}
}

// serveSnapshot streams the shared tables at the reviewer's last decision,
// each batch of chunks sealed with one signature.
func (s *Service) serveSnapshot(st network.Stream, fw *protocols.FrameWriter, remote peer.ID, refuse func(string, ...any) error) error {
	if s.d.Roles.Reviewer() != s.d.Roles.Self() || s.d.Signer == nil {
		return refuse("only the reviewer serves snapshots")
	}
	if !s.d.Roles.IsMember(remote) {
		return refuse("snapshots are shared with members only")
	}
	var bodies [][]byte
	size := 0
	flush := func(done bool) error {
		envs, err := protocols.Seal(s.d.Signer, bodies)
		if err != nil {
			return err
		}
		bodies, size = bodies[:0], 0
		_ = st.SetWriteDeadline(time.Now().Add(protocols.WriteTimeout))
		if err := fw.Write(&pb.SyncBatch{Envelopes: envs, Done: done}); err != nil {
			return err
		}
		return fw.Flush()
	}
	self := []byte(s.d.Roles.Self())
	now := time.Now().UnixNano()
	err := s.d.Decisions.ServeSnapshot(s.ctx, func(c *pb.SnapshotChunk) error {
		payload, err := proto.Marshal(c)
		if err != nil {
			return err
		}
		body, err := proto.Marshal(&pb.Body{Origin: self, Kind: pb.Kind_KIND_SNAPSHOT, Payload: payload,
			CreatedAtUnixNano: now, To: []byte(remote)})
		if err != nil {
			return err
		}
		bodies = append(bodies, body)
		size += len(body)
		if c.Last {
			return flush(true)
		}
		if size >= MaxBatchBytes/2 || len(bodies) == protocols.MaxTreeLeaves {
			return flush(false)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("serve snapshot: %w", err)
	}
	return nil
}

func decisionSequence(b *pb.Body) uint64 {
	d := &pb.ReviewDecision{}
	if proto.Unmarshal(b.Payload, d) != nil {
		return 0
	}
	return d.Sequence
}

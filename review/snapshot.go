package review

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// A new member does not replay every decision the reviewer ever made: it
// takes the shared tables as they stand at one decision sequence from a
// snapshot the reviewer signs, then the decisions after it.

// Snapshot tuning.
const (
	// SnapshotThreshold: a member that applied nothing yet takes a
	// snapshot when the reviewer has made more decisions than this;
	// below it, replaying them costs less than a snapshot.
	SnapshotThreshold = 1000
	// snapshotChunkBytes bounds the rows of one signed chunk.
	snapshotChunkBytes = 256 << 10
	// snapshotRetry is how long a member falls back to replaying decisions
	// after a snapshot failed.
	snapshotRetry = 5 * time.Minute
	// durableWait bounds how long the reviewer waits for the decision a
	// snapshot shows to be on disk before it serves it.
	durableWait = 10 * time.Second
)

// SnapshotFetcher fetches a snapshot from the reviewer (the sync service).
type SnapshotFetcher interface {
	FetchSnapshot(reviewer peer.ID)
}

// Want reports whether this member takes the tables from a snapshot
// instead of the decision lane of sender, whose last decision is head
// (stream.Snapshots): sender is any reviewer of the review group (each
// signs and serves its own snapshot; catch-up falls back to another of the
// group if sender cannot serve it). It starts the fetch; done runs once
// the tables were taken (not when it failed).
func (s *Service) Want(sender peer.ID, head uint64, done func()) bool {
	if s.gaps == nil || !s.roles.InReviewGroup(sender) || s.roles.InReviewGroup(s.roles.Self()) || head <= SnapshotThreshold || s.Applied() > 0 {
		return false
	}
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	if s.snapRunning {
		if done != nil {
			s.snapAfter = append(s.snapAfter, done)
		}
		return true
	}
	if time.Now().Before(s.snapRetryAt) {
		return false
	}
	s.snapRunning = true
	if done != nil {
		s.snapAfter = append(s.snapAfter, done)
	}
	s.log.Info("taking the shared tables from a snapshot of the reviewer", "reviewer", sender, "decisions", head)
	s.gaps.FetchSnapshot(sender)
	return true
}

// SnapshotDone ends a snapshot fetch: on success the decision lane resumes
// after it; on failure decisions are replayed for a while.
func (s *Service) SnapshotDone(reviewer peer.ID, err error) {
	s.snapMu.Lock()
	s.snapRunning = false
	after := s.snapAfter
	s.snapAfter = nil
	if err != nil {
		s.snapRetryAt = time.Now().Add(snapshotRetry)
	}
	s.snapMu.Unlock()
	if err != nil {
		s.log.Warn("snapshot failed; replaying the reviewer's decisions instead", "reviewer", reviewer, "err", err)
		return
	}
	s.log.Info("shared tables taken from the reviewer's snapshot", "reviewer", reviewer, "applied", s.Applied())
	for _, fn := range after {
		fn()
	}
}

// ServeSnapshot reads the shared tables at this reviewer's last decision
// and hands them to emit in chunks (the last one marked), once that
// decision is on disk.
func (s *Service) ServeSnapshot(ctx context.Context, emit func(*pb.SnapshotChunk) error) error {
	if !s.IsReviewer() {
		return errors.New("only the reviewer serves snapshots")
	}
	sn := s.st.NewSnapshot()
	defer sn.Close()
	seq, err := sn.Counter(ctrApplied)
	if err != nil {
		return err
	}
	var ver uint64
	if seq > 0 {
		v, ok, err := sn.Decision(seq)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("decision %d has no record", seq)
		}
		ver = v
	}
	deadline := time.Now().Add(durableWait)
	for s.st.DurableVersion() < ver {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("decision %d is not on disk yet", seq)
		}
		time.Sleep(5 * time.Millisecond)
	}
	chunk := &pb.SnapshotChunk{Sequence: seq, Version: ver, Epoch: s.st.Epoch()}
	size := 0
	err = sn.TableRows(func(table string, id uint64, row []byte) (bool, error) {
		chunk.Rows = append(chunk.Rows, &pb.TableRow{Table: table, Id: id, Json: append([]byte(nil), row...)})
		size += len(row) + len(table) + 16
		if size < snapshotChunkBytes {
			return true, nil
		}
		if err := emit(chunk); err != nil {
			return false, err
		}
		chunk = &pb.SnapshotChunk{Sequence: seq, Version: ver, Epoch: chunk.Epoch, Index: chunk.Index + 1}
		size = 0
		return true, ctx.Err()
	})
	if err != nil {
		return err
	}
	chunk.Last = true
	return emit(chunk)
}

// ApplySnapshotChunk applies one chunk of the reviewer's snapshot: the
// first clears the tables, the last sets the applied sequence and the
// position of the reviewer's decision lane, and applies decisions held
// behind it.
func (s *Service) ApplySnapshotChunk(tx *store.Txn, c *pb.SnapshotChunk, reviewer peer.ID) error {
	applied, err := tx.CounterValue(ctrApplied)
	if err != nil {
		return err
	}
	if applied > 0 && applied >= c.Sequence {
		return fmt.Errorf("this node applied decision %d already; the snapshot is at %d", applied, c.Sequence)
	}
	if c.Index == 0 {
		if applied > 0 {
			return fmt.Errorf("this node applied decisions already (%d)", applied)
		}
		if err := tx.ClearTables(); err != nil {
			return err
		}
	}
	for _, r := range c.Rows {
		var obj map[string]json.RawMessage
		if !ValidTable(r.Table) || r.Id == 0 || json.Unmarshal(r.Json, &obj) != nil || obj == nil {
			return stream.Reject("snapshot row %s/%d is not a table row", r.Table, r.Id)
		}
		tx.PutRow(r.Table, r.Id, r.Json)
	}
	if !c.Last {
		return nil
	}
	if c.Sequence > 0 {
		tx.SetCounter(ctrApplied, c.Sequence)
		if d, err := tx.CounterValue(store.CtrDecision); err != nil {
			return err
		} else if d < c.Sequence {
			tx.SetCounter(store.CtrDecision, c.Sequence)
		}
		tx.SetPosition(reviewer, uint8(stream.LaneDecision), &storepb.Position{Epoch: c.Epoch, Version: c.Version})
	}
	return s.releaseHeld(tx, c.Sequence)
}

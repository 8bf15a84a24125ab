package reviewgroup

// fsm.go: the caller's state machine, wrapped so the group knows the last
// log index it applied (Apply on a follower and Barrier wait for it) and so
// its results are ones that can cross the wire.
//
// Snapshots carry that index: the wrapper writes a 12-byte header before
// the caller's snapshot ("FRG1", then the last applied index, big-endian
// uint64) and reads it back on Restore, so a member restored from a
// snapshot knows where its state machine stands.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// snapshotMagic starts every snapshot the group writes.
const snapshotMagic = "FRG1"

// fsm wraps the caller's raft.FSM. raft calls it on its FSM goroutine only.
type fsm struct {
	user raft.FSM
	last atomic.Uint64 // the last command or configuration entry applied

	mu   sync.Mutex
	wake chan struct{} // closed when last moves, if someone waits
}

var (
	_ raft.FSM                = (*fsm)(nil)
	_ raft.ConfigurationStore = (*fsm)(nil)
)

func (f *fsm) Apply(l *raft.Log) any {
	res := f.user.Apply(l)
	switch res.(type) {
	case nil, []byte, error:
	default:
		res = fmt.Errorf("review group: the state machine answered a %T, not []byte or an error: it cannot be sent to a follower", res)
	}
	f.set(l.Index)
	return res
}

// StoreConfiguration passes a configuration entry to the caller's state
// machine if it wants them, and counts it applied: the indexes the group
// waits for may be configuration entries.
func (f *fsm) StoreConfiguration(index uint64, c raft.Configuration) {
	if cs, ok := f.user.(raft.ConfigurationStore); ok {
		cs.StoreConfiguration(index, c)
	}
	f.set(index)
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	s, err := f.user.Snapshot()
	if err != nil {
		return nil, err
	}
	return &snapshot{user: s, last: f.last.Load()}, nil
}

// Restore reads the header, then hands the rest to the caller's state
// machine (raft closes rc).
func (f *fsm) Restore(rc io.ReadCloser) error {
	var h [12]byte
	if _, err := io.ReadFull(rc, h[:]); err != nil {
		return fmt.Errorf("review group: read the snapshot header: %w", err)
	}
	if string(h[:4]) != snapshotMagic {
		return fmt.Errorf("review group: the snapshot does not start with %q: not written by this group", snapshotMagic)
	}
	if err := f.user.Restore(rc); err != nil {
		return err
	}
	f.set(binary.BigEndian.Uint64(h[4:]))
	return nil
}

// set records index as the last applied and wakes the waiters.
func (f *fsm) set(index uint64) {
	f.last.Store(index)
	f.mu.Lock()
	if f.wake != nil {
		close(f.wake)
		f.wake = nil
	}
	f.mu.Unlock()
}

// waitApplied returns once the state machine applied index, or with ctx's
// error.
func (f *fsm) waitApplied(ctx context.Context, index uint64) error {
	for {
		f.mu.Lock()
		if f.last.Load() >= index {
			f.mu.Unlock()
			return nil
		}
		if f.wake == nil {
			f.wake = make(chan struct{})
		}
		w := f.wake
		f.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// snapshot writes the header, then the caller's snapshot.
type snapshot struct {
	user raft.FSMSnapshot
	last uint64
}

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	var h [12]byte
	copy(h[:4], snapshotMagic)
	binary.BigEndian.PutUint64(h[4:], s.last)
	if _, err := sink.Write(h[:]); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("review group: write the snapshot header: %w", err)
	}
	return s.user.Persist(sink)
}

func (s *snapshot) Release() { s.user.Release() }

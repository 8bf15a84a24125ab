package review

// groupsnap.go: the review group's snapshots carry the ledger. A reviewer
// added to a group, or one so far behind that the leader no longer holds the
// log entries it misses, receives a snapshot (raft's InstallSnapshot) and is
// restored from it; its store then holds the same review state as the
// reviewer that took it, and the log applies from there.
//
// The stream (after reviewgroup's 12-byte header) is a sequence of records,
// each a type byte, a uvarint length and that many bytes:
//
//	'H' header, JSON snapHeader: format, the applied log index, the decision
//	    sequence counter and the applied decision sequence
//	'D' a decision: its sequence (8 bytes, big-endian) then its signed
//	    envelope, as the store keeps it for catch-up; in sequence order
//	'Q' a request row (storepb.Request), with its status, decision fields
//	    and approvals, named by its origin (its id is the taker's own)
//	'T' a shared table row: the table's name (1 length byte, then the name),
//	    the row id (8 bytes), the row's JSON
//	'C' a command id applied (the dedup record): the id (1 length byte, the
//	    id), then its answer
//	'E' the end, JSON snapCounts: how many of each came (a stream cut short
//	    is refused)
//
// Restore writes it in bounded transactions. The first writes a marker
// (restoreMarker, the snapshot's index); the last sets the counters and the
// applied index and clears the marker. A store holding the marker is a
// restore that did not finish: its snapshot is not taken (Snapshot refuses)
// and the next Restore, which raft runs again from its snapshot store at the
// next start, redoes it whole.

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// Snapshot tuning.
const (
	// snapFormat is the format of the stream above.
	snapFormat = 1
	// snapMagic starts the stream (a snapshot of the earlier format, which
	// carried only the index in decimal, starts with a digit).
	snapMagic = "FRS1"
	// restoreBatchRecords and restoreBatchBytes bound one transaction of a
	// restore: a large ledger is never held in memory nor written in one
	// commit.
	restoreBatchRecords = 512
	restoreBatchBytes   = 4 << 20
	// maxSnapRecord bounds one record (a decision or a request carries at
	// most two data fields of limits.max_message_bytes, far below this).
	maxSnapRecord = 64 << 20
	// restoreMarker is the aux value present while a restore runs.
	restoreMarker = "review/group/restoring"
	// cmdPrefix is the aux prefix of the command-id dedup records.
	cmdPrefix = "review/group/cmd/"
)

// Record types.
const (
	recHeader   = 'H'
	recDecision = 'D'
	recRequest  = 'Q'
	recRow      = 'T'
	recCmd      = 'C'
	recEnd      = 'E'
)

type snapHeader struct {
	Format   int    `json:"format"`
	Index    uint64 `json:"index"`
	Decision uint64 `json:"decision"` // the decision sequence counter
	Applied  uint64 `json:"applied"`  // the last decision sequence applied
}

type snapCounts struct {
	Decisions int `json:"decisions"`
	Requests  int `json:"requests"`
	Rows      int `json:"rows"`
	Cmds      int `json:"cmds"`
}

// Snapshot takes a read view of the store at the applied index (raft calls
// it on its FSM goroutine, between two Applies, each of which committed);
// Persist streams the view while later commands apply.
func (f groupFSM) Snapshot() (raft.FSMSnapshot, error) {
	sn := f.s.st.NewSnapshot()
	if m, err := sn.Counter(ctrGroupIndex); err != nil {
		_ = sn.Close()
		return nil, err
	} else if restoring, err := f.s.st.Aux(restoreMarker); err == nil && len(restoring) > 0 {
		_ = sn.Close()
		return nil, fmt.Errorf("review group: a restore of this reviewer's ledger has not finished (snapshot index %s, applied %d): no snapshot of it is taken", restoring, m)
	}
	return &ledgerSnapshot{s: f.s, sn: sn}, nil
}

type ledgerSnapshot struct {
	s  *Service
	sn *store.Snapshot
}

func (l *ledgerSnapshot) Release() { _ = l.sn.Close() }

func (l *ledgerSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := l.write(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("review group: write the snapshot: %w", err)
	}
	return sink.Close()
}

// write streams the view to w.
func (l *ledgerSnapshot) write(w io.Writer) error {
	sn := l.sn
	var h snapHeader
	var err error
	h.Format = snapFormat
	if h.Index, err = sn.Counter(ctrGroupIndex); err != nil {
		return err
	}
	if h.Decision, err = sn.Counter(store.CtrDecision); err != nil {
		return err
	}
	if h.Applied, err = sn.Counter(ctrApplied); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	if _, err := bw.WriteString(snapMagic); err != nil {
		return err
	}
	hb, _ := json.Marshal(h)
	if err := writeRec(bw, recHeader, hb); err != nil {
		return err
	}
	var n snapCounts
	var buf []byte
	err = sn.Decisions(func(seq, ver, _ uint64) (bool, error) {
		env, err := l.envelope(ver)
		if err != nil {
			return false, fmt.Errorf("decision %d (change %d): %w", seq, ver, err)
		}
		buf = append(binary.BigEndian.AppendUint64(buf[:0], seq), env...)
		n.Decisions++
		return true, writeRec(bw, recDecision, buf)
	})
	if err != nil {
		return err
	}
	err = sn.Requests(func(r *storepb.Request) (bool, error) {
		if r.Origin == "" {
			return true, nil // not a request of the review (none since schema 2)
		}
		b, err := proto.Marshal(r)
		if err != nil {
			return false, err
		}
		n.Requests++
		return true, writeRec(bw, recRequest, b)
	})
	if err != nil {
		return err
	}
	err = sn.TableRows(func(table string, id uint64, row []byte) (bool, error) {
		buf = append(append(append(buf[:0], byte(len(table))), table...), make([]byte, 8)...)
		binary.BigEndian.PutUint64(buf[len(buf)-8:], id)
		buf = append(buf, row...)
		n.Rows++
		return true, writeRec(bw, recRow, buf)
	})
	if err != nil {
		return err
	}
	err = sn.AuxPrefix(cmdPrefix, func(name string, v []byte) (bool, error) {
		id := strings.TrimPrefix(name, cmdPrefix)
		buf = append(append(append(buf[:0], byte(len(id))), id...), v...)
		n.Cmds++
		return true, writeRec(bw, recCmd, buf)
	})
	if err != nil {
		return err
	}
	cb, _ := json.Marshal(n)
	if err := writeRec(bw, recEnd, cb); err != nil {
		return err
	}
	return bw.Flush()
}

// envelope reads a decision's signed envelope; one whose commit is still on
// its way to disk is waited for (at most durableWait).
func (l *ledgerSnapshot) envelope(ver uint64) ([]byte, error) {
	deadline := time.Now().Add(durableWait)
	for l.s.st.DurableVersion() < ver && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return l.s.st.ChangeEnvelope(ver)
}

func writeRec(w *bufio.Writer, typ byte, b []byte) error {
	if err := w.WriteByte(typ); err != nil {
		return err
	}
	if _, err := w.Write(binary.AppendUvarint(nil, uint64(len(b)))); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

func readRec(r *bufio.Reader) (byte, []byte, error) {
	typ, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, nil, err
	}
	if n > maxSnapRecord {
		return 0, nil, fmt.Errorf("a record of %d bytes (the limit is %d)", n, maxSnapRecord)
	}
	b := make([]byte, n)
	_, err = io.ReadFull(r, b)
	return typ, b, err
}

// Restore makes this reviewer's review state the snapshot's (see the top of
// the file). A snapshot its store already holds (its own, read back at a
// restart) changes nothing.
func (f groupFSM) Restore(rc io.ReadCloser) error {
	br := bufio.NewReaderSize(rc, 64<<10)
	magic, err := br.Peek(len(snapMagic))
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("review group: read the snapshot: %w", err)
	}
	if string(magic) != snapMagic {
		return f.restoreIndexOnly(br)
	}
	_, _ = br.Discard(len(snapMagic))
	typ, hb, err := readRec(br)
	if err != nil || typ != recHeader {
		return fmt.Errorf("review group: the snapshot has no header (%v)", err)
	}
	var h snapHeader
	if err := json.Unmarshal(hb, &h); err != nil || h.Format != snapFormat {
		return fmt.Errorf("review group: a snapshot header of format %d (this node reads %d): %v", h.Format, snapFormat, err)
	}
	have, err := f.s.st.Counter(ctrGroupIndex)
	if err != nil {
		return err
	}
	marker, err := f.s.st.Aux(restoreMarker)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if len(marker) == 0 && have >= h.Index {
		f.s.log.Debug("review group: the ledger holds the snapshot already", "snapshot_index", h.Index, "applied", have)
		return nil
	}
	start := time.Now()
	f.s.log.Info("review group: restoring this reviewer's ledger from a snapshot", "snapshot_index", h.Index,
		"applied", have, "decisions", h.Decision, "redo", len(marker) > 0)
	n, err := f.s.restoreLedger(br, h)
	if err != nil {
		return fmt.Errorf("review group: restore from the snapshot at index %d: %w", h.Index, err)
	}
	f.s.log.Info("review group: ledger restored from a snapshot", "snapshot_index", h.Index, "decisions", n.Decisions,
		"requests", n.Requests, "rows", n.Rows, "commands", n.Cmds, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// restoreIndexOnly reads a snapshot of the earlier format (the applied
// index only): it restores nothing, so it is taken only where the store
// holds that much already.
func (f groupFSM) restoreIndexOnly(r io.Reader) error {
	b, err := io.ReadAll(io.LimitReader(r, 64))
	if err != nil {
		return fmt.Errorf("review group: read the snapshot: %w", err)
	}
	want, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("review group: the snapshot is not this state machine's: %w", err)
	}
	have, err := f.s.st.Counter(ctrGroupIndex)
	if err != nil {
		return err
	}
	if have < want {
		return fmt.Errorf("review group: this reviewer's ledger applied the group's log through %d, the snapshot (of the earlier format, without the ledger) through %d; "+
			"restore its home from another reviewer's copy", have, want)
	}
	return nil
}

// restoreLedger writes the snapshot's records after its header.
func (s *Service) restoreLedger(br *bufio.Reader, h snapHeader) (snapCounts, error) {
	ctx := context.Background()
	var n snapCounts
	marker := []byte(strconv.FormatUint(h.Index, 10))
	if err := s.st.Update(ctx, func(tx *store.Txn) error {
		tx.SetAux(restoreMarker, marker)
		return nil
	}); err != nil {
		return n, err
	}
	// The tables become the snapshot's: every row goes first.
	for {
		var cleared int
		err := s.st.Update(ctx, func(tx *store.Txn) (err error) {
			cleared, err = tx.ClearTableRows(restoreBatchRecords * 4)
			return err
		})
		if err != nil {
			return n, err
		}
		if cleared == 0 {
			break
		}
	}
	type rec struct {
		typ byte
		b   []byte
	}
	var batch []rec
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := s.st.Update(ctx, func(tx *store.Txn) error {
			for _, r := range batch {
				if err := s.restoreRec(tx, r.typ, r.b); err != nil {
					return err
				}
			}
			return nil
		})
		batch, size = batch[:0], 0
		return err
	}
	for {
		typ, b, err := readRec(br)
		if err != nil {
			return n, fmt.Errorf("the snapshot ends before its end record: %w", err)
		}
		if typ == recEnd {
			var want snapCounts
			if err := json.Unmarshal(b, &want); err != nil {
				return n, fmt.Errorf("the end record: %w", err)
			}
			if want != n {
				return n, fmt.Errorf("the snapshot says it holds %+v, it held %+v", want, n)
			}
			break
		}
		switch typ {
		case recDecision:
			n.Decisions++
		case recRequest:
			n.Requests++
		case recRow:
			n.Rows++
		case recCmd:
			n.Cmds++
		default:
			return n, fmt.Errorf("a record of type %q", typ)
		}
		batch = append(batch, rec{typ, b})
		if size += len(b); len(batch) >= restoreBatchRecords || size >= restoreBatchBytes {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := flush(); err != nil {
		return n, err
	}
	err := s.st.Update(ctx, func(tx *store.Txn) error {
		tx.SetCounter(store.CtrDecision, h.Decision)
		tx.SetCounter(ctrApplied, h.Applied)
		tx.SetCounter(ctrGroupIndex, h.Index)
		tx.DeleteAux(restoreMarker)
		return nil
	})
	return n, err
}

// restoreRec writes one record of a snapshot in tx.
func (s *Service) restoreRec(tx *store.Txn, typ byte, b []byte) error {
	switch typ {
	case recDecision:
		if len(b) < 8 {
			return errors.New("a short decision record")
		}
		return s.restoreDecision(tx, binary.BigEndian.Uint64(b[:8]), b[8:])
	case recRequest:
		r := &storepb.Request{}
		if err := proto.Unmarshal(b, r); err != nil {
			return fmt.Errorf("a request record: %w", err)
		}
		return s.restoreRequest(tx, r)
	case recRow:
		if len(b) < 1 || len(b) < 1+int(b[0])+8 {
			return errors.New("a short table row record")
		}
		table := string(b[1 : 1+b[0]])
		id := binary.BigEndian.Uint64(b[1+b[0] : 9+b[0]])
		tx.PutRow(table, id, append([]byte(nil), b[9+b[0]:]...))
		return nil
	case recCmd:
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return errors.New("a short command record")
		}
		tx.SetAux(cmdPrefix+string(b[1:1+b[0]]), append([]byte(nil), b[1+b[0]:]...))
		return nil
	}
	return fmt.Errorf("a record of type %q", typ)
}

// restoreDecision stores the decision with seq, its signed envelope env, as
// a member stores one it received; one held already under seq with the same
// body is kept.
func (s *Service) restoreDecision(tx *store.Txn, seq uint64, env []byte) error {
	e := &pb.Envelope{}
	body := &pb.Body{}
	if err := proto.Unmarshal(env, e); err != nil {
		return fmt.Errorf("decision %d: %w", seq, err)
	}
	if err := proto.Unmarshal(e.Body, body); err != nil {
		return fmt.Errorf("decision %d: %w", seq, err)
	}
	hash := store.BodyHash(e.Body)
	if _, h, ok, err := tx.Decision(seq); err != nil {
		return err
	} else if ok && h == hash {
		return nil
	}
	origin := peer.ID(body.Origin)
	held, ok, err := tx.HeldOrigin(origin, body.OriginVersion)
	if err != nil {
		return err
	}
	ver := held.LocalVersion
	switch {
	case ok:
	case origin == s.roles.Self():
		// This node's own decision, lost here (a home restored from an
		// older copy): back at its version.
		if _, err := tx.PutOwnRecovered(body, hash, env); err != nil {
			return err
		}
		ver = body.OriginVersion
	default:
		if ver, err = tx.AppendReceived(body, hash, env); err != nil {
			return err
		}
	}
	tx.PutDecision(seq, ver, hash)
	return nil
}

// restoreRequest writes a request row of a snapshot under this node's own
// id for its origin (a new one if it holds none), pointing at this node's
// copy of its decision.
func (s *Service) restoreRequest(tx *store.Txn, r *storepb.Request) error {
	if r.Origin == "" {
		return errors.New("a request record without an origin")
	}
	local, err := tx.RequestByOrigin(r.Origin)
	switch {
	case err == nil:
		r.Id = local.Id
	case errors.Is(err, store.ErrNotFound):
		local = nil
		if r.Id, err = tx.Next(store.CtrRequest); err != nil {
			return err
		}
	default:
		return err
	}
	switch {
	case r.Sequence > 0:
		ver, _, ok, err := tx.Decision(r.Sequence)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("request %s is decided under sequence %d, which the snapshot does not hold", r.Origin, r.Sequence)
		}
		r.ChangeVersion = ver
	case local != nil && local.Status == r.Status:
		r.ChangeVersion = local.ChangeVersion // its rejection, or its request, as held here
	default:
		r.ChangeVersion = 0
	}
	if r.Status == Waiting.String() {
		r.Reviewer, r.ReviewerId = s.roles.SelfName(), []byte(s.roles.Self())
	}
	tx.PutRequest(r)
	return nil
}

// StoreConfiguration records a configuration entry's index as applied: the
// index a snapshot carries then names every entry before it, also where no
// command came yet (the founder's first snapshot, right after its
// bootstrap entry).
func (f groupFSM) StoreConfiguration(index uint64, _ raft.Configuration) {
	err := f.s.st.Update(context.Background(), func(tx *store.Txn) error {
		last, err := tx.CounterValue(ctrGroupIndex)
		if err != nil || index <= last {
			return err
		}
		tx.SetCounter(ctrGroupIndex, index)
		return nil
	})
	if err != nil {
		f.s.log.Warn("review group: record a configuration entry's index", "index", index, "err", err)
	}
}

// HoldsLedger reports whether this node's store holds a review ledger:
// a request or a decision made here or received (the founder of a group
// that holds one bootstraps alone and hands it on in a snapshot).
func (s *Service) HoldsLedger() (bool, error) {
	for _, c := range []string{store.CtrRequest, store.CtrDecision, ctrApplied} {
		v, err := s.st.Counter(c)
		if err != nil || v > 0 {
			return v > 0, err
		}
	}
	return false, nil
}

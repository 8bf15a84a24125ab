package stream

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// Retention: the delivery records of this node's changes (what the
// acknowledgement rows are derived from) are dropped once every receiver
// acknowledged them and they are older than the retention window. The
// record of each resource's latest change stays, so a partner added later
// still gets every resource; the change log itself stays (it is
// ferry.changes).

// Retention tuning (variables for the tests).
var (
	// retentionScan bounds the records one pass looks at.
	retentionScan = 200_000
	// retentionChunk bounds the records one commit drops, and the records
	// a pass holds at once to drop (a pass of a busy node's window would
	// otherwise hold tens of thousands, and their deletes, in one go: live
	// heap that GOGC=400 multiplies by five in the resident memory).
	retentionChunk = 2_000
)

// Truncate drops the delivery records created before cutoff that every
// receiver acknowledged, except the latest change of each resource (a
// resource change stays until a later one marks it superseded,
// store.Txn.Supersede). It returns how many it dropped.
//
// Passes sweep the records like a clock hand: each looks at up to
// retentionScan records from where the last one stopped, and once a pass
// reaches the cutoff (or the end of the log) the next starts over from the
// oldest record. Records kept for now (not acknowledged yet, or the latest
// change of a resource until a later one supersedes it) are looked at again
// on the next turn, and any number of them never stops the sweep.
func (s *Sender) Truncate(ctx context.Context, cutoff time.Time) (int, error) {
	c := cutoff.UnixNano()
	type drop struct {
		e     store.OwnEntry
		recvs []peer.ID
	}
	var drops []drop
	// A lane's receivers, asked once a pass rather than once a record.
	receivers := map[Lane][]peer.ID{}
	scanned, dropped := 0, 0
	s.mu.Lock()
	from := s.truncFrom
	s.mu.Unlock()
	// Each scan stops once it holds retentionChunk records to drop, which
	// are dropped before the next scan goes on from there: what a pass
	// holds in memory at once is one chunk, whatever the load.
	for {
		drops = drops[:0]
		next := uint64(0) // the turn is over unless a scan stops at a bound
		more := false     // stopped with a full chunk: scan on after it
		err := s.st.OwnEntriesFrom(from, func(e store.OwnEntry) bool {
			if e.CreatedAt >= c {
				return false
			}
			scanned++
			recvs := e.To
			if len(recvs) == 0 {
				l := Lane(e.Lane)
				r, ok := receivers[l]
				if !ok {
					r = s.aud.Receivers(l)
					receivers[l] = r
				}
				recvs = r
			}
			acked := true
			for _, p := range recvs {
				if p != s.host.ID() && s.Lane(p, Lane(e.Lane)).Floor < e.Version {
					acked = false
					break
				}
			}
			if acked && (e.Superseded || !isResource(e.Kind)) {
				drops = append(drops, drop{e, recvs})
			}
			if scanned >= retentionScan || len(drops) >= retentionChunk {
				next = e.Version + 1
				more = scanned < retentionScan
				return false
			}
			return true
		})
		if err != nil {
			return dropped, fmt.Errorf("scan delivery records: %w", err)
		}
		if len(drops) > 0 {
			err := s.st.Update(ctx, func(tx *store.Txn) error {
				for _, d := range drops {
					tx.DropOwnEntry(d.e, d.recvs)
				}
				return nil
			})
			if err != nil {
				return dropped, err
			}
			dropped += len(drops)
		}
		from = next
		if !more {
			break
		}
	}
	s.mu.Lock()
	s.truncFrom = from
	s.mu.Unlock()
	return dropped, nil
}

func isResource(k pb.Kind) bool {
	return k == pb.Kind_KIND_RESOURCE_CREATE || k == pb.Kind_KIND_RESOURCE_UPDATE || k == pb.Kind_KIND_RESOURCE_DELETE
}

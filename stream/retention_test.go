package stream

import (
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/store"
)

func ownRecords(t *testing.T, st *store.Store) int {
	t.Helper()
	n := 0
	if err := st.OwnEntriesFrom(0, func(store.OwnEntry) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	return n
}

// supersede marks own resource changes as superseded by later ones.
func supersede(t *testing.T, st *store.Store, vers []uint64) {
	t.Helper()
	err := st.Update(t.Context(), func(tx *store.Txn) error {
		for _, v := range vers {
			tx.Supersede(v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRetentionSweepsPastKeptRecords: records kept for good at the front
// (resources' current states), more than one pass looks at, do not stop
// retention from dropping the acknowledged records behind them; once a kept
// record is superseded, a later turn of the sweep drops it too.
func TestRetentionSweepsPastKeptRecords(t *testing.T) {
	scan, chunk := retentionScan, retentionChunk
	retentionScan, retentionChunk = 50, 20
	t.Cleanup(func() { retentionScan, retentionChunk = scan, chunk })

	rec := &recorder{}
	p := newPair(t, rec)
	vers := p.commit(300, 30)
	wait.For(t, waitTimeout, "B acknowledged everything", func() bool { return p.snd.Lane(p.b.id, LaneResource).Floor >= vers[len(vers)-1] })

	// The first 150 are their resources' latest changes; the rest were
	// superseded.
	supersede(t, p.a.st, vers[150:])
	sweep := func(passes int) int {
		dropped := 0
		for range passes {
			n, err := p.snd.Truncate(t.Context(), time.Now().Add(time.Second))
			if err != nil {
				t.Fatal(err)
			}
			dropped += n
		}
		return dropped
	}
	// 300 records, 50 a pass: one turn is 6 passes.
	if n := sweep(7); n != 150 {
		t.Fatalf("dropped %d records in a turn of the sweep, want the 150 not kept", n)
	}
	if n := ownRecords(t, p.a.st); n != 150 {
		t.Fatalf("%d records left, want the 150 kept", n)
	}
	// The kept ones are superseded: the next turn drops them.
	supersede(t, p.a.st, vers[:150])
	if n := sweep(4); n != 150 {
		t.Fatalf("dropped %d superseded records, want 150", n)
	}
	if n := ownRecords(t, p.a.st); n != 0 {
		t.Fatalf("%d records left after every one was superseded", n)
	}
}

// TestRetentionKeepsWhatIsNotAcknowledged: a record a receiver has not
// acknowledged stays, and goes once it is acknowledged.
func TestRetentionKeepsWhatIsNotAcknowledged(t *testing.T) {
	rec := &recorder{}
	p := newPair(t, rec)
	vers := p.commit(40, 10)
	wait.For(t, waitTimeout, "B acknowledged everything", func() bool { return p.snd.Lane(p.b.id, LaneResource).Floor >= vers[len(vers)-1] })
	p.rcv.Close() // B stops answering: what A commits now stays owed
	more := p.commit(10, 10)
	supersede(t, p.a.st, append(vers, more...))
	if n, err := p.snd.Truncate(t.Context(), time.Now().Add(time.Second)); err != nil || n != 40 {
		t.Fatalf("dropped %d (%v), want the 40 acknowledged", n, err)
	}
	if n := ownRecords(t, p.a.st); n != len(more) {
		t.Fatalf("%d records left, want the %d owed", n, len(more))
	}
}

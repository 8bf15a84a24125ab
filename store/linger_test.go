package store

import (
	"context"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestASequentialClientRarelyWaitsForCompany: a client that waits for each
// answer before it asks again never brings company to a lingering round,
// so after each wait lingerRest rounds go at once.
func TestASequentialClientRarelyWaitsForCompany(t *testing.T) {
	key, _ := newKey(t)
	s := open(t, t.TempDir(), key)
	const n = 200
	for i := range n {
		if err := s.Update(context.Background(), func(tx *Txn) error {
			tx.SetCounter("c", uint64(i))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if got, most := testutil.ToFloat64(s.m.lingers), float64(n/(lingerRest+1)+1); got > most {
		t.Fatalf("%v rounds lingered for a sequential client, want at most %v", got, most)
	}
}

// TestConcurrentWritersShareRounds: many writers at once are committed in
// fewer rounds than operations, each answered once, with or without
// lingering.
func TestConcurrentWritersShareRounds(t *testing.T) {
	key, _ := newKey(t)
	s := open(t, t.TempDir(), key)
	const writers, each = 16, 50
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				errs <- s.Update(context.Background(), func(tx *Txn) error {
					tx.SetCounter("w", uint64(w*each+i))
					return nil
				})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ops, rounds := testutil.ToFloat64(s.m.ops), testutil.ToFloat64(s.m.batches)
	if ops != writers*each || rounds >= ops {
		t.Fatalf("%v operations in %v rounds; want %d in fewer", ops, rounds, writers*each)
	}
}

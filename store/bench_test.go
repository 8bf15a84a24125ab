package store

import (
	"context"

	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble"
)

// BenchmarkGroupCommit64 is the store's hot path: 64 concurrent callers, each
// committing 256-byte records and waiting for the fsync that covers them.
func BenchmarkGroupCommit64(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	val := make([]byte, 256)
	var n atomic.Uint64
	b.SetParallelism(32) // 32 x GOMAXPROCS(2) = 64 callers
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := n.Add(1)
			err := s.Update(context.Background(), func(tx *Txn) error {
				tx.PutRow("bench", id, val)
				return nil
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkFsyncPerRecord is the baseline: the same records, one Pebble
// commit with fsync each, from one caller.
func BenchmarkFsyncPerRecord(b *testing.B) {
	db, err := pebble.Open(b.TempDir(), &pebble.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	val := make([]byte, 256)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := db.Set(rowKey("bench", uint64(i)), val, pebble.Sync); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

package store

import (
	"context"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble"

	"github.com/ferrynet/ferry/protocols/pb"
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

// BenchmarkLightRound is a round of one own change at a time (light load:
// each caller waits for its answer before the next): what a round pays
// whole, as CPU (user and system, the store's goroutines and the kernel's
// side of its syncs) per round.
func BenchmarkLightRound(b *testing.B) {
	key, self := newKey(b)
	s, err := Open(b.TempDir(), Options{Signer: key})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	val := make([]byte, 256)
	cpu0 := processCPU()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		err := s.Update(context.Background(), func(tx *Txn) error {
			if _, _, err := tx.AppendOwn(&pb.Body{Origin: []byte(self), Kind: pb.Kind_KIND_RESOURCE_CREATE, Payload: val}); err != nil {
				return err
			}
			tx.PutRow("bench", uint64(i), val[:32])
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/round")
}

func processCPU() time.Duration {
	var r syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r)
	return time.Duration(r.Utime.Nano() + r.Stime.Nano())
}

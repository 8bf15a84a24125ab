package admin

import (
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestRateBookSample: each interval is the acknowledged entries since the
// previous sample per second; a counter that went back (a restarted
// sender) counts from zero; at most RateSamples intervals are kept.
func TestRateBookSample(t *testing.T) {
	a, b := peer.ID("a"), peer.ID("b")
	var rb rateBook
	rb.sample(map[peer.ID]uint64{a: 0}, 5*time.Second)
	rb.sample(map[peer.ID]uint64{a: 10, b: 5}, 5*time.Second)
	rb.sample(map[peer.ID]uint64{a: 10, b: 3}, 5*time.Second)
	if got := rb.series[a]; !slices.Equal(got, []float64{0, 2, 0}) {
		t.Fatalf("a: %v", got)
	}
	if got := rb.series[b]; !slices.Equal(got, []float64{1, 0.6}) {
		t.Fatalf("b: %v", got)
	}
	for i := 0; i < RateSamples+5; i++ {
		rb.sample(map[peer.ID]uint64{a: 10 + uint64(i)*5}, 5*time.Second)
	}
	if got := rb.series[a]; len(got) != RateSamples || got[len(got)-1] != 1 {
		t.Fatalf("a after many samples: %d samples, last %v", len(got), got[len(got)-1])
	}
}

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
	now := time.Now()
	rb.sample(map[peer.ID]uint64{a: 0}, 5*time.Second, now)
	if !rb.sample(map[peer.ID]uint64{a: 10, b: 5}, 5*time.Second, now) {
		t.Fatal("entries acknowledged, and sample says none")
	}
	rb.sample(map[peer.ID]uint64{a: 10, b: 3}, 5*time.Second, now)
	if got := rb.series[a]; !slices.Equal(got, []float64{0, 2, 0}) {
		t.Fatalf("a: %v", got)
	}
	if got := rb.series[b]; !slices.Equal(got, []float64{1, 0.6}) {
		t.Fatalf("b: %v", got)
	}
	for i := 0; i < RateSamples+5; i++ {
		rb.sample(map[peer.ID]uint64{a: 10 + uint64(i)*5}, 5*time.Second, now)
	}
	if got := rb.series[a]; len(got) != RateSamples || got[len(got)-1] != 1 {
		t.Fatalf("a after many samples: %d samples, last %v", len(got), got[len(got)-1])
	}
}

// TestRateBookRests: an interval with nothing acknowledged reports so (the
// sampler then rests); the intervals rested through read as zeros, one per
// whole interval, and only while resting.
func TestRateBookRests(t *testing.T) {
	a := peer.ID("a")
	every := 5 * time.Second
	rb := rateBook{acks: newAckSignal()}
	t0 := time.Now()
	rb.sample(map[peer.ID]uint64{a: 0}, every, t0)
	rb.sample(map[peer.ID]uint64{a: 10}, every, t0.Add(every))
	if rb.sample(map[peer.ID]uint64{a: 10}, every, t0.Add(2*every)) {
		t.Fatal("nothing acknowledged, and sample says something was")
	}
	rb.fill(t0.Add(5*every+every/2), every) // not resting: nothing filled
	if got := rb.series[a]; !slices.Equal(got, []float64{0, 2, 0}) {
		t.Fatalf("filled while sampling: %v", got)
	}
	rb.acks.resting.Store(true)
	rb.fill(t0.Add(5*every+every/2), every)
	if got := rb.series[a]; !slices.Equal(got, []float64{0, 2, 0, 0, 0, 0}) || !rb.at.Equal(t0.Add(5*every)) {
		t.Fatalf("after a rest of three intervals and a half: %v, at %v", got, rb.at.Sub(t0))
	}
	rb.fill(t0.Add(5*every+every/2+time.Second), every) // the same interval: no more
	if got := rb.series[a]; len(got) != 6 {
		t.Fatalf("filled twice: %v", got)
	}
	rb.fill(t0.Add(time.Hour), every)
	if got := rb.series[a]; len(got) != RateSamples || got[len(got)-1] != 0 {
		t.Fatalf("after an hour at rest: %d samples", len(got))
	}
	select {
	case <-rb.acks.ch:
		t.Fatal("a wake with no acknowledgement")
	default:
	}
	rb.acks.acked()
	select {
	case <-rb.acks.ch:
	default:
		t.Fatal("an acknowledgement did not wake the resting sampler")
	}
	rb.acks.resting.Store(false)
	rb.acks.acked()
	select {
	case <-rb.acks.ch:
		t.Fatal("a wake while sampling")
	default:
	}
}

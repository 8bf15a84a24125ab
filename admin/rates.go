package admin

// rates.go samples the sender's acknowledged entries per receiver every
// RateInterval and keeps the last RateSamples intervals, so the console can
// show deliveries per second per peer and a sparkline of the last minutes
// without Prometheus. One goroutine, one map copy per tick, and only while
// there is traffic: after an interval in which nothing was acknowledged the
// sampler rests (no timer) until the next acknowledgement wakes it (the
// Feed's Acked); the intervals it rested through are zeros, filled in when
// it wakes or when someone reads the rates.

import (
	"cmp"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

const (
	// RateInterval is how often the acknowledged counts are sampled: fine
	// enough to see a burst, coarse enough to cost nothing.
	RateInterval = 5 * time.Second
	// RateSamples is how many intervals are kept: five minutes.
	RateSamples = 60
)

// PeerRate is one receiver's delivery rate: entries it acknowledged per
// second in each of the last intervals, oldest first (the last one is the
// latest), and the total since the node started.
type PeerRate struct {
	Receiver   string    `json:"receiver"`
	ReceiverID string    `json:"receiver_id"`
	PerSecond  float64   `json:"per_second"` // the latest interval
	Series     []float64 `json:"series"`
	Acked      uint64    `json:"acked"`
}

// rateBook holds the samples; the sampler writes, the admin API reads.
type rateBook struct {
	mu     sync.Mutex
	last   map[peer.ID]uint64
	series map[peer.ID][]float64
	// at is the end of the last interval sampled or filled.
	at time.Time
	// acks wakes the sampler while it rests (resting set).
	acks *ackSignal
}

// ackSignal wakes a resting rate sampler at the first acknowledgement
// (Feed.Acked calls acked on every one: one atomic load while the sampler
// runs).
type ackSignal struct {
	resting atomic.Bool
	ch      chan struct{}
}

func newAckSignal() *ackSignal { return &ackSignal{ch: make(chan struct{}, 1)} }

// acked wakes the sampler if it rests.
func (a *ackSignal) acked() {
	if a.resting.Load() {
		select {
		case a.ch <- struct{}{}:
		default:
		}
	}
}

// sample adds the interval ending at end: each receiver's acknowledged
// entries since the previous sample, per second. A receiver first seen
// starts from zero. It reports whether anything was acknowledged.
func (b *rateBook) sample(now map[peer.ID]uint64, every time.Duration, end time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.series == nil {
		b.series = map[peer.ID][]float64{}
	}
	moved := false
	for p, v := range now {
		d := v
		if prev, ok := b.last[p]; ok && v >= prev {
			d = v - prev
		}
		moved = moved || d > 0
		b.series[p] = keepLast(append(b.series[p], float64(d)/every.Seconds()))
	}
	b.last, b.at = now, end
	return moved
}

// keepLast keeps the last RateSamples of s.
func keepLast(s []float64) []float64 {
	if len(s) > RateSamples {
		return s[len(s)-RateSamples:]
	}
	return s
}

// fill adds a zero for every whole interval since the last one up to now,
// while the sampler rests (nothing was acknowledged meanwhile: the zeros
// are what sampling would have found). b.mu is held.
func (b *rateBook) fill(now time.Time, every time.Duration) {
	if b.acks == nil || !b.acks.resting.Load() || b.at.IsZero() {
		return
	}
	k := int(now.Sub(b.at) / every)
	if k <= 0 {
		return
	}
	for p, s := range b.series {
		for range min(k, RateSamples) {
			s = append(s, 0)
		}
		b.series[p] = keepLast(s)
	}
	b.at = b.at.Add(time.Duration(k) * every)
}

// sampleRates runs until the node or its admin API stops: a sample every
// RateInterval while receivers acknowledge, none at rest.
func (srv *Server) sampleRates() {
	b, every := &srv.rates, RateInterval
	acks := b.acks
	t := time.NewTimer(every)
	defer t.Stop()
	b.sample(srv.sender.AckedEntries(), every, time.Now()) // the baseline
	for {
		select {
		case <-srv.ctx.Done():
			return
		case <-srv.quit:
			return
		case <-acks.ch:
			// Traffic after a rest: the rest's intervals are zeros, the
			// next sample is at the end of the interval under way.
			b.mu.Lock()
			b.fill(time.Now(), every)
			next := time.Until(b.at.Add(every))
			acks.resting.Store(false)
			b.mu.Unlock()
			t.Reset(max(next, 0))
			continue
		case <-t.C:
		}
		b.mu.Lock()
		end := b.at.Add(every)
		b.mu.Unlock()
		if b.sample(srv.sender.AckedEntries(), every, end) {
			t.Reset(time.Until(end.Add(every)))
			continue
		}
		// Nothing acknowledged in that interval: rest until something is.
		// An acknowledgement counted before resting was set sent no wake:
		// look once more.
		acks.resting.Store(true)
		b.mu.Lock()
		moved := !maps.Equal(b.last, srv.sender.AckedEntries())
		b.mu.Unlock()
		if moved {
			acks.resting.Store(false)
			t.Reset(time.Until(end.Add(every)))
		}
	}
}

// Rates reports every receiver's rate, by name.
func (srv *Server) Rates() []PeerRate {
	srv.rates.mu.Lock()
	srv.rates.fill(time.Now(), RateInterval)
	out := make([]PeerRate, 0, len(srv.rates.series))
	for p, s := range srv.rates.series {
		r := PeerRate{Receiver: srv.book.Name(p), ReceiverID: p.String(), Series: append([]float64(nil), s...), Acked: srv.rates.last[p]}
		if len(s) > 0 {
			r.PerSecond = s[len(s)-1]
		}
		out = append(out, r)
	}
	srv.rates.mu.Unlock()
	slices.SortFunc(out, func(a, b PeerRate) int {
		return cmp.Or(cmp.Compare(a.Receiver, b.Receiver), cmp.Compare(a.ReceiverID, b.ReceiverID))
	})
	return out
}

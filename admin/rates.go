package admin

// rates.go samples the sender's acknowledged entries per receiver every
// RateInterval and keeps the last RateSamples intervals, so the console can
// show deliveries per second per peer and a sparkline of the last minutes
// without Prometheus. One goroutine, one map copy per tick: cheap.

import (
	"cmp"
	"slices"
	"sync"
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
}

// sample adds one interval: each receiver's acknowledged entries since the
// previous sample, per second. A receiver first seen starts from zero.
func (b *rateBook) sample(now map[peer.ID]uint64, every time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.series == nil {
		b.series = map[peer.ID][]float64{}
	}
	for p, v := range now {
		d := v
		if prev, ok := b.last[p]; ok && v >= prev {
			d = v - prev
		}
		s := append(b.series[p], float64(d)/every.Seconds())
		if len(s) > RateSamples {
			s = s[len(s)-RateSamples:]
		}
		b.series[p] = s
	}
	b.last = now
}

// sampleRates runs until the node or its admin API stops.
func (srv *Server) sampleRates() {
	t := time.NewTicker(RateInterval)
	defer t.Stop()
	srv.rates.sample(srv.sender.AckedEntries(), RateInterval) // the baseline
	for {
		select {
		case <-srv.ctx.Done():
			return
		case <-srv.quit:
			return
		case <-t.C:
			srv.rates.sample(srv.sender.AckedEntries(), RateInterval)
		}
	}
}

// Rates reports every receiver's rate, by name.
func (srv *Server) Rates() []PeerRate {
	srv.rates.mu.Lock()
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

package search

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// limiter is one token bucket per peer: rate tokens a second, at most burst.
// Its table is bounded: when full, buckets that have refilled are forgotten
// (a forgotten peer starts again with a full bucket, which is what it would
// have anyway), and a peer that finds no room is refused.
type limiter struct {
	rate, burst float64
	max         int
	now         func() time.Time

	mu    sync.Mutex
	peers map[peer.ID]*bucket
}

type bucket struct {
	tokens  float64
	last    time.Time
	refused bool // the last call was refused
}

func newLimiter(rate float64, burst, max int, now func() time.Time) *limiter {
	return &limiter{rate: rate, burst: float64(burst), max: max, now: now, peers: map[peer.ID]*bucket{}}
}

// allow takes one token from p's bucket; false when it is empty. first is
// true on the first refusal after an allowed call (log that one).
func (l *limiter) allow(p peer.ID) (ok, first bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.peers[p]
	if b == nil {
		if len(l.peers) >= l.max {
			l.prune(now)
			if len(l.peers) >= l.max {
				return false, false
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.peers[p] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		first = !b.refused
		b.refused = true
		return false, first
	}
	b.tokens--
	b.refused = false
	return true, false
}

// prune forgets the buckets that are full again.
func (l *limiter) prune(now time.Time) {
	for p, b := range l.peers {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.peers, p)
		}
	}
}

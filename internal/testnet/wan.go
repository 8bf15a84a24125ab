package testnet

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// WAN makes a mocknet's links internet-like (Options.WAN): each pair of
// nodes gets a one-way latency of its own, and every write on a stream is
// delayed by that latency, a jitter, and now and then a retransmission.
//
// The mocknet carries a stream as a reliable, ordered pipe, and so does
// libp2p over TCP (or QUIC): a lost packet is never a lost message, it is
// sent again about one retransmission timeout later, and what the stream
// carries behind it waits (head-of-line blocking). The model follows
// that: a write is the model's packet; with probability Loss it is lost
// once and arrives RTO later than it would have; writes arrive in the order
// they were made (a write never overtakes the one before it, so jitter and
// a retransmission delay what follows too). Write returns at once (a
// socket buffer: up to wanWindow bytes in flight per stream, then it
// waits), and a stream's Close sends its close after the data, as a FIN
// follows the data.
//
// What is not modelled: bandwidth (links are as fast as the machine), loss
// shared by the streams of one connection (each stream is delayed on its
// own; yamux over TCP would stall them all), and loss of a dial (a new
// connection costs two round trips: TCP's handshake and the security
// handshake, muxer negotiation riding on it).
type WAN struct {
	// Seed draws the pair latencies and every stream's jitter and losses:
	// a pair has the same latency in every run with the same Seed.
	Seed uint64
	// MinLatency and MaxLatency bound the one-way latency of a pair, drawn
	// uniformly (a round trip is twice it).
	MinLatency, MaxLatency time.Duration
	// Jitter is the most a write is delayed beyond its pair's latency
	// (uniform in [0, Jitter)).
	Jitter time.Duration
	// Loss is the share of writes lost once and retransmitted.
	Loss float64
}

// Internet is the link of issue 22's scale target: 20-200 ms one way
// (per pair), up to 20 ms jitter, 1% of writes lost once.
func Internet(seed uint64) *WAN {
	return &WAN{Seed: seed, MinLatency: 20 * time.Millisecond, MaxLatency: 200 * time.Millisecond,
		Jitter: 20 * time.Millisecond, Loss: 0.01}
}

// minRTO is Linux's floor on TCP's retransmission timeout (tcp_rto_min):
// a lost packet is sent again about a round trip plus this later.
const minRTO = 200 * time.Millisecond

// wanWindow is how many bytes a stream holds in flight before a write
// waits for delivery: a socket buffer's worth.
const wanWindow = 1 << 20

// Latency is the one-way latency of the pair (a, b), either way round.
func (w *WAN) Latency(a, b peer.ID) time.Duration {
	if w.MaxLatency <= w.MinLatency {
		return w.MinLatency
	}
	h := pairHash(w.Seed, a, b)
	span := uint64(w.MaxLatency - w.MinLatency)
	return w.MinLatency + time.Duration(h%(span+1))
}

// RTO is how much later a lost write to a peer lat away arrives: a round
// trip plus minRTO.
func (w *WAN) RTO(lat time.Duration) time.Duration { return 2*lat + minRTO }

// Handshake is what a new connection to a peer lat away costs its dialer
// before it carries anything: two round trips.
func (w *WAN) Handshake(lat time.Duration) time.Duration { return 4 * lat }

func pairHash(seed uint64, a, b peer.ID) uint64 {
	x, y := []byte(a), []byte(b)
	if bytes.Compare(x, y) > 0 {
		x, y = y, x
	}
	h := fnv.New64a()
	var s [8]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	_, _ = h.Write(s[:])
	_, _ = h.Write(x)
	_, _ = h.Write([]byte{0})
	_, _ = h.Write(y)
	return h.Sum64()
}

// WANStats counts what a network's links did.
type WANStats struct {
	Writes  int64 // writes carried
	Lost    int64 // writes lost once and retransmitted
	Dials   int64 // new connections that paid a handshake
	Delayed int64 // writes that waited behind an earlier one (jitter or a loss ahead)
}

// wanLinks is one network's running link model: its streams' senders and
// its counters.
type wanLinks struct {
	w       *WAN
	streams atomic.Uint64
	done    chan struct{}
	stop    sync.Once
	wg      sync.WaitGroup

	writes, lost, dials, delayed atomic.Int64
}

func newWANLinks(w *WAN) *wanLinks { return &wanLinks{w: w, done: make(chan struct{})} }

// close stops every stream's sender (what is still queued is dropped: the
// network is going) and waits for them.
func (l *wanLinks) close() {
	l.stop.Do(func() { close(l.done) })
	l.wg.Wait()
}

func (l *wanLinks) stats() WANStats {
	return WANStats{Writes: l.writes.Load(), Lost: l.lost.Load(), Dials: l.dials.Load(), Delayed: l.delayed.Load()}
}

// handshake delays a dial from a to b that makes a new connection.
func (l *wanLinks) handshake(ctx context.Context, a, b peer.ID) error {
	l.dials.Add(1)
	t := time.NewTimer(l.w.Handshake(l.w.Latency(a, b)))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-l.done:
		return errWANClosed
	}
}

var (
	errWANClosed   = errors.New("wan links: network closed")
	errWriteClosed = errors.New("wan links: write after the stream's write side closed")
)

// wrap returns s with its writes carried over the link model.
func (l *wanLinks) wrap(s network.Stream) network.Stream {
	c := s.Conn()
	a, b := c.LocalPeer(), c.RemotePeer()
	lat := l.w.Latency(a, b)
	ws := &wanStream{Stream: s, l: l, lat: lat, kill: make(chan struct{}),
		rng: rand.New(rand.NewPCG(pairHash(l.w.Seed, a, b), l.streams.Add(1)))}
	ws.space = sync.NewCond(&ws.mu)
	return ws
}

// segment is one write in flight.
type segment struct {
	data []byte
	at   time.Time // when it is due at the far end
}

// wanStream is a stream whose writes are delivered by its own sender
// goroutine, each when it is due (WAN).
type wanStream struct {
	network.Stream
	l   *wanLinks
	lat time.Duration

	mu      sync.Mutex
	space   *sync.Cond // a write waits here while the window is full
	rng     *rand.Rand
	queue   []segment
	queued  int       // bytes in queue
	last    time.Time // when the last queued write is due
	sending bool      // a sender goroutine runs
	closing bool      // the write side closes after the queue
	err     error     // set: writes fail (reset, or delivery failed)
	kill    chan struct{}
	killed  sync.Once
}

func (s *wanStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.err == nil && !s.closing && s.queued >= wanWindow {
		s.space.Wait()
	}
	if s.err != nil {
		return 0, s.err
	}
	if s.closing {
		return 0, errWriteClosed
	}
	w := s.l.w
	at := time.Now().Add(s.lat)
	if w.Jitter > 0 {
		at = at.Add(time.Duration(s.rng.Int64N(int64(w.Jitter))))
	}
	if w.Loss > 0 && s.rng.Float64() < w.Loss {
		at = at.Add(w.RTO(s.lat))
		s.l.lost.Add(1)
	}
	if at.Before(s.last) {
		at = s.last
		s.l.delayed.Add(1)
	}
	s.last = at
	s.queue = append(s.queue, segment{data: bytes.Clone(p), at: at})
	s.queued += len(p)
	s.l.writes.Add(1)
	s.startSender()
	return len(p), nil
}

// startSender starts the sender unless one runs (s.mu held).
func (s *wanStream) startSender() {
	if s.sending {
		return
	}
	s.sending = true
	s.l.wg.Add(1)
	go s.send()
}

// send delivers the queue, each write when due, then the close if one was
// asked, and ends when the queue is empty (a later write starts another).
func (s *wanStream) send() {
	defer s.l.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for {
		s.mu.Lock()
		if s.err != nil || len(s.queue) == 0 {
			closing := s.closing && s.err == nil
			s.sending = false
			s.mu.Unlock()
			if closing {
				_ = s.Stream.CloseWrite()
			}
			return
		}
		seg := s.queue[0]
		s.mu.Unlock()
		t.Reset(time.Until(seg.at))
		select {
		case <-t.C:
		case <-s.kill:
			return
		case <-s.l.done:
			s.fail(errWANClosed)
			_ = s.Stream.Reset()
			return
		}
		_, err := s.Stream.Write(seg.data)
		if err != nil {
			s.fail(err)
			return
		}
		s.mu.Lock()
		if s.err != nil { // reset while the write went: the queue is gone
			s.mu.Unlock()
			return
		}
		s.queue = s.queue[1:]
		s.queued -= len(seg.data)
		s.space.Broadcast()
		s.mu.Unlock()
	}
}

// fail ends the stream's writes with err: the queue is dropped, waiting
// writers and the sender wake.
func (s *wanStream) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.queue, s.queued = nil, 0
	s.space.Broadcast()
	s.mu.Unlock()
	s.killed.Do(func() { close(s.kill) })
}

// CloseWrite closes the write side after what is queued, as a FIN
// follows the data; it does not wait for delivery.
func (s *wanStream) CloseWrite() error {
	s.mu.Lock()
	if s.err != nil || s.closing {
		s.mu.Unlock()
		return nil
	}
	s.closing = true
	s.space.Broadcast()
	if s.sending {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	return s.Stream.CloseWrite()
}

func (s *wanStream) Close() error {
	_ = s.Stream.CloseRead()
	return s.CloseWrite()
}

func (s *wanStream) Reset() error {
	s.fail(network.ErrReset)
	return s.Stream.Reset()
}

func (s *wanStream) ResetWithError(code network.StreamErrorCode) error {
	s.fail(network.ErrReset)
	return s.Stream.ResetWithError(code)
}

package stream

import (
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/store"
)

// The tail keeps this node's most recent own entries in memory, with their
// sealed envelopes, as they are committed: a receiver that keeps up reads
// its backlog from here instead of the store, and ten receivers of the same
// changes read them once. It holds every own entry from its first version
// to its last (an entry that arrives out of order empties it), so a backlog
// after a version it covers is complete.
//
// It keeps what its readers have not read yet, and at most max bytes: an
// entry every reader of the last tailReaderTTL has read past goes (a reader
// that comes back later, or resends after a failure, reads the store), so
// under light load it holds a few rounds' entries rather than max bytes of
// envelopes, which the collector would rescan and, at GOGC=400, multiply
// fivefold in the resident memory.

// DefaultTailBytes bounds the envelopes the tail keeps.
const DefaultTailBytes = 32 << 20

// tailReaderTTL is how long a reader's position holds entries in the tail
// after its last read: a receiver with nothing to send on a lane does not
// read it, and must not pin the tail.
const tailReaderTTL = time.Second

// The tail is a ring: once full, each entry added drops the oldest ones
// until the envelopes fit in max again, so the memory it holds stays level
// under a steady load (dropping the older half at once, as it did, swung
// the live heap by a sixth of the tail, and the resident memory by five
// times that at GOGC=400).
type tail struct {
	mu   sync.RWMutex
	max  int
	ring []tailEntry // ring[head] is the oldest of n entries, in version order
	head int
	n    int
	// bytes are the held envelopes' sizes.
	bytes int
	// from is the version after which the tail is complete (every own
	// entry above it is held); seen is the highest version it was given.
	from, seen uint64
	// readers are where each (receiver, lane) last read after (rmu, a
	// leaf: backlog takes it under mu's read lock).
	rmu     sync.Mutex
	readers map[tailReader]tailRead
}

type tailReader struct {
	p    peer.ID
	lane Lane
}

type tailRead struct {
	after uint64
	at    time.Time
}

// readFloor is the lowest position of the readers of the last
// tailReaderTTL (ok false: none); it forgets the older ones.
func (t *tail) readFloor(now time.Time) (floor uint64, ok bool) {
	t.rmu.Lock()
	defer t.rmu.Unlock()
	for k, r := range t.readers {
		if now.Sub(r.at) > tailReaderTTL {
			delete(t.readers, k)
			continue
		}
		if !ok || r.after < floor {
			floor, ok = r.after, true
		}
	}
	return floor, ok
}

// tailEntry is an own entry with its envelope: the sealer's shape of it
// (with its path, Env nil), or Env set and parsed once (without its paths)
// for every receiver's batches; shape nil: the batch parses it.
type tailEntry struct {
	e     store.OwnEntry
	shape *protocols.EnvelopeShape
	size  int // the envelope's encoded length
}

// at is the i-th oldest entry held.
func (t *tail) at(i int) *tailEntry {
	j := t.head + i
	if j >= len(t.ring) {
		j -= len(t.ring)
	}
	return &t.ring[j]
}

// add appends a committed own entry (commit hooks run in version order).
func (t *tail) add(e store.OwnEntry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seen == 0 {
		t.from = e.Version - 1
	}
	if e.Version <= t.seen || (len(e.Env) == 0 && e.Shape == nil) {
		// Out of order (a recovered change), or an entry it cannot hold:
		// it is complete again only above everything it was given.
		clear(t.ring)
		t.head, t.n, t.bytes = 0, 0, 0
		t.seen = max(t.seen, e.Version)
		t.from = t.seen
		return
	}
	t.seen = e.Version
	if t.n == len(t.ring) {
		ring := make([]tailEntry, max(2*len(t.ring), 64))
		for i := range t.n {
			ring[i] = *t.at(i)
		}
		t.ring, t.head = ring, 0
	}
	// The sealer's shape (with its path) when it gave one: the envelope
	// is then never encoded unless it goes self-contained.
	x := tailEntry{e: e, shape: e.Shape, size: e.EnvelopeSize()}
	if x.shape == nil {
		if s, ok := protocols.ParseEnvelope(e.Env, false); ok {
			x.shape = &s
		}
	}
	t.n++
	*t.at(t.n - 1) = x
	t.bytes += x.size
	floor, read := t.readFloor(time.Now())
	for (t.bytes > t.max && t.n > 1) || (read && t.n > 0 && t.at(0).e.Version <= floor) {
		old := t.at(0)
		t.bytes -= old.size
		t.from = old.e.Version
		*old = tailEntry{}
		t.head++
		if t.head == len(t.ring) {
			t.head = 0
		}
		t.n--
	}
}

// backlog returns what a receiver's lane holds after `after`, as Backlog
// does, and ok=false when the tail does not cover `after`.
func (t *tail) backlog(p peer.ID, lane Lane, broadcast bool, after uint64, maxEntries, maxBytes int) ([]store.Entry, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.seen == 0 || after < t.from {
		return nil, false
	}
	t.rmu.Lock()
	if t.readers == nil {
		t.readers = map[tailReader]tailRead{}
	}
	t.readers[tailReader{p, lane}] = tailRead{after, time.Now()}
	t.rmu.Unlock()
	i := sort.Search(t.n, func(i int) bool { return t.at(i).e.Version > after })
	var out []store.Entry
	size := 0
	for ; i < t.n; i++ {
		x := t.at(i)
		e := &x.e
		if Lane(e.Lane) != lane {
			continue
		}
		if len(e.To) == 0 {
			if !broadcast {
				continue
			}
		} else if !slices.Contains(e.To, p) {
			continue
		}
		if len(out) > 0 && (len(out) == maxEntries || size+x.size > maxBytes) {
			break
		}
		out = append(out, store.Entry{Version: e.Version, Kind: e.Kind, Protocol: e.Protocol, Env: e.Env, Shape: x.shape})
		size += x.size
	}
	return out, true
}

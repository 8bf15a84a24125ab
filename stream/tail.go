package stream

import (
	"slices"
	"sync"

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

// DefaultTailBytes bounds the envelopes the tail keeps.
const DefaultTailBytes = 32 << 20

type tail struct {
	mu  sync.RWMutex
	max int
	es  []store.OwnEntry // in version order; Env set
	// shapes are es's envelopes parsed once (without their paths), for
	// every receiver's batches.
	shapes []*protocols.EnvelopeShape
	bytes  int
	// from is the version after which the tail is complete (every own
	// entry above it is in es); seen is the highest version it was given.
	from, seen uint64
}

// add appends a committed own entry (commit hooks run in version order).
func (t *tail) add(e store.OwnEntry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seen == 0 {
		t.from = e.Version - 1
	}
	if e.Version <= t.seen || len(e.Env) == 0 {
		// Out of order (a recovered change), or an entry it cannot hold:
		// it is complete again only above everything it was given.
		clear(t.es)
		clear(t.shapes)
		t.es, t.shapes, t.bytes = t.es[:0], t.shapes[:0], 0
		t.seen = max(t.seen, e.Version)
		t.from = t.seen
		return
	}
	t.seen = e.Version
	t.es = append(t.es, e)
	var sh *protocols.EnvelopeShape // nil: the batch parses it
	if s, ok := protocols.ParseEnvelope(e.Env, false); ok {
		sh = &s
	}
	t.shapes = append(t.shapes, sh)
	t.bytes += len(e.Env)
	if t.bytes > t.max {
		// Drop the older half at once (amortised).
		cut := len(t.es) / 2
		for _, x := range t.es[:cut] {
			t.bytes -= len(x.Env)
		}
		t.from = t.es[cut-1].Version
		t.es = slices.Delete(t.es, 0, cut)
		t.shapes = slices.Delete(t.shapes, 0, cut)
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
	i, _ := slices.BinarySearchFunc(t.es, after+1, func(e store.OwnEntry, v uint64) int {
		switch {
		case e.Version < v:
			return -1
		case e.Version > v:
			return 1
		}
		return 0
	})
	var out []store.Entry
	size := 0
	for j, e := range t.es[i:] {
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
		if len(out) > 0 && (len(out) == maxEntries || size+len(e.Env) > maxBytes) {
			break
		}
		out = append(out, store.Entry{Version: e.Version, Kind: e.Kind, Protocol: e.Protocol, Env: e.Env, Shape: t.shapes[i+j]})
		size += len(e.Env)
	}
	return out, true
}

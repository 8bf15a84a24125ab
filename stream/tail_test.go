package stream

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/store"
)

func TestTailCoversWhatItHolds(t *testing.T) {
	a, b := peer.ID("a"), peer.ID("b")
	tl := tail{max: 1000}
	env := make([]byte, 100)
	add := func(v uint64, lane Lane, to ...peer.ID) {
		tl.add(store.OwnEntry{Version: v, Lane: uint8(lane), To: to, Env: env})
	}
	if _, ok := tl.backlog(a, LaneResource, true, 0, 10, 1<<20); ok {
		t.Fatal("an empty tail claims to cover a backlog")
	}
	add(10, LaneResource)
	add(11, LaneConsider, a)
	add(12, LaneResource)
	add(13, LaneConsider, b)
	vers := func(es []store.Entry) (out []uint64) {
		for _, e := range es {
			out = append(out, e.Version)
		}
		return out
	}
	if es, ok := tl.backlog(a, LaneResource, true, 9, 10, 1<<20); !ok || len(es) != 2 || es[0].Version != 10 || es[1].Version != 12 {
		t.Fatalf("resource lane after 9: %v %v", vers(es), ok)
	}
	if _, ok := tl.backlog(a, LaneResource, true, 8, 10, 1<<20); ok {
		t.Fatal("the tail claims versions before its first entry")
	}
	if es, ok := tl.backlog(a, LaneConsider, false, 9, 10, 1<<20); !ok || len(es) != 1 || es[0].Version != 11 {
		t.Fatalf("a's considers: %v %v", vers(es), ok)
	}
	if es, ok := tl.backlog(a, LaneResource, false, 9, 10, 1<<20); !ok || len(es) != 0 {
		t.Fatalf("a non-receiver of the broadcast lane got %v", vers(es))
	}
	if es, _ := tl.backlog(a, LaneResource, true, 9, 1, 1<<20); len(es) != 1 {
		t.Fatalf("max entries: %v", vers(es))
	}
	// Over its bytes, the oldest go, one by one: it then covers only what
	// it holds, the newest 1000 bytes (14-23).
	for v := uint64(14); v < 24; v++ {
		add(v, LaneResource)
	}
	if _, ok := tl.backlog(a, LaneResource, true, 9, 100, 1<<20); ok {
		t.Fatal("the trimmed tail still claims its dropped entries")
	}
	if _, ok := tl.backlog(a, LaneResource, true, 12, 100, 1<<20); ok {
		t.Fatal("the trimmed tail still claims 13")
	}
	if es, ok := tl.backlog(a, LaneResource, true, 13, 100, 1<<20); !ok || len(es) != 10 || es[0].Version != 14 {
		t.Fatalf("after 13: %v %v", vers(es), ok)
	}
	if es, ok := tl.backlog(a, LaneResource, true, 20, 100, 1<<20); !ok || len(es) != 3 {
		t.Fatalf("after 20: %v %v", vers(es), ok)
	}
	// An entry out of order (a recovered change), or one without its
	// envelope, empties it: it would no longer be complete.
	add(5, LaneResource)
	if _, ok := tl.backlog(a, LaneResource, true, 20, 100, 1<<20); ok {
		t.Fatal("after an out-of-order entry the tail still covers 20")
	}
	add(24, LaneResource) // above everything seen: covered again from 23
	if es, ok := tl.backlog(a, LaneResource, true, 23, 100, 1<<20); !ok || len(es) != 1 || es[0].Version != 24 {
		t.Fatalf("after 23: %v %v", vers(es), ok)
	}
	tl.add(store.OwnEntry{Version: 30, Lane: uint8(LaneResource)})
	if _, ok := tl.backlog(a, LaneResource, true, 29, 100, 1<<20); ok {
		t.Fatal("after an entry without its envelope the tail still covers 29")
	}
	if _, ok := tl.backlog(a, LaneResource, true, 30, 100, 1<<20); !ok {
		t.Fatal("the tail does not cover what follows the entry without its envelope")
	}
}

// The ring wraps and grows without losing the order: big envelopes first
// (a few fill it; its start goes round the ring), then small ones (it must
// grow while wrapped); a backlog reads the newest max bytes, in version
// order.
func TestTailRingKeepsTheNewest(t *testing.T) {
	a := peer.ID("a")
	tl := tail{max: 1000}
	v := uint64(0)
	for range 200 {
		v++
		tl.add(store.OwnEntry{Version: v, Lane: uint8(LaneResource), Env: make([]byte, 100)})
	}
	for range 1500 {
		v++
		tl.add(store.OwnEntry{Version: v, Lane: uint8(LaneResource), Env: make([]byte, 1)})
		if tl.bytes > tl.max {
			t.Fatalf("at %d the tail holds %d bytes, over its %d", v, tl.bytes, tl.max)
		}
	}
	const held = 1000 // 1-byte envelopes
	es, ok := tl.backlog(a, LaneResource, true, v-held, 2*held, 1<<20)
	if !ok || len(es) != held {
		t.Fatalf("after %d: %d entries, covered %v", v-held, len(es), ok)
	}
	for i, e := range es {
		if e.Version != v-held+1+uint64(i) {
			t.Fatalf("entry %d is version %d, want %d", i, e.Version, v-held+1+uint64(i))
		}
	}
	if _, ok := tl.backlog(a, LaneResource, true, v-held-1, 2*held, 1<<20); ok {
		t.Fatalf("the tail claims %d, which it dropped", v-held)
	}
}

// What every recent reader has read past goes at the next entry; a reader
// further back holds it, until it has not read for tailReaderTTL.
func TestTailDropsWhatItsReadersRead(t *testing.T) {
	a, b := peer.ID("a"), peer.ID("b")
	tl := tail{max: 1 << 20}
	env := make([]byte, 10)
	add := func(v uint64) { tl.add(store.OwnEntry{Version: v, Lane: uint8(LaneResource), Env: env}) }
	for v := uint64(1); v <= 10; v++ {
		add(v)
	}
	if es, ok := tl.backlog(a, LaneResource, true, 0, 100, 1<<20); !ok || len(es) != 10 {
		t.Fatalf("a from 0: %d entries, covered %v", len(es), ok)
	}
	tl.backlog(a, LaneResource, true, 8, 100, 1<<20) // a has read through 8
	tl.backlog(b, LaneResource, true, 5, 100, 1<<20) // b through 5
	add(11)
	if _, ok := tl.backlog(b, LaneResource, true, 4, 100, 1<<20); ok {
		t.Fatal("the tail kept 5, which every reader read")
	}
	if es, ok := tl.backlog(b, LaneResource, true, 5, 100, 1<<20); !ok || len(es) != 6 || es[0].Version != 6 {
		t.Fatalf("b after 5: %d entries, covered %v", len(es), ok)
	}
	// b stops reading: once it is older than the TTL, only a holds.
	tl.rmu.Lock()
	tl.readers[tailReader{b, LaneResource}] = tailRead{after: 5, at: time.Now().Add(-2 * tailReaderTTL)}
	tl.rmu.Unlock()
	add(12)
	if _, ok := tl.backlog(a, LaneResource, true, 7, 100, 1<<20); ok {
		t.Fatal("a reader silent for longer than the TTL still holds the tail")
	}
	if es, ok := tl.backlog(a, LaneResource, true, 8, 100, 1<<20); !ok || len(es) != 4 || es[0].Version != 9 {
		t.Fatalf("a after 8: %d entries, covered %v", len(es), ok)
	}
	if tl.bytes != 4*len(env) {
		t.Fatalf("the tail counts %d bytes for 4 entries of %d", tl.bytes, len(env))
	}
}

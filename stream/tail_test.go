package stream

import (
	"testing"

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
	// Over its bytes, the older half goes: it then covers only what it holds.
	for v := uint64(14); v < 24; v++ {
		add(v, LaneResource)
	}
	if _, ok := tl.backlog(a, LaneResource, true, 9, 100, 1<<20); ok {
		t.Fatal("the trimmed tail still claims its dropped entries")
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

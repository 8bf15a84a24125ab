package eventstream_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/eventstream"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// TestEventsFromTheTail: events the commit hooks handed to the tail are
// stored as handed (their changes not rendered again), the others are
// rendered from the log (the tail never had them, or dropped them when
// full, or the publisher started after they were committed): every event
// once, in order, either way.
func TestEventsFromTheTail(t *testing.T) {
	r := newRig(t)
	tail := eventstream.NewTail(100)
	// Before the publisher starts: 300 changes, whose events the tail
	// still holds (the newest 100) when the publisher starts past them.
	var want []uint64
	fromTail := map[uint64]bool{}
	payload := map[uint64]int{}
	hits := 0
	commitWithTail := func(n int) {
		t.Helper()
		if err := r.st.Update(context.Background(), func(tx *store.Txn) error {
			for i := range n {
				v, _, err := tx.AppendOwn(&pb.Body{Origin: []byte(r.self), Kind: pb.Kind_KIND_CONSIDERS, DataType: "x",
					Payload: fmt.Appendf(nil, `{"i":%d}`, i), CreatedAtUnixNano: time.Now().UnixNano()})
				if err != nil {
					return err
				}
				want = append(want, v)
				payload[v] = i
				if i%2 == 0 {
					fromTail[v] = true
					tx.OnCommit(func() { tail.Add(v, "considers.x", fmt.Appendf(nil, "tail %d", v)) })
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	commitWithTail(300)
	conn, err := nats.Connect("", nats.InProcessServer(r.srv))
	if err != nil {
		t.Fatal(err)
	}
	p, err := eventstream.New(eventstream.Deps{Store: r.st, Conn: conn, Kinds: kinds, Self: r.self, Tail: tail}, r.options())
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	defer p.Close()
	// New learned the cursor at the durable end (the first start): only
	// later changes have events in the stream.
	want = want[:0]
	p.Start()
	for _, n := range []int{50, 50, 250, 50} {
		before := len(want)
		commitWithTail(n)
		if n == 250 {
			// More than the tail holds: the first 25 handed to it are
			// dropped (the publisher is woken once the round's hooks ran).
			for _, v := range want[before : before+50] {
				delete(fromTail, v)
			}
		}
		waitStored(t, r, p)
	}
	got := r.stored()
	if len(got) != len(want) {
		t.Fatalf("the stream holds %d events, want %d", len(got), len(want))
	}
	for i, m := range got {
		if m.version != want[i] || m.subject != "ferry.considers.x" {
			t.Fatalf("event %d: version %d under %s, want %d under ferry.considers.x", i, m.version, m.subject, want[i])
		}
		rendered := fmt.Sprintf(`{"i":%d}`, payload[m.version])
		switch {
		case m.data == rendered:
			// Not in the tail (dropped when full), or its hook ran after
			// the publisher read past its change (it may wake on its timer
			// between the durable mark and the hooks): rendered from the
			// log, as good.
		case fromTail[m.version] && m.data == fmt.Sprintf("tail %d", m.version):
			hits++
		default:
			t.Fatalf("event %d (version %d): %q, want %q (or the tail's)", i, m.version, m.data, rendered)
		}
	}
	if hits < 100 {
		t.Fatalf("%d events of %d taken from the tail; want most of the 175 it held", hits, len(got))
	}
}

// TestTailKeepsTheNewestInOrder: a full tail drops its oldest event; a
// version not above the newest is refused; taking a version drops the older
// ones.
func TestTailKeepsTheNewestInOrder(t *testing.T) {
	tail := eventstream.NewTail(3)
	for v := uint64(1); v <= 5; v++ {
		tail.Add(v*10, "s", []byte{byte(v)})
	}
	tail.Add(40, "s", []byte{9}) // behind the newest
	tail.Add(60, "", nil)        // no event
	for _, c := range []struct {
		ver  uint64
		ok   bool
		data byte
	}{{10, false, 0}, {20, false, 0}, {35, false, 0}, {40, true, 4}, {40, false, 0}, {60, false, 0}, {70, false, 0}} {
		data, ok := eventstream.TakeForTest(tail, c.ver)
		if ok != c.ok || (ok && (len(data) != 1 || data[0] != c.data)) {
			t.Fatalf("take %d: %v %v, want %v %v", c.ver, data, ok, c.ok, c.data)
		}
	}
}

// TestTailNoneMarksAChangeWithoutEvent: None keeps a version with no event,
// in order with the events; taking it answers that it is held, with nothing.
func TestTailNoneMarksAChangeWithoutEvent(t *testing.T) {
	tail := eventstream.NewTail(4)
	tail.Add(10, "s", []byte{1})
	tail.None(20)
	tail.None(15) // behind the newest
	tail.Add(30, "s", []byte{3})
	for _, c := range []struct {
		ver  uint64
		ok   bool
		data []byte
	}{{10, true, []byte{1}}, {15, false, nil}, {20, true, nil}, {30, true, []byte{3}}} {
		data, ok := eventstream.TakeForTest(tail, c.ver)
		if ok != c.ok || !bytes.Equal(data, c.data) {
			t.Fatalf("take %d: %v %v, want %v %v", c.ver, data, ok, c.ok, c.data)
		}
	}
}

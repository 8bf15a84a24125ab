package propagate

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// tailRecorder is an EventTail that keeps what it is given, and a
// Publisher that keeps what is published.
type tailRecorder struct {
	mu        sync.Mutex
	tail, pub []tailed
}

type tailed struct {
	ver    uint64
	suffix string
	data   []byte
}

func (r *tailRecorder) Add(ver uint64, suffix string, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tail = append(r.tail, tailed{ver, suffix, data})
}

func (r *tailRecorder) Publish(string, any) {}

func (r *tailRecorder) PublishRaw(suffix string, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pub = append(r.pub, tailed{suffix: suffix, data: data})
}

// TestTailHoldsWhatWasPublished: the event of each received change the
// service hands the events stream's tail is the one it published, and the
// one Event renders from the change (what the stream takes when the tail
// does not hold it); a late change, published to nobody, is not handed.
func TestTailHoldsWhatWasPublished(t *testing.T) {
	key, self := fixedKey(t, 1)
	_, partner := fixedKey(t, 2)
	quiet := slog.New(slog.DiscardHandler)
	st, err := store.Open(t.TempDir(), store.Options{Signer: key, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec := &tailRecorder{}
	svc, err := New(Deps{Store: st, Roles: fuzzRoles{self: self, partner: partner}, Streams: &fuzzSender{},
		Publisher: rec, Events: rec, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	creator := partner.String()
	bodies := map[uint64]*pb.Body{}
	var prev uint64
	apply := func(ver uint64, kind pb.Kind, payload string, viaLink bool) {
		t.Helper()
		body := &pb.Body{Origin: []byte(partner), OriginVersion: ver, Kind: kind, DataType: "vm", Payload: []byte(payload)}
		if kind != pb.Kind_KIND_CONSIDERS && kind != pb.Kind_KIND_PLANNER {
			body.PrevVersion = prev
			prev = ver
		}
		if err := st.Update(context.Background(), func(tx *store.Txn) error {
			in := &stream.Inbound{From: partner, Origin: partner, Body: body, Raw: []byte("envelope"), Hash: ver}
			if viaLink {
				_, err := svc.Apply(tx, in)
				return err
			}
			_, err := svc.ApplyChange(tx, in)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		bodies[ver] = body
	}
	res := func(id string, cpu int) string {
		return fmt.Sprintf(`{"id":%q,"creator_id":%q,"cpu":%d}`, id, creator, cpu)
	}
	apply(10, pb.Kind_KIND_RESOURCE_CREATE, res("vm1", 1), true)
	apply(20, pb.Kind_KIND_RESOURCE_UPDATE, res("vm1", 2), true)
	apply(30, pb.Kind_KIND_CONSIDERS, `{"x":1}`, true)
	apply(40, pb.Kind_KIND_PLANNER, `{"y":2}`, true)
	apply(50, pb.Kind_KIND_RESOURCE_DELETE, res("vm1", 2), true)
	prev = 10
	apply(15, pb.Kind_KIND_RESOURCE_UPDATE, res("vm1", 9), false) // late (through catch-up): no event
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.tail) != 5 || len(rec.pub) != 5 {
		t.Fatalf("%d events handed to the tail, %d published; want 5 and 5", len(rec.tail), len(rec.pub))
	}
	for i, e := range rec.tail {
		if e.suffix != rec.pub[i].suffix || !bytes.Equal(e.data, rec.pub[i].data) {
			t.Fatalf("event %d: the tail got %s %s, published %s %s", i, e.suffix, e.data, rec.pub[i].suffix, rec.pub[i].data)
		}
		suffix, data, ok, err := svc.Event(e.ver, bodies[[]uint64{10, 20, 30, 40, 50}[i]])
		if err != nil || !ok || suffix != e.suffix || !bytes.Equal(data, e.data) {
			t.Fatalf("event %d (local version %d): rendered %s %s (%v %v), published %s %s", i, e.ver, suffix, data, ok, err, e.suffix, e.data)
		}
		if i > 0 && e.ver <= rec.tail[i-1].ver {
			t.Fatalf("versions handed out of order: %d after %d", e.ver, rec.tail[i-1].ver)
		}
	}
}

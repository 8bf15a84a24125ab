package stream

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferrynet/ferry/internal/wait"
)

// TestQuietStreamCloseIsNoFailure (issue 21, point 1): a delivery stream
// that the sender closes because nothing was owed for IdleExit is no
// failure: the failure counter stays 0 and the receiver's lanes carry no
// last error. Before, its reader's "stream reset" counted as one and was
// shown to operators as the peer's last error.
func TestQuietStreamCloseIsNoFailure(t *testing.T) {
	rec := &recorder{}
	p := newPairWith(t, rec, func(o *SenderOptions) { o.IdleExit = 200 * time.Millisecond })
	want := p.commit(3, 3)
	wait.For(t, waitTimeout, "B applied the changes", func() bool { return len(rec.versions()) == len(want) })
	wait.For(t, waitTimeout, "A's outbox to B ends and its streams are down", func() bool {
		p.snd.mu.Lock()
		o := p.snd.boxes[p.b.id]
		p.snd.mu.Unlock()
		if o == nil {
			return true
		}
		o.mu.Lock()
		defer o.mu.Unlock()
		return !o.running && len(o.streams) == 0
	})
	if n := testutil.ToFloat64(p.snd.m.failures); n != 0 {
		t.Fatalf("ferry_delivery_stream_failures_total is %v after a quiet close", n)
	}
	for _, l := range Lanes {
		if st := p.snd.Lane(p.b.id, l); st.LastError != "" {
			t.Fatalf("lane %v: last error %q after a quiet close", l, st.LastError)
		}
	}
	// A new change opens a new stream and is delivered.
	want = append(want, p.commit(1, 1)...)
	wait.For(t, waitTimeout, "B applied the change after the close", func() bool { return len(rec.versions()) == len(want) })
	exactlyOnce(t, rec.versions(), want)
}

// idleBox is an outbox with nothing owed whose pump runs and has been idle
// for longer than IdleExit, on a sender with no host: idle alone is tested.
func idleBox(t *testing.T, hold func(*Sender, *outbox) bool) *outbox {
	t.Helper()
	o := SenderOptions{Logger: quiet}
	o.fill()
	s := &Sender{opts: o, log: quiet, aud: audience{}, boxes: map[peer.ID]*outbox{}, started: true}
	b := newOutbox(s, "receiver")
	b.running = true
	b.idleSince = time.Now().Add(-2 * o.IdleExit)
	s.boxes[b.peer] = b
	if hold != nil {
		s.opts.Hold = func(peer.ID, Lane) bool { return hold(s, b) }
	}
	return b
}

// TestIdleExit: an outbox idle for IdleExit exits; one that box found
// running meanwhile (with news the idle check may not have seen) does not;
// and idle asks Hold with no lock held, so a Hold that calls the sender
// does not deadlock it.
func TestIdleExit(t *testing.T) {
	if b := idleBox(t, nil); !b.idle() || b.running {
		t.Fatal("an outbox idle for IdleExit did not exit")
	}
	poked := false
	b := idleBox(t, func(s *Sender, b *outbox) bool {
		if !poked {
			poked = true
			s.box(b.peer) // a notify or a Kick while idle looks
		}
		return false
	})
	if b.idle() || !b.running {
		t.Fatal("the outbox exited although box found it running while it looked")
	}
	if !b.idle() || b.running {
		t.Fatal("the outbox did not exit on the next look")
	}
	done := make(chan bool, 1)
	b = idleBox(t, func(s *Sender, b *outbox) bool {
		s.mu.Lock()
		b.mu.Lock()
		defer s.mu.Unlock()
		defer b.mu.Unlock()
		return false
	})
	go func() { done <- b.idle() }()
	select {
	case exited := <-done:
		if !exited {
			t.Fatal("the outbox did not exit")
		}
	case <-time.After(waitTimeout):
		t.Fatal("idle called Hold with a sender lock held: deadlock")
	}
}

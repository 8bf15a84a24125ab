package stream

import (
	"testing"
	"time"

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

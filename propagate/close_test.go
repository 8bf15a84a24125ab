package propagate

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrynet/ferry"
)

// A close_planner that arrives while the service closes is answered once,
// either done or refused with unavailable, and never panics (its worker
// was counted by a WaitGroup that Close was waiting on); one after Close
// is refused.
func TestClosePlannerDuringClose(t *testing.T) {
	svc, _, partner := testService(t)
	req := Request{Action: "close_planner", Payload: json.RawMessage(`{"peer_id":"` + partner.String() + `"}`)}
	// Each asker sends close_planner after close_planner until one is
	// refused; Close begins once some were done.
	const askers = 8
	var done, refused, calls atomic.Int64
	first := make(chan struct{}, askers)
	var wg sync.WaitGroup
	for range askers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				answered := make(chan error, 2)
				svc.Propagate(context.Background(), req, func(_ Result, err error) {
					calls.Add(1)
					answered <- err
				})
				var err error
				select {
				case err = <-answered:
				case <-time.After(10 * time.Second):
					t.Error("a close_planner was not answered")
					return
				}
				switch {
				case errors.Is(err, ferry.ErrUnavailable):
					refused.Add(1)
					return
				case err != nil && !errors.Is(err, context.Canceled):
					t.Errorf("a close_planner during Close was answered %v", err)
					return
				}
				done.Add(1)
				select {
				case first <- struct{}{}:
				default:
				}
			}
		}()
	}
	<-first
	svc.Close()
	wg.Wait()
	if refused.Load() != askers {
		t.Fatalf("%d askers of %d were refused", refused.Load(), askers)
	}
	if c := calls.Load(); c != done.Load()+refused.Load() {
		t.Fatalf("%d answers to %d requests", c, done.Load()+refused.Load())
	}
	t.Logf("%d done before Close, %d refused", done.Load(), refused.Load())

	var after error
	svc.Propagate(context.Background(), req, func(_ Result, err error) { after = err })
	if !errors.Is(after, ferry.ErrUnavailable) {
		t.Fatalf("a close_planner after Close was answered %v, want unavailable", after)
	}
}

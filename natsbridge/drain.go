package natsbridge

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// inflight counts requests taken and not yet answered.
type inflight struct {
	mu    sync.Mutex
	n     int
	idle  chan struct{} // closed when n drops to 0; nil while n == 0
	gauge prometheus.Gauge
}

func (f *inflight) add() {
	f.mu.Lock()
	if f.n == 0 {
		f.idle = make(chan struct{})
	}
	f.n++
	f.mu.Unlock()
	if f.gauge != nil {
		f.gauge.Inc()
	}
}

func (f *inflight) done() {
	f.mu.Lock()
	f.n--
	if f.n == 0 {
		close(f.idle)
		f.idle = nil
	}
	f.mu.Unlock()
	if f.gauge != nil {
		f.gauge.Dec()
	}
}

// wait returns a channel closed once nothing is in flight.
func (f *inflight) wait() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.idle == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return f.idle
}

// InFlight is how many requests were taken and are not answered yet.
func (b *Bridge) InFlight() int {
	b.flight.mu.Lock()
	defer b.flight.mu.Unlock()
	return b.flight.n
}

// Drain stops taking requests and waits until every request already taken
// is answered, like NATS's own drain: the server stops sending new requests
// at once (an app's next request gets no responders, so it can retry
// elsewhere or later), messages already delivered to the node are still
// handled, and Drain returns when each has its reply, or when ctx ends
// (then it says how many were left). The connection stays open: Close
// closes it once the services that answer have stopped.
func (b *Bridge) Drain(ctx context.Context) error {
	b.mu.Lock()
	subs := b.subs
	b.subs = nil
	b.mu.Unlock()
	for _, s := range subs {
		if err := s.Drain(); err != nil {
			b.log.Warn("drain subscription", "subject", s.Subject, "err", err)
		}
	}
	// A drained subscription is removed once its queued messages were
	// handed to the handler.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for _, s := range subs {
		for s.IsValid() {
			select {
			case <-ctx.Done():
				n, _, _ := s.Pending()
				return fmt.Errorf("drain %s: %d requests not taken: %w", s.Subject, n, ctx.Err())
			case <-tick.C:
			}
		}
	}
	select {
	case <-b.flight.wait():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain: %d requests not answered: %w", b.InFlight(), ctx.Err())
	}
}

// Health is the bridge's state.
type Health struct {
	OK        bool   `json:"ok"`
	Reason    string `json:"reason,omitempty"`
	Embedded  bool   `json:"embedded"`
	URL       string `json:"url"`
	Connected bool   `json:"connected"`
	InFlight  int    `json:"in_flight"`
}

// Health reports whether apps can reach the node.
func (b *Bridge) Health() Health {
	h := Health{Embedded: b.srv != nil, Connected: b.nc.IsConnected(), InFlight: b.InFlight()}
	if b.srv != nil {
		h.URL = b.srv.ClientURL()
	} else {
		h.URL = b.o.URL
	}
	switch st := b.nc.Status(); {
	case b.srv != nil && !b.srv.Running():
		h.Reason = "embedded nats server is not running"
	case st == nats.CONNECTED:
	case st == nats.RECONNECTING:
		h.Reason = "reconnecting to nats at " + h.URL
	case st == nats.DRAINING_SUBS || st == nats.DRAINING_PUBS:
		h.Reason = "draining"
	default:
		h.Reason = fmt.Sprintf("nats connection %s", st)
	}
	b.mu.Lock()
	if b.closed {
		h.Reason = "closed"
	}
	b.mu.Unlock()
	h.OK = h.Reason == ""
	return h
}

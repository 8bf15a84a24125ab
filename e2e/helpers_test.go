package e2e

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// pipeline sends n propagate requests with up to inflight outstanding and
// returns the replies by index. ids are vm-<i>.
func pipeline(t *testing.T, nc *nats.Conn, from, n, inflight int, action string) []reply {
	t.Helper()
	replies := make([]reply, n)
	sem := make(chan struct{}, inflight)
	var wg sync.WaitGroup
	for i := from; i < from+n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			body := fmt.Sprintf(`{"action":%q,"data_type":"vm","payload":{"id":"vm-%d","n":%d}}`, action, i, i)
			msg, err := nc.Request("ferry.propagate", []byte(body), 30*time.Second)
			if err != nil {
				replies[i-from].Error = &apiErr{Code: "request", Message: err.Error()}
				return
			}
			_ = json.Unmarshal(msg.Data, &replies[i-from])
		}()
	}
	wg.Wait()
	return replies
}

type apiErr = struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// collector gathers resource events published on one node's NATS.
type collector struct {
	mu     sync.Mutex
	events []event
	sub    *nats.Subscription
}

type event struct {
	Subject  string
	Origin   string          `json:"origin"`
	Version  uint64          `json:"version"`
	Resource json.RawMessage `json:"resource"`
	ID       string
}

func collect(t *testing.T, nc *nats.Conn, subject string) *collector {
	t.Helper()
	c := &collector{}
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		var e event
		_ = json.Unmarshal(m.Data, &e)
		var r struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(e.Resource, &r)
		e.ID, e.Subject = r.ID, m.Subject
		c.mu.Lock()
		c.events = append(c.events, e)
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c.sub = sub
	return c
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.events)
}

func (c *collector) snapshot() []event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]event(nil), c.events...)
}

// checkExactlyOnceInOrder asserts every id in want arrived once and origin
// versions only grow.
func checkExactlyOnceInOrder(t *testing.T, evs []event, want map[string]bool) {
	t.Helper()
	seen := map[string]int{}
	var last uint64
	for i, e := range evs {
		seen[e.ID]++
		if e.Version <= last {
			t.Fatalf("event %d (%s) has version %d after %d: out of order", i, e.ID, e.Version, last)
		}
		last = e.Version
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("%s published %d times", id, n)
		}
		if !want[id] {
			t.Fatalf("unexpected event %s", id)
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("published %d distinct events, want %d", len(seen), len(want))
	}
}

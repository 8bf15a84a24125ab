package faults

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
)

// TestLargePages reads ferry.changes page by page, at the documented
// maximum limit, over changes that do not fit one NATS message: documents
// of 256 bytes (limit 10000 of them is over the default max payload) and of
// 256 KiB. Every reply comes (none over the max payload, none missing),
// every change comes once and in order. (Issue 4: the app timed out and the
// node logged "maximum payload exceeded".)
func TestLargePages(t *testing.T) {
	a := proc.Start(t, proc.Options{Name: "A"})
	app := connect(t, a.NATSURL())
	small, big := pick(12000, 60000), pick(20, 200)
	send(t, app, "s", small, 256)
	send(t, app, "b", big, 256<<10)
	start := time.Now()
	pages, n, maxReply := 0, 0, 0
	since := uint64(0)
	for {
		r, err := app.Request("ferry.changes", fmt.Appendf(nil, `{"since":%d,"limit":10000}`, since), 30*time.Second)
		if err != nil {
			t.Fatalf("page %d (since %d): %v", pages, since, err)
		}
		if int64(len(r.Data)) > app.MaxPayload() {
			t.Fatalf("page %d is %d bytes, over the max payload %d", pages, len(r.Data), app.MaxPayload())
		}
		maxReply = max(maxReply, len(r.Data))
		var page struct {
			OK      bool `json:"ok"`
			Changes []struct {
				Version uint64 `json:"version"`
			} `json:"changes"`
			Next  uint64          `json:"next"`
			More  bool            `json:"more"`
			Error json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(r.Data, &page); err != nil || !page.OK {
			t.Fatalf("page %d: %v %s", pages, err, page.Error)
		}
		pages++
		for _, c := range page.Changes {
			// Versions rise (they are floored at the clock, so not by one).
			if c.Version <= since {
				t.Fatalf("page %d: version %d after %d", pages, c.Version, since)
			}
			since = c.Version
			n++
		}
		if page.Next != since {
			t.Fatalf("page %d: next %d, last version %d", pages, page.Next, since)
		}
		if !page.More {
			break
		}
	}
	if n != small+big {
		t.Fatalf("%d changes read, %d written", n, small+big)
	}
	t.Logf("%d changes (%d of 256 B, %d of 256 KiB) in %d pages of limit 10000, largest reply %d bytes (max payload %d), read in %v",
		n, small, big, pages, maxReply, app.MaxPayload(), time.Since(start).Round(time.Millisecond))
}

// send writes n creates of pad bytes, 128 in flight.
func send(t *testing.T, nc *nats.Conn, prefix string, n, pad int) {
	t.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 128)
	var mu sync.Mutex
	var failed []string
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id := fmt.Sprintf("%s-%d", prefix, i)
			if o, r := request(nc, createMsg(id, pad, ""), 30*time.Second); o != okReply {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s: %v %+v", id, o, r.Error))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d creates failed, e.g. %s", len(failed), failed[0])
	}
}

package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/wait"
)

func TestMain(m *testing.M) { os.Exit(proc.Main(m)) }

// long reports whether the long suite runs (make faults).
func long() bool { return os.Getenv("FERRY_FAULTS") == "long" }

// pick is short in CI and long under make faults.
func pick(short, longer int) int {
	if long() {
		return longer
	}
	return short
}

// reply is an answer of the node.
type reply struct {
	OK      bool   `json:"ok"`
	Version uint64 `json:"version"`
	ID      string `json:"id"`
	Error   *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// outcome of one request as an app sees it.
type outcome int

const (
	okReply outcome = iota
	errReply
	noResponders
	timedOut
	connFailed
)

func (o outcome) String() string {
	return [...]string{"ok", "error", "no_responders", "timeout", "connection"}[o]
}

// request sends one request and classifies what came back.
func request(nc *nats.Conn, m *nats.Msg, timeout time.Duration) (outcome, reply) {
	r, err := nc.RequestMsg(m, timeout)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return noResponders, reply{}
	case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return timedOut, reply{}
	case err != nil:
		return connFailed, reply{}
	}
	var rep reply
	if json.Unmarshal(r.Data, &rep) != nil {
		return errReply, reply{}
	}
	if rep.OK {
		return okReply, rep
	}
	return errReply, rep
}

func createMsg(id string, pad int, key string) *nats.Msg {
	m := nats.NewMsg("ferry.propagate")
	m.Data = fmt.Appendf(nil, `{"action":"create","data_type":"vm","payload":{"id":%q,"pad":%q}}`, id, strings.Repeat("x", pad))
	if key != "" {
		m.Header.Set("Nats-Msg-Id", key)
	}
	return m
}

// tally counts outcomes and remembers the acknowledged ids.
type tally struct {
	mu     sync.Mutex
	counts map[string]int
	acked  map[string]uint64 // id -> version
	errs   map[string]int    // error messages (first 80 bytes) -> count
}

func newTally() *tally {
	return &tally{counts: map[string]int{}, acked: map[string]uint64{}, errs: map[string]int{}}
}

func (t *tally) add(id string, o outcome, r reply) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.counts[o.String()]++
	switch o {
	case okReply:
		t.acked[id] = r.Version
	case errReply:
		msg := ""
		if r.Error != nil {
			msg = r.Error.Code + ": " + r.Error.Message
		}
		// Group by the words before the first figure.
		if i := strings.IndexAny(msg, "0123456789"); i > 0 {
			msg = strings.TrimSpace(msg[:i])
		}
		t.errs[msg]++
	}
}

func (t *tally) count(o outcome) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.counts[o.String()]
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return fmt.Sprintf("%v acked=%d errors=%v", t.counts, len(t.acked), t.errs)
}

func (t *tally) ackedIDs() map[string]uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]uint64, len(t.acked))
	for k, v := range t.acked {
		out[k] = v
	}
	return out
}

// load runs workers that send creates (ids prefix-<worker>-<n>, keyed)
// until ctx ends, each waiting at most timeout for its answer.
func load(ctx context.Context, nc *nats.Conn, workers, pad int, prefix string, timeout time.Duration, t *tally) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("%s-%d-%d", prefix, w, i)
				o, r := request(nc, createMsg(id, pad, id), timeout)
				t.add(id, o, r)
				if o != okReply {
					// Not a busy loop while the node refuses or is away.
					select {
					case <-ctx.Done():
					case <-time.After(20 * time.Millisecond):
					}
				}
			}
		}()
	}
	return &wg
}

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// resources reads every resource id (data type vm) a node holds, through
// its admin API, page after page.
func resources(t *testing.T, n *proc.Node) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for id := range resourceRows(t, n) {
		out[id] = true
	}
	return out
}

// resourceRow is a row of the admin API's resources.
type resourceRow struct {
	ID            string          `json:"id"`
	OriginVersion uint64          `json:"origin_version"`
	Resource      json.RawMessage `json:"resource"`
}

// resourceRows reads every resource (data type vm) a node holds, by id.
func resourceRows(t *testing.T, n *proc.Node) map[string]resourceRow {
	t.Helper()
	out := map[string]resourceRow{}
	after := ""
	for {
		path := "/api/v1/resources?data_type=vm&limit=1000"
		if after != "" {
			path += "&after=" + url.QueryEscape(after)
		}
		code, b, err := n.Get(path)
		if err != nil || code != 200 {
			t.Fatalf("%s GET %s: %d %v %.200s", n.Name(), path, code, err, b)
		}
		var page struct {
			Resources []resourceRow `json:"resources"`
			Next      string        `json:"next"`
		}
		if err := json.Unmarshal(b, &page); err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Resources {
			out[r.ID] = r
		}
		if page.Next == "" {
			return out
		}
		after = page.Next
	}
}

// holdsAll waits until n holds every acknowledged id.
func holdsAll(t *testing.T, n *proc.Node, acked map[string]uint64, timeout time.Duration) {
	t.Helper()
	wait.Until(t, timeout, n.Name()+" holds every acknowledged create", func() error {
		have := resources(t, n)
		var missing []string
		for id := range acked {
			if !have[id] {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%s misses %d of %d, e.g. %v", n.Name(), len(missing), len(acked), missing[:min(5, len(missing))])
		}
		return nil
	})
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

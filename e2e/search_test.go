package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/testnet"
)

const (
	searchA, searchB, searchC = 0, 1, 2 // A and B hold resources; C asks
)

// searchEvent is one message on ferry.search.result.<query_id>.
type searchEvent struct {
	From     string            `json:"from"`
	DataType string            `json:"data_type"`
	Results  []json.RawMessage `json:"results"`
}

// searchSub gathers the result events of one query.
type searchSub struct {
	mu     sync.Mutex
	events []searchEvent
	bad    []string
}

func searchSubscribe(t *testing.T, nc *nats.Conn, queryID string) *searchSub {
	t.Helper()
	s := &searchSub{}
	sub, err := nc.Subscribe("ferry.search.result."+queryID, func(m *nats.Msg) {
		var ev searchEvent
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			s.bad = append(s.bad, string(m.Data))
			return
		}
		s.events = append(s.events, ev)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *searchSub) get() []searchEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

// searchByPeer lists each event's result ids (resources) or peer ids (peer records),
// by the peer that sent it, sorted.
func searchByPeer(t *testing.T, evs []searchEvent) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, ev := range evs {
		if out[ev.From] == nil {
			out[ev.From] = []string{}
		}
		for _, r := range ev.Results {
			var doc struct {
				ID     string `json:"id"`
				PeerID string `json:"peer_id"`
			}
			if err := json.Unmarshal(r, &doc); err != nil {
				t.Fatalf("result %s: %v", r, err)
			}
			out[ev.From] = append(out[ev.From], doc.ID+doc.PeerID)
		}
		slices.Sort(out[ev.From])
	}
	return out
}

type searchReply struct {
	OK    bool `json:"ok"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	QueryID string `json:"query_id"`
	Asked   int    `json:"asked"`
}

// searchAsk sends a search from node i's app and returns the reply.
func searchAsk(t *testing.T, nc *nats.Conn, dataType string, payload map[string]any) searchReply {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"action": "search", "data_type": dataType, "payload": payload})
	var r searchReply
	testnet.Request(t, nc, "ferry.propagate", string(body), &r)
	return r
}

// searchFor subscribes to a fresh query id, asks, waits for want events,
// and for a resource search also until the query's wait is over (so that
// an extra answer would show), then returns the events.
func searchFor(t *testing.T, nc *nats.Conn, id, dataType string, payload map[string]any, want int) (searchReply, []searchEvent) {
	t.Helper()
	sub := searchSubscribe(t, nc, id)
	payload["query_id"] = id
	asked := time.Now()
	r := searchAsk(t, nc, dataType, payload)
	if !r.OK || r.QueryID != id {
		t.Fatalf("search %s %v: %+v", dataType, payload, r)
	}
	testnet.WaitFor(t, 15*time.Second, fmt.Sprintf("%d result events of %s", want, id), func() bool { return len(sub.get()) >= want })
	if dataType != "peer" {
		wait := 3 * time.Second
		if ms, ok := payload["wait_ms"].(int); ok {
			wait = time.Duration(ms) * time.Millisecond
		}
		until := asked.Add(wait + 300*time.Millisecond)
		testnet.WaitFor(t, wait+5*time.Second, "the query's wait to pass", func() bool { return time.Now().After(until) })
	}
	sub.mu.Lock()
	bad := slices.Clone(sub.bad)
	sub.mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("undecodable events: %v", bad)
	}
	return r, sub.get()
}

func TestSearchThroughNATS(t *testing.T) {
	// A and B are partners (each holds the other's resources); C asks, with
	// A as its only partner.
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{searchA: {searchB}, searchB: {searchA}, searchC: {searchA}}})
	net.WaitMembers(30 * time.Second)
	a, b, c := net.NATS(searchA), net.NATS(searchB), net.NATS(searchC)
	idA, idB := net.IDs[searchA].String(), net.IDs[searchB].String()

	atB, _ := b.SubscribeSync("ferry.resource.created.vm")
	_ = b.Flush()
	for _, x := range []struct {
		nc      *nats.Conn
		payload string
	}{
		{a, `{"action":"create","data_type":"vm","payload":{"id":"vm-a1","name":"alpha on A"}}`},
		{a, `{"action":"create","data_type":"vm","payload":{"id":"vm-a2","name":"beta on A"}}`},
		{b, `{"action":"create","data_type":"vm","payload":{"id":"vm-b1","name":"Alpha on B"}}`},
		{b, `{"action":"create","data_type":"disk","payload":{"id":"disk-b1","name":"alpha disk"}}`},
	} {
		var r reply
		testnet.Request(t, x.nc, "ferry.propagate", x.payload, &r)
		if !r.OK {
			t.Fatalf("%s: %+v", x.payload, r.Error)
		}
	}
	// B holds A's resources too; it must answer with its own only.
	for range 2 {
		if _, err := atB.NextMsg(20 * time.Second); err != nil {
			t.Fatalf("B did not receive A's resources: %v", err)
		}
	}

	t.Run("peer", func(t *testing.T) {
		_, evs := searchFor(t, c, "peer-name", "peer", map[string]any{"search": "A", "wait_ms": 5000}, 1)
		if got := searchByPeer(t, evs); len(evs) != 1 || fmt.Sprint(got[net.IDs[searchC].String()]) != fmt.Sprint([]string{idA}) {
			t.Fatalf("peer search by name: %v", got)
		}
		var rec struct {
			PeerID string   `json:"peer_id"`
			Name   string   `json:"name"`
			Addrs  []string `json:"addrs"`
			Roles  []string `json:"roles"`
		}
		_ = json.Unmarshal(evs[0].Results[0], &rec)
		if rec.Name != "A" || len(rec.Addrs) == 0 || !slices.Contains(rec.Roles, "partner") || evs[0].DataType != "peer" {
			t.Fatalf("peer record %s", evs[0].Results[0])
		}
		_, evs = searchFor(t, c, "peer-id", "peer", map[string]any{"search": idB}, 1)
		if got := searchByPeer(t, evs); len(evs) != 1 || fmt.Sprint(got[net.IDs[searchC].String()]) != fmt.Sprint([]string{idB}) {
			t.Fatalf("peer search by id: %v", got)
		}
		_, evs = searchFor(t, c, "peer-miss", "peer", map[string]any{"search": "nobody", "wait_ms": 1000}, 1)
		if len(evs) != 1 || len(evs[0].Results) != 0 {
			t.Fatalf("peer search miss: %+v", evs)
		}
	})

	t.Run("all", func(t *testing.T) {
		// Gossipsub needs a moment after the connections to know who is on
		// the topic: ask (at most ~3 times a second, under the holders' rate
		// limit) until a query reaches both holders.
		var last time.Time
		testnet.WaitFor(t, 30*time.Second, "C sees A and B on the search topic", func() bool {
			if time.Since(last) < 300*time.Millisecond {
				return false
			}
			last = time.Now()
			return searchAsk(t, c, "vm", map[string]any{"type": "all", "search": "zzz-warmup", "wait_ms": 1}).Asked >= 2
		})
		r, evs := searchFor(t, c, "all-alpha", "vm", map[string]any{"type": "all", "search": "ALPHA", "wait_ms": 1500}, 2)
		want := map[string][]string{idA: {"vm-a1"}, idB: {"vm-b1"}}
		if got := searchByPeer(t, evs); fmt.Sprint(got) != fmt.Sprint(want) || r.Asked != 2 {
			t.Fatalf("all alpha: %v (asked %d), want %v", got, r.Asked, want)
		}
		_, evs = searchFor(t, c, "all-none", "vm", map[string]any{"search": "no such thing", "wait_ms": 1000}, 0)
		if len(evs) != 0 {
			t.Fatalf("all, no match: %v", searchByPeer(t, evs))
		}
	})

	t.Run("known", func(t *testing.T) {
		_, evs := searchFor(t, c, "known-all", "vm", map[string]any{"type": "known", "search": "", "wait_ms": 1500}, 2)
		want := map[string][]string{idA: {"vm-a1", "vm-a2"}, idB: {"vm-b1"}}
		if got := searchByPeer(t, evs); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("known: %v, want %v", got, want)
		}
		_, evs = searchFor(t, c, "known-disk", "disk", map[string]any{"type": "known", "search": "alpha", "wait_ms": 1500}, 1)
		if got, want := searchByPeer(t, evs), map[string][]string{idB: {"disk-b1"}}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("known disk: %v, want %v", got, want)
		}
	})

	t.Run("partner", func(t *testing.T) {
		_, evs := searchFor(t, c, "partner-alpha", "vm", map[string]any{"type": "partner", "search": "alpha", "wait_ms": 1500}, 1)
		if got, want := searchByPeer(t, evs), map[string][]string{idA: {"vm-a1"}}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("partner: %v, want %v", got, want)
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		w := &words{t: t}
		for _, p := range []map[string]any{
			{"type": "everyone", "search": "x"},
			{"search": "x", "query_id": "not a token"},
			{"search": "x", "limit": 501},
			{"search": "x", "wait_ms": 60000},
			{"search": "x", "limit": "5"},
			{"search": "x", "wiat_ms": 100},
		} {
			if r := searchAsk(t, c, "vm", p); r.OK || r.Error == nil || r.Error.Code != "bad_request" {
				t.Errorf("%v: %+v", p, r)
			} else {
				w.check(fmt.Sprint(p), r.Error.Message, fmt.Sprint(p))
			}
		}
		if r := searchAsk(t, c, "peer", map[string]any{}); r.OK || r.Error == nil || r.Error.Code != "bad_request" {
			t.Errorf("peer search without text: %+v", r)
		}
	})

	t.Run("admin api", func(t *testing.T) {
		status, out := admin(t, net, searchC, "POST", "/api/v1/search",
			map[string]any{"data_type": "vm", "search": "alpha", "type": "known", "wait_ms": 1500})
		if status != 200 || out["ok"] != true || out["query_id"] == "" {
			t.Fatalf("admin search: %d %v", status, out)
		}
		raw, _ := json.Marshal(out["results"])
		var hits []struct {
			From   string          `json:"from"`
			Name   string          `json:"name"`
			Result json.RawMessage `json:"result"`
		}
		_ = json.Unmarshal(raw, &hits)
		got := map[string]string{}
		for _, h := range hits {
			var doc struct {
				ID string `json:"id"`
			}
			_ = json.Unmarshal(h.Result, &doc)
			got[h.Name] = doc.ID
		}
		if fmt.Sprint(got) != fmt.Sprint(map[string]string{"A": "vm-a1", "B": "vm-b1"}) {
			t.Fatalf("admin search results %s", raw)
		}
		status, out = admin(t, net, searchC, "POST", "/api/v1/search", map[string]any{"data_type": "vm", "search": "x", "type": "everyone"})
		if status != 400 || errCode(out) != "bad_request" {
			t.Fatalf("admin search, bad scope: %d %v", status, out)
		}
	})
}

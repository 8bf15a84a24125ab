package search

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// isOpen reports whether a query is open and within its deadline.
func (s *Service) isOpen(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.open[id]
	return q != nil && !s.now().After(q.deadline)
}

// holders gives B and C resources: matching and not, own and not, live and
// deleted, of two data types. A holds one too (it must not answer itself).
func holders(t *testing.T, a, b, c *tnode) {
	a.put(t, "vm", "a1", a.id, `{"id":"a1","name":"alpha of A"}`, false)
	b.put(t, "vm", "b1", b.id, `{"id":"b1","name":"Alpha one"}`, false)
	b.put(t, "vm", "b2", b.id, `{"id":"b2","name":"gamma"}`, false)
	b.put(t, "vm", "c9", c.id, `{"id":"c9","name":"alpha C shared with B"}`, false)
	b.put(t, "vm", "b3", b.id, `{"id":"b3","name":"alpha, deleted"}`, true)
	c.put(t, "vm", "c1", c.id, `{"id":"c1","name":"ALPHA two"}`, false)
	c.put(t, "vm", "c2", c.id, `{"id":"c2","name":"beta"}`, false)
	c.put(t, "disk", "d1", c.id, `{"id":"d1","name":"alpha disk"}`, false)
}

func TestSearchAllThroughGossip(t *testing.T) {
	a, b, c := newNode(t, "A", nil), newNode(t, "B", nil), newNode(t, "C", nil)
	mesh(t, a, b, c)
	waitTopic(t, a, b, c)
	holders(t, a, b, c)

	res := a.search(t, "vm", `{"type":"all","search":"alpha","query_id":"q-alpha","wait_ms":1500}`)
	if res["query_id"] != "q-alpha" || res["scope"] != ScopeAll || res["asked"] != 2 {
		t.Fatalf("reply %v", res)
	}
	a.search(t, "vm", `{"search":"BETA","query_id":"q-beta","wait_ms":1500}`) // type defaults to all
	a.search(t, "vm", `{"type":"all","search":"nothing like it","query_id":"q-none","wait_ms":500}`)
	gen := a.search(t, "vm", `{"search":"gamma"}`)
	genID, _ := gen["query_id"].(string)
	if len(genID) != 32 || !ValidQueryID(genID) {
		t.Fatalf("generated query id %q", genID)
	}

	t.Cleanup(func() {
		for _, n := range []*tnode{a, b, c} {
			t.Logf("%s: queries in %v, out %v; results in %v, out %v", n.name, count(n.svc.m.queries, "in", "gossip"),
				count(n.svc.m.queries, "out", "all"), count(n.svc.m.results, "in"), count(n.svc.m.results, "out"))
		}
	})
	wait.For(t, 10*time.Second, "answers from B and C", func() bool {
		return len(a.pub.get("q-alpha")) == 2 && len(a.pub.get("q-beta")) == 1 && len(a.pub.get(genID)) == 1
	})
	wait.For(t, 5*time.Second, "the queries expire", func() bool {
		return !a.svc.isOpen("q-alpha") && !a.svc.isOpen("q-beta") && !a.svc.isOpen("q-none")
	})
	want := map[string]map[string][]string{
		"q-alpha": {b.id.String(): {"b1"}, c.id.String(): {"c1"}},
		"q-beta":  {c.id.String(): {"c2"}},
		"q-none":  {},
		genID:     {b.id.String(): {"b2"}},
	}
	for id, w := range want {
		evs := a.pub.get(id)
		got := ids(t, evs)
		if fmt.Sprint(got) != fmt.Sprint(w) {
			t.Errorf("%s: results %v, want %v", id, got, w)
		}
		for _, ev := range evs {
			if ev.DataType != "vm" {
				t.Errorf("%s: event data type %q", id, ev.DataType)
			}
		}
	}
	if n := count(a.svc.m.results, "out"); n != 0 {
		t.Errorf("A answered its own queries with %v results", n)
	}
	for _, n := range []*tnode{b, c} {
		if q := count(n.svc.m.queries, "in", "gossip"); q != 4 {
			t.Errorf("%s took %v gossip queries, want 4", n.name, q)
		}
	}
}

func TestSearchKnownAndPartnerDirect(t *testing.T) {
	a, b, c := newNode(t, "A", nil), newNode(t, "B", nil), newNode(t, "C", nil)
	mesh(t, a, b, c)
	a.roles.addPartner(b.id)
	holders(t, a, b, c)

	res := a.search(t, "vm", `{"type":"known","search":"","query_id":"q-known","wait_ms":1000}`)
	if res["asked"] != 2 || res["scope"] != ScopeKnown {
		t.Fatalf("reply %v", res)
	}
	a.search(t, "vm", `{"type":"known","query_id":"q-limit","limit":1,"wait_ms":1000}`)
	res = a.search(t, "vm", `{"type":"partner","search":"alpha","query_id":"q-partner","wait_ms":1000}`)
	if res["asked"] != 1 || res["scope"] != ScopePartner {
		t.Fatalf("reply %v", res)
	}
	wait.For(t, 10*time.Second, "answers", func() bool {
		return len(a.pub.get("q-known")) == 2 && len(a.pub.get("q-limit")) == 2 && len(a.pub.get("q-partner")) == 1
	})
	wait.For(t, 5*time.Second, "the queries expire", func() bool {
		return !a.svc.isOpen("q-known") && !a.svc.isOpen("q-partner")
	})
	got := ids(t, a.pub.get("q-known"))
	for _, l := range got {
		slices.Sort(l)
	}
	if w := fmt.Sprint(map[string][]string{b.id.String(): {"b1", "b2"}, c.id.String(): {"c1", "c2"}}); fmt.Sprint(got) != w {
		t.Errorf("known: %v, want %v", got, w)
	}
	for from, l := range ids(t, a.pub.get("q-limit")) {
		if len(l) != 1 {
			t.Errorf("limit 1: %s sent %v", from, l)
		}
	}
	if got, w := fmt.Sprint(ids(t, a.pub.get("q-partner"))), fmt.Sprint(map[string][]string{b.id.String(): {"b1"}}); got != w {
		t.Errorf("partner: %v, want %v", got, w)
	}
	if n := count(c.svc.m.queries, "in", "stream"); n != 2 {
		t.Errorf("C was asked %v times, want 2 (known searches only)", n)
	}
	if n := count(b.svc.m.queries, "in", "stream"); n != 3 {
		t.Errorf("B was asked %v times, want 3", n)
	}
}

func TestPeerSearch(t *testing.T) {
	key, _, _ := crypto.GenerateEd25519Key(nil)
	bob, _ := peer.IDFromPrivateKey(key)
	key2, _, _ := crypto.GenerateEd25519Key(nil)
	far, _ := peer.IDFromPrivateKey(key2)
	key3, _, _ := crypto.GenerateEd25519Key(nil)
	nobody, _ := peer.IDFromPrivateKey(key3)
	a := newNode(t, "A", func(n *tnode) {
		n.book.recs = []PeerRecord{{PeerID: bob.String(), Name: "bob", Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}, Roles: []string{"member"}}}
		n.dht.peers[far] = peer.AddrInfo{ID: far, Addrs: []ma.Multiaddr{ma.StringCast("/ip4/10.0.0.7/tcp/4001")}}
		n.roles.addPartner(far)
	})
	type rec = PeerRecord
	cases := []struct {
		name, search string
		want         []rec
		dht          bool
	}{
		{"book by name", "BOB", []rec{{PeerID: bob.String(), Name: "bob", Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}, Roles: []string{"member"}}}, false},
		{"book by id", bob.String(), []rec{{PeerID: bob.String(), Name: "bob", Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}, Roles: []string{"member"}}}, false},
		{"dht", far.String(), []rec{{PeerID: far.String(), Name: "?", Addrs: []string{"/ip4/10.0.0.7/tcp/4001"}, Roles: []string{"partner"}}}, true},
		{"miss by name", "carol", []rec{}, false},
		{"miss by id", nobody.String(), []rec{}, true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a.dht.mu.Lock()
			asked := len(a.dht.asked)
			a.dht.mu.Unlock()
			id := fmt.Sprintf("peer-%d", i)
			res := a.search(t, DataTypePeer, fmt.Sprintf(`{"search":%q,"query_id":%q}`, tc.search, id))
			if len(res) != 1 || res["query_id"] != id {
				t.Fatalf("reply %v", res)
			}
			wait.For(t, 5*time.Second, "the peer search answers", func() bool { return len(a.pub.get(id)) == 1 })
			ev := a.pub.get(id)[0]
			raw, _ := json.Marshal(ev)
			var got struct {
				From     string `json:"from"`
				DataType string `json:"data_type"`
				Results  []rec  `json:"results"`
			}
			if err := json.Unmarshal(raw, &got); err != nil || got.Results == nil {
				t.Fatalf("event %s: %v", raw, err)
			}
			if got.From != a.id.String() || got.DataType != DataTypePeer || fmt.Sprint(got.Results) != fmt.Sprint(tc.want) {
				t.Fatalf("event %s, want results %v", raw, tc.want)
			}
			a.dht.mu.Lock()
			defer a.dht.mu.Unlock()
			if (len(a.dht.asked) > asked) != tc.dht {
				t.Fatalf("DHT asked: %v, want %v", a.dht.asked[asked:], tc.dht)
			}
			// The answer is published just before the query closes.
			wait.For(t, 5*time.Second, "the peer search closes", func() bool { return !a.svc.isOpen(id) })
		})
	}
}

func TestSearchBadRequests(t *testing.T) {
	a := newNode(t, "A", nil)
	long := strings.Repeat("x", MaxTextBytes+1)
	cases := []struct{ dataType, payload string }{
		{"vm", `{"type":"everyone","search":"x"}`},
		{"vm", `{"search":"x","query_id":"bad id!"}`},
		{"vm", `{"search":"x","query_id":""}`},
		{"vm", `{"search":"x","query_id":"` + strings.Repeat("q", 65) + `"}`},
		{"vm", `{"search":"x","query_id":"a.b"}`},
		{"vm", `{"search":"x","limit":0}`},
		{"vm", `{"search":"x","limit":501}`},
		{"vm", `{"search":"x","limit":"5"}`},
		{"vm", `{"search":"x","wait_ms":0}`},
		{"vm", `{"search":"x","wait_ms":30001}`},
		{"vm", `{"search":5}`},
		{"vm", `{"search":"` + long + `"}`},
		{"vm", `[1,2]`},
		{"vm", ``},
		{"vm", `"all"`},
		{"bad type!", `{"search":"x"}`},
		{"", `{"search":"x"}`},
		{DataTypePeer, `{}`},
		{DataTypePeer, `{"search":"   "}`},
	}
	for _, tc := range cases {
		_, err := a.svc.Search(context.Background(), tc.dataType, json.RawMessage(tc.payload))
		if !errors.Is(err, ferry.ErrBadRequest) {
			t.Errorf("%s %s: %v, want bad_request", tc.dataType, tc.payload, err)
		}
	}
	// Limits at their bounds are fine; an open query id may not be reused.
	a.search(t, "vm", `{"type":"partner","search":"x","query_id":"dup","limit":500,"wait_ms":30000}`)
	a.search(t, "vm", `{"type":"partner","query_id":"ok","limit":1,"wait_ms":1}`)
	_, err := a.svc.Search(context.Background(), "vm", json.RawMessage(`{"type":"known","query_id":"dup"}`))
	if !errors.Is(err, ferry.ErrConflict) {
		t.Errorf("reused query id: %v, want conflict", err)
	}
}

func TestExpiredAndUnknownResultsDropped(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	a := newNode(t, "A", func(n *tnode) { n.svc.now = clk.Now })
	x, _ := newHost(t)
	a.roles.addMember(x.ID(), "X")
	connect(t, x, a.h)
	results := func(id, dataType string) []byte {
		return frame(t, &pb.SearchFrame{Results: &pb.SearchResults{QueryId: id, DataType: dataType,
			Results: [][]byte{[]byte(`{"id":"x1"}`)}}})
	}

	a.search(t, "vm", `{"type":"partner","search":"x","query_id":"q-old","wait_ms":1000}`)
	clk.Add(2 * time.Second)
	if err := rawStream(t, x, a.id, results("q-old", "vm")); err != nil {
		t.Fatalf("results for an expired query: %v, want a clean close", err)
	}
	if err := rawStream(t, x, a.id, results("q-never", "vm")); err != nil {
		t.Fatalf("results for an unknown query: %v, want a clean close", err)
	}
	if n := count(a.svc.m.dropped, dropUnknown); n != 2 {
		t.Fatalf("dropped unknown %v, want 2", n)
	}
	if a.pub.total() != 0 {
		t.Fatalf("published %d events for dropped results", a.pub.total())
	}

	a.search(t, "vm", `{"type":"partner","search":"x","query_id":"q-live","wait_ms":1000}`)
	if err := rawStream(t, x, a.id, results("q-live", "disk")); err != nil {
		t.Fatal(err)
	}
	if err := rawStream(t, x, a.id, results("q-live", "vm")); err != nil {
		t.Fatal(err)
	}
	if err := rawStream(t, x, a.id, results("q-live", "vm")); err != nil {
		t.Fatal(err)
	}
	evs := a.pub.get("q-live")
	if got := fmt.Sprint(ids(t, evs)); len(evs) != 1 || got != fmt.Sprint(map[string][]string{x.ID().String(): {"x1"}}) {
		t.Fatalf("events %v", got)
	}
	if d, m := count(a.svc.m.dropped, dropDuplicate), count(a.svc.m.dropped, dropMalformed); d != 1 || m != 1 {
		t.Fatalf("dropped duplicate %v, wrong data type %v; want 1 and 1", d, m)
	}
}

func TestRateLimitDropsFlood(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	b := newNode(t, "B", func(n *tnode) { n.svc.now = clk.Now })
	b.put(t, "vm", "b1", b.id, `{"id":"b1","name":"alpha"}`, false)
	x, _ := newHost(t)
	var answers atomic.Int64
	x.SetStreamHandler(protocols.Search, func(s network.Stream) {
		f := &pb.SearchFrame{}
		if err := protocols.NewFrameReader(s, 1<<21).Read(f); err == nil && f.Results != nil {
			answers.Add(1)
		}
		_ = s.Close()
	})
	b.roles.addMember(x.ID(), "X")
	connect(t, x, b.h)
	query := func(i int) []byte {
		return frame(t, &pb.SearchFrame{Query: &pb.SearchQuery{QueryId: fmt.Sprintf("flood-%d", i), Asker: []byte(x.ID()),
			DataType: "vm", Text: "alpha", Limit: 5, DeadlineUnixNano: clk.Now().Add(10 * time.Second).UnixNano()}})
	}
	for i := range 60 {
		if err := rawStream(t, x, b.id, query(i)); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	if n := count(b.svc.m.dropped, dropRateLimited); n != 60-QueryBurst {
		t.Fatalf("dropped %v queries over the rate, want %d", n, 60-QueryBurst)
	}
	wait.For(t, 10*time.Second, "B answers the queries within the burst", func() bool { return answers.Load() == QueryBurst })

	clk.Add(time.Second) // refills QueryRate tokens
	for i := 60; i < 66; i++ {
		if err := rawStream(t, x, b.id, query(i)); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	wait.For(t, 10*time.Second, "B answers the refilled queries", func() bool {
		return answers.Load() == QueryBurst+QueryRate && count(b.svc.m.results, "out") == QueryBurst+QueryRate
	})
	if n := count(b.svc.m.dropped, dropRateLimited); n != 60-QueryBurst+1 {
		t.Fatalf("dropped %v queries over the rate, want %d", n, 60-QueryBurst+1)
	}
}

func TestMalformedFramesResetTheStream(t *testing.T) {
	b := newNode(t, "B", nil)
	b.put(t, "vm", "b1", b.id, `{"id":"b1","name":"alpha"}`, false)
	x, _ := newHost(t)
	stranger, _ := newHost(t)
	b.roles.addMember(x.ID(), "X")
	connect(t, x, b.h)
	connect(t, stranger, b.h)
	deadline := time.Now().Add(5 * time.Second).UnixNano()
	good := &pb.SearchQuery{QueryId: "q1", Asker: []byte(x.ID()), DataType: "vm", Limit: 5, DeadlineUnixNano: deadline}
	with := func(f func(q *pb.SearchQuery)) *pb.SearchQuery {
		q := proto.Clone(good).(*pb.SearchQuery)
		f(q)
		return q
	}
	results := &pb.SearchResults{QueryId: "q1", DataType: "vm", Results: [][]byte{[]byte(`{"id":"r"}`)}}
	cases := []struct {
		name string
		data []byte
	}{
		{"not protobuf", rawFrame([]byte{0xff, 0xff, 0xff, 0xff})},
		{"empty frame", frame(t, &pb.SearchFrame{})},
		{"query and results", frame(t, &pb.SearchFrame{Query: good, Results: results})},
		{"over the size limit", append(protoVarint(1<<30), 1, 2, 3)},
		{"truncated", rawFrame([]byte{0x0a, 0x20, 0x01})[:3]},
		{"peer data type", frame(t, &pb.SearchFrame{Query: with(func(q *pb.SearchQuery) { q.DataType = DataTypePeer })})},
		{"bad query id", frame(t, &pb.SearchFrame{Query: with(func(q *pb.SearchQuery) { q.QueryId = "a b" })})},
		{"zero limit", frame(t, &pb.SearchFrame{Query: with(func(q *pb.SearchQuery) { q.Limit = 0 })})},
		{"far deadline", frame(t, &pb.SearchFrame{Query: with(func(q *pb.SearchQuery) { q.DeadlineUnixNano = time.Now().Add(time.Hour).UnixNano() })})},
		{"bad asker", frame(t, &pb.SearchFrame{Query: with(func(q *pb.SearchQuery) { q.Asker = []byte("nope") })})},
		{"results not JSON", frame(t, &pb.SearchFrame{Results: &pb.SearchResults{QueryId: "q1", DataType: "vm", Results: [][]byte{[]byte("{")}}})},
	}
	for _, tc := range cases {
		if err := rawStream(t, x, b.id, tc.data); !isReset(err) {
			t.Errorf("%s: %v, want a reset", tc.name, err)
		}
	}
	if n := count(b.svc.m.dropped, dropMalformed); n != float64(len(cases)) {
		t.Errorf("dropped %v malformed frames, want %d", n, len(cases))
	}
	if err := rawStream(t, stranger, b.id, frame(t, &pb.SearchFrame{Query: with(func(q *pb.SearchQuery) { q.Asker = []byte(stranger.ID()) })})); !isReset(err) {
		t.Errorf("a non-member's query: %v, want a reset", err)
	}
	// A well-formed frame closes cleanly.
	if err := rawStream(t, x, b.id, frame(t, &pb.SearchFrame{Results: results})); err != nil {
		t.Errorf("results for an unknown query: %v, want a clean close", err)
	}
	if n := count(b.svc.m.results, "out"); n != 0 {
		t.Errorf("B answered %v results to malformed queries", n)
	}
}

func TestSpoofedAskerDropped(t *testing.T) {
	a, b := newNode(t, "A", nil), newNode(t, "B", nil)
	mesh(t, a, b)
	b.put(t, "vm", "b1", b.id, `{"id":"b1","name":"alpha"}`, false)
	x, _ := newHost(t)
	b.roles.addMember(x.ID(), "X")
	connect(t, x, b.h)
	query := func(id string, asker peer.ID) *pb.SearchQuery {
		return &pb.SearchQuery{QueryId: id, Asker: []byte(asker), DataType: "vm", Text: "alpha", Limit: 5,
			DeadlineUnixNano: time.Now().Add(5 * time.Second).UnixNano()}
	}

	// Directly: X asks on A's behalf.
	if err := rawStream(t, x, b.id, frame(t, &pb.SearchFrame{Query: query("spoof-1", a.id)})); !isReset(err) {
		t.Fatalf("spoofed direct query: %v, want a reset", err)
	}
	if n := count(b.svc.m.dropped, dropSpoofed); n != 1 {
		t.Fatalf("dropped spoofed %v, want 1", n)
	}

	// Through gossip: X signs a message whose query names A as the asker.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ps, err := pubsub.NewGossipSub(ctx, x)
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(b.svc.Topic())
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, 15*time.Second, "X sees B on the topic", func() bool { return slices.Contains(topic.ListPeers(), b.id) })
	publish := func(q *pb.SearchQuery) {
		t.Helper()
		data, err := proto.Marshal(q)
		if err != nil {
			t.Fatal(err)
		}
		if err := topic.Publish(ctx, data); err != nil {
			t.Fatal(err)
		}
	}
	publish(query("honest", x.ID()))
	wait.For(t, 10*time.Second, "B takes X's own query", func() bool { return count(b.svc.m.queries, "in", "gossip") == 1 })
	publish(query("spoof-2", a.id))
	wait.For(t, 10*time.Second, "B drops the spoofed gossip query", func() bool { return count(b.svc.m.dropped, dropSpoofed) == 2 })
	if err := topic.Publish(ctx, []byte("not a query")); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "B drops the malformed gossip query", func() bool { return count(b.svc.m.dropped, dropMalformed) == 1 })
	b.roles.mu.Lock()
	delete(b.roles.members, x.ID())
	b.roles.mu.Unlock()
	publish(query("stranger", x.ID()))
	wait.For(t, 10*time.Second, "B drops a non-member's query", func() bool { return count(b.svc.m.dropped, dropNotMember) == 1 })
	if n := count(b.svc.m.queries, "in", "gossip"); n != 1 {
		t.Fatalf("B took %v gossip queries, want 1", n)
	}
	if a.pub.total() != 0 {
		t.Fatalf("A got %d events for queries it never asked", a.pub.total())
	}
	_ = topic.Close()
}

func TestCollect(t *testing.T) {
	a := newNode(t, "A", func(n *tnode) {
		n.book.recs = []PeerRecord{{PeerID: "12D3KooWexample", Name: "bob"}}
	})
	b := newNode(t, "B", nil)
	mesh(t, a, b)
	b.put(t, "vm", "b1", b.id, `{"id":"b1","name":"alpha"}`, false)
	b.put(t, "vm", "b2", b.id, `{"id":"b2","name":"beta"}`, false)

	col, err := a.svc.Collect(context.Background(), CollectRequest{DataType: "vm", Search: "alpha", Type: ScopeKnown, WaitMs: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if col.QueryID == "" || col.Scope != ScopeKnown || col.Asked != 1 || len(col.Results) != 1 {
		t.Fatalf("collection %+v", col)
	}
	h := col.Results[0]
	if h.From != b.id.String() || h.Name != "B" || h.DataType != "vm" || !strings.Contains(string(h.Result), `"b1"`) {
		t.Fatalf("hit %+v", h)
	}
	if a.svc.isOpen(col.QueryID) || len(a.pub.get(col.QueryID)) != 1 {
		t.Fatal("the collected query is still open, or its results were not published")
	}

	start := time.Now()
	col, err = a.svc.Collect(context.Background(), CollectRequest{DataType: DataTypePeer, Search: "bob", WaitMs: 20000})
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 10*time.Second || len(col.Results) != 1 || !strings.Contains(string(col.Results[0].Result), `"bob"`) {
		t.Fatalf("peer collection %+v after %v", col, time.Since(start))
	}
	if _, err := a.svc.Collect(context.Background(), CollectRequest{DataType: "vm", Type: "everyone"}); !errors.Is(err, ferry.ErrBadRequest) {
		t.Fatalf("bad scope: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if col, err := a.svc.Collect(ctx, CollectRequest{DataType: "vm", Type: ScopeKnown, WaitMs: 20000}); err != nil || col.Results == nil {
		t.Fatalf("cancelled collect: %+v, %v", col, err)
	}
}

func TestCloseIsIdempotentAndStopsSearches(t *testing.T) {
	a := newNode(t, "A", nil)
	a.svc.Close()
	a.svc.Close()
	if _, err := a.svc.Search(context.Background(), "vm", json.RawMessage(`{"search":"x"}`)); !errors.Is(err, ferry.ErrUnavailable) {
		t.Fatalf("search after close: %v", err)
	}
	if err := a.svc.Start(); err == nil {
		t.Fatal("start after close succeeded")
	}
	h, _ := newHost(t)
	s, err := New(Deps{Host: h, Store: a.st, Roles: a.roles, Publisher: a.pub})
	if err != nil {
		t.Fatal(err)
	}
	s.Close() // never started
	if _, err := New(Deps{Host: h}); err == nil {
		t.Fatal("New without a store succeeded")
	}
}

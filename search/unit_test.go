package search

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/protocols/pb"
)

func TestLimiter(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	l := newLimiter(5, 20, 3, clk.Now)
	p := peer.ID("p")
	for i := range 20 {
		if ok, _ := l.allow(p); !ok {
			t.Fatalf("query %d of the burst refused", i)
		}
	}
	if ok, first := l.allow(p); ok || !first {
		t.Fatalf("21st: ok %v first %v, want refused, first", ok, first)
	}
	if ok, first := l.allow(p); ok || first {
		t.Fatalf("22nd: ok %v first %v, want refused, not first", ok, first)
	}
	clk.Add(time.Second)
	for i := range 5 {
		if ok, _ := l.allow(p); !ok {
			t.Fatalf("refilled query %d refused", i)
		}
	}
	if ok, first := l.allow(p); ok || !first {
		t.Fatalf("after the refill: ok %v first %v", ok, first)
	}
	// Other peers have their own buckets; a full table forgets full buckets.
	l.allow("q")
	l.allow("r")
	if ok, _ := l.allow("s"); ok {
		t.Fatal("a fourth peer got a bucket in a table of 3 with none full")
	}
	clk.Add(10 * time.Second)
	if ok, _ := l.allow("s"); !ok {
		t.Fatal("a fourth peer was refused once the others' buckets refilled")
	}
	if len(l.peers) > 3 {
		t.Fatalf("%d buckets in a table of 3", len(l.peers))
	}
}

func TestParseRequest(t *testing.T) {
	cases := []struct {
		dataType, payload string
		want              Request
	}{
		{"vm", `{"search":"a"}`, Request{DataType: "vm", Text: "a", Scope: ScopeAll, Limit: DefaultLimit, Wait: DefaultWait}},
		{"vm", `{}`, Request{DataType: "vm", Scope: ScopeAll, Limit: DefaultLimit, Wait: DefaultWait}},
		{"vm", `{"type":"partner","search":"x","query_id":"Q_1-a","limit":7,"wait_ms":250}`,
			Request{DataType: "vm", Text: "x", Scope: ScopePartner, QueryID: "Q_1-a", Limit: 7, Wait: 250 * time.Millisecond}},
		{DataTypePeer, `{"search":"  bob "}`, Request{DataType: DataTypePeer, Text: "bob", Limit: DefaultLimit, Wait: DefaultWait}},
	}
	for _, tc := range cases {
		got, err := ParseRequest(tc.dataType, json.RawMessage(tc.payload))
		if err != nil || got != tc.want {
			t.Errorf("%s %s: %+v, %v; want %+v", tc.dataType, tc.payload, got, err, tc.want)
		}
	}
	// A member the payload does not have is refused by name (a misspelt
	// limit would otherwise be the default in silence), and a wrong type
	// names the member.
	for payload, want := range map[string]string{
		`{"search":"x","limt":7}`:    "unknown field `payload.limt` (did you mean `payload.limit`?)",
		`{"search":"x","limit":"7"}`: "`payload.limit` must be an integer, got \"7\"",
		`{"search":5}`:               "`payload.search` must be a string, got 5",
	} {
		_, err := ParseRequest("vm", json.RawMessage(payload))
		if !errors.Is(err, ferry.ErrBadRequest) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want bad_request saying %s", payload, err, want)
		}
	}
}

func TestCheckQuery(t *testing.T) {
	now := time.Unix(1000, 0)
	key, _, _ := crypto.GenerateEd25519Key(nil)
	asker, _ := peer.IDFromPrivateKey(key)
	good := &pb.SearchQuery{QueryId: "q", Asker: []byte(asker), DataType: "vm", Text: "x", Limit: 1,
		DeadlineUnixNano: now.Add(MaxWait).UnixNano()}
	if got, err := checkQuery(good, now); err != nil || got != asker {
		t.Fatalf("good query: %v, %v", got, err)
	}
	bad := map[string]func(q *pb.SearchQuery){
		"no id":        func(q *pb.SearchQuery) { q.QueryId = "" },
		"no type":      func(q *pb.SearchQuery) { q.DataType = "" },
		"peer":         func(q *pb.SearchQuery) { q.DataType = DataTypePeer },
		"long text":    func(q *pb.SearchQuery) { q.Text = string(make([]byte, MaxTextBytes+1)) },
		"not utf-8":    func(q *pb.SearchQuery) { q.Text = "\xff" },
		"no limit":     func(q *pb.SearchQuery) { q.Limit = 0 },
		"big limit":    func(q *pb.SearchQuery) { q.Limit = MaxLimit + 1 },
		"no deadline":  func(q *pb.SearchQuery) { q.DeadlineUnixNano = 0 },
		"far deadline": func(q *pb.SearchQuery) { q.DeadlineUnixNano = now.Add(MaxWait + clockSkew + time.Second).UnixNano() },
		"no asker":     func(q *pb.SearchQuery) { q.Asker = nil },
	}
	for name, f := range bad {
		q := proto.Clone(good).(*pb.SearchQuery)
		f(q)
		if _, err := checkQuery(q, now); !errors.Is(err, errMalformed) {
			t.Errorf("%s: %v, want malformed", name, err)
		}
	}
}

func FuzzDecodeQuery(f *testing.F) {
	now := time.Unix(1000, 0)
	key, _, _ := crypto.GenerateEd25519Key(nil)
	asker, _ := peer.IDFromPrivateKey(key)
	good, _ := proto.Marshal(&pb.SearchQuery{QueryId: "q", Asker: []byte(asker), DataType: "vm", Text: "x", Limit: 1,
		DeadlineUnixNano: now.Add(time.Second).UnixNano()})
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte("not a query"))
	f.Add(make([]byte, maxQueryBytes+1))
	f.Fuzz(func(t *testing.T, data []byte) {
		q, got, err := decodeQuery(data, now)
		if err != nil {
			if !errors.Is(err, errMalformed) {
				t.Fatalf("error %v does not wrap errMalformed", err)
			}
			return
		}
		if got == "" || !ValidQueryID(q.GetQueryId()) || q.GetLimit() < 1 || q.GetLimit() > MaxLimit {
			t.Fatalf("accepted %v", q)
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{`{"search":"a"}`, `{"type":"known","limit":3,"wait_ms":10,"query_id":"x"}`, `[]`, `{"search":1}`, ``} {
		f.Add("vm", s)
		f.Add(DataTypePeer, s)
	}
	f.Fuzz(func(t *testing.T, dataType, payload string) {
		r, err := ParseRequest(dataType, json.RawMessage(payload))
		if err != nil {
			if !errors.Is(err, ferry.ErrBadRequest) {
				t.Fatalf("error %v does not wrap ErrBadRequest", err)
			}
			return
		}
		if r.Limit < 1 || r.Limit > MaxLimit || r.Wait <= 0 || r.Wait > MaxWait || (r.QueryID != "" && !ValidQueryID(r.QueryID)) {
			t.Fatalf("accepted %+v", r)
		}
		if r.DataType != DataTypePeer && r.Scope != ScopeAll && r.Scope != ScopeKnown && r.Scope != ScopePartner {
			t.Fatalf("scope %q", r.Scope)
		}
	})
}

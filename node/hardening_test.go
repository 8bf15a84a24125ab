package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/store"
)

// api calls node i's admin API and returns the status and body.
func api(t *testing.T, net *testnet.Net, i int, method, path string, body io.Reader, header http.Header) (int, []byte) {
	t.Helper()
	token, err := net.Homes[i].Token()
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(method, "http://"+net.Node(i).AdminAddr()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

type envelope struct {
	OK    bool `json:"ok"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	NextRaw json.RawMessage   `json:"next"`
	Next    string            `json:"-"` // next of a listing (a string cursor)
	More    bool              `json:"more"`
	ID      json.RawMessage   `json:"id"`
	Version uint64            `json:"version"`
	Request *struct{ ID any } `json:"request"`
	Changes []struct {
		Version uint64 `json:"version"`
	} `json:"changes"`
	Resources []struct{ ID string } `json:"resources"`
	Requests  []struct{ ID uint64 } `json:"requests"`
	Rows      []json.RawMessage     `json:"rows"`
	Peers     []struct {
		PeerID string `json:"peer_id"`
	} `json:"peers"`
}

func decodeEnv(t *testing.T, b []byte) envelope {
	t.Helper()
	var e envelope
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("answer %q: %v", truncate(b), err)
	}
	_ = json.Unmarshal(e.NextRaw, &e.Next)
	return e
}

func truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

func natsReq(t *testing.T, nc *nats.Conn, msg *nats.Msg) envelope {
	t.Helper()
	r, err := nc.RequestMsg(msg, 30*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", msg.Subject, err)
	}
	return decodeEnv(t, r.Data)
}

func msg(subject, body string, header ...string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	for i := 0; i+1 < len(header); i += 2 {
		m.Header.Set(header[i], header[i+1])
	}
	return m
}

// creates sends n creates of data type vm with a pad of size bytes, 64 in
// flight, and fails on any error.
func creates(t *testing.T, nc *nats.Conn, from, n, size int) {
	t.Helper()
	pad := strings.Repeat("p", size)
	type res struct {
		i   int
		msg *nats.Msg
		err error
	}
	sem := make(chan struct{}, 64)
	out := make(chan res, n)
	for i := from; i < from+n; i++ {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			m, err := nc.Request("ferry.propagate", fmt.Appendf(nil, `{"action":"create","data_type":"vm","payload":{"id":"vm-%05d","pad":%q}}`, i, pad), 30*time.Second)
			out <- res{i, m, err}
		}()
	}
	for range n {
		r := <-out
		if r.err != nil || !bytes.Contains(r.msg.Data, []byte(`"ok":true`)) {
			t.Fatalf("create %d: %v %s", r.i, r.err, r.msg.Data)
		}
	}
}

// TestAdminListingsArePaged: resources, requests, table rows and peers come
// in pages of at most limit (default 100, at most 1000) with a next cursor
// that walks every row once.
func TestAdminListingsArePaged(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 3, Mesh: true, Reviewer: testnet.At(0)})
	nc := net.NATS(0)
	creates(t, nc, 0, 250, 8)
	for i := range 130 {
		e := natsReq(t, nc, msg("ferry.review.submit", fmt.Sprintf(`{"type":"insert","table_name":"tb","table_id":%d,"data":{"x":%d}}`, i+1, i)))
		if !e.OK {
			t.Fatalf("submit %d: %+v", i, e.Error)
		}
	}
	seed := map[uint64]json.RawMessage{}
	for i := range 230 {
		seed[uint64(i+1)] = json.RawMessage(fmt.Sprintf(`{"v":%d}`, i))
	}
	if err := net.Node(0).Review().Seed(context.Background(), "seeded", seed); err != nil {
		t.Fatal(err)
	}
	net.WaitMembers(30 * time.Second)

	walk := func(path string, count func(envelope) int) (pages, rows int) {
		t.Helper()
		after := ""
		for {
			p := path
			if after != "" {
				sep := "?"
				if strings.Contains(p, "?") {
					sep = "&"
				}
				p += sep + "after=" + after
			}
			code, b := api(t, net, 0, "GET", p, nil, nil)
			e := decodeEnv(t, b)
			if code != 200 || !e.OK {
				t.Fatalf("GET %s: %d %s", p, code, truncate(b))
			}
			pages++
			rows += count(e)
			if e.Next == "" {
				return pages, rows
			}
			if pages > 100 {
				t.Fatalf("GET %s: more than 100 pages", path)
			}
			after = e.Next
		}
	}
	for _, tc := range []struct {
		path         string
		count        func(envelope) int
		pages, total int
	}{
		{"/api/v1/resources", func(e envelope) int { return len(e.Resources) }, 3, 250},
		{"/api/v1/resources?data_type=vm&limit=1000", func(e envelope) int { return len(e.Resources) }, 1, 250},
		{"/api/v1/resources?limit=60", func(e envelope) int { return len(e.Resources) }, 5, 250},
		{"/api/v1/requests", func(e envelope) int { return len(e.Requests) }, 2, 130},
		{"/api/v1/requests?status=waiting&limit=50", func(e envelope) int { return len(e.Requests) }, 3, 130},
		{"/api/v1/tables/seeded/rows", func(e envelope) int { return len(e.Rows) }, 3, 230},
		{"/api/v1/peers?limit=1", func(e envelope) int { return len(e.Peers) }, 2, 2},
	} {
		pages, total := walk(tc.path, tc.count)
		if pages != tc.pages || total != tc.total {
			t.Errorf("GET %s: %d rows in %d pages, want %d in %d", tc.path, total, pages, tc.total, tc.pages)
		}
	}
	// Each row once, in order.
	seen := map[string]bool{}
	after := ""
	for {
		_, b := api(t, net, 0, "GET", "/api/v1/resources?limit=70&after="+after, nil, nil)
		e := decodeEnv(t, b)
		for _, r := range e.Resources {
			if seen[r.ID] {
				t.Fatalf("resource %s on two pages", r.ID)
			}
			seen[r.ID] = true
		}
		if after = e.Next; after == "" {
			break
		}
	}
	if len(seen) != 250 {
		t.Fatalf("%d distinct resources over the pages, want 250", len(seen))
	}
	for _, bad := range []string{"/api/v1/resources?limit=1001", "/api/v1/requests?limit=0", "/api/v1/requests?after=x", "/api/v1/resources?after=!!!", "/api/v1/peers?limit=-1"} {
		if code, b := api(t, net, 0, "GET", bad, nil, nil); code != 400 || decodeEnv(t, b).Error.Code != "bad_request" {
			t.Errorf("GET %s: %d %s, want 400 bad_request", bad, code, truncate(b))
		}
	}
}

// TestAdminAnswersAreCompactAndBounded: answers are compact JSON (indented
// only with ?pretty=1), documents nest at most 64 levels, and every body
// over the limit gets 413 too_large, whatever its size.
func TestAdminAnswersAreCompactAndBounded(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1, Reviewer: testnet.At(0)})
	nc := net.NATS(0)
	deep := strings.Repeat("[", 63) + strings.Repeat("]", 63)
	if e := natsReq(t, nc, msg("ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"ok","d":`+deep+`}}`)); !e.OK {
		t.Fatalf("a document 64 levels deep (63 arrays in an object): %+v", e.Error)
	}
	deeper := strings.Repeat("[", 64) + strings.Repeat("]", 64)
	if e := natsReq(t, nc, msg("ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"no","d":`+deeper+`}}`)); e.OK || e.Error.Code != "bad_request" {
		t.Fatalf("a document 65 levels deep: %+v", e)
	}
	tooDeep := strings.Repeat("[", 9000) + strings.Repeat("]", 9000)
	for _, m := range []*nats.Msg{
		msg("ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"deep","d":`+tooDeep+`}}`),
		msg("ferry.propagate", `{"action":"considers","data_type":"vm","payload":{"peer_ids":[],"d":`+tooDeep+`}}`),
		msg("ferry.review.submit", `{"type":"insert","table_name":"tb","table_id":1,"data":{"d":`+tooDeep+`}}`),
	} {
		if e := natsReq(t, nc, m); e.OK || e.Error.Code != "bad_request" || !strings.Contains(e.Error.Message, "deeper than 64") {
			t.Fatalf("%s with 9000 nested arrays: %+v", m.Subject, e.Error)
		}
	}
	code, b := api(t, net, 0, "GET", "/api/v1/changes?limit=1", nil, nil)
	if code != 200 || bytes.Contains(b, []byte("\n ")) || bytes.Count(b, []byte("\n")) != 1 {
		t.Fatalf("changes are not compact: %s", truncate(b))
	}
	_, pretty := api(t, net, 0, "GET", "/api/v1/changes?limit=1&pretty=1", nil, nil)
	if !bytes.Contains(pretty, []byte("\n  ")) {
		t.Fatalf("?pretty=1 is not indented: %s", truncate(pretty))
	}
	// Bodies over 2 × max_message_bytes + 64 KiB: 413 however large, with or
	// without a Content-Length.
	limit := 2*net.Config(0).Limits.MaxMessageBytes + 64<<10
	for _, tc := range []struct {
		name string
		body func() io.Reader // a fresh one per request: the client may still read it after the answer
	}{
		{"limit+1 bytes", func() io.Reader { return bytes.NewReader(make([]byte, limit+1)) }},
		{"20 MB", func() io.Reader { return bytes.NewReader(make([]byte, 20<<20)) }},
		{"200 MB without a length", func() io.Reader { return io.LimitReader(zeros{}, 200<<20) }},
	} {
		for _, path := range []string{"/api/v1/propagate", "/api/v1/review/submit", "/api/v1/requests/1/edit"} {
			code, b := api(t, net, 0, "POST", path, tc.body(), nil)
			if e := decodeEnv(t, b); code != 413 || e.Error == nil || e.Error.Code != "too_large" {
				t.Fatalf("POST %s with %s: %d %s, want 413 too_large", path, tc.name, code, truncate(b))
			}
		}
	}
	// A body of exactly the limit is read (and then judged on its content).
	code, b = api(t, net, 0, "POST", "/api/v1/propagate", bytes.NewReader(bytes.Repeat([]byte(" "), limit)), nil)
	if code != 400 {
		t.Fatalf("a body of exactly the limit: %d %s", code, truncate(b))
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestChangesFillTheReplyToMaxPayload: a page of ferry.changes stops before
// the NATS server's max payload and says where to continue; before, a page
// over it got no reply at all (the app timed out).
func TestChangesFillTheReplyToMaxPayload(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1})
	nc := net.NATS(0)
	creates(t, nc, 0, 120, 40<<10) // 4.8 MB
	max := nc.MaxPayload()
	since, got, pages := uint64(0), 0, 0
	for {
		r, err := nc.Request("ferry.changes", fmt.Appendf(nil, `{"since":%d,"limit":10000}`, since), 30*time.Second)
		if err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		if int64(len(r.Data)) > max {
			t.Fatalf("a reply of %d bytes, over the max payload %d", len(r.Data), max)
		}
		e := decodeEnv(t, r.Data)
		if !e.OK || len(e.Changes) == 0 && e.More {
			t.Fatalf("page %d: %+v", pages, e.Error)
		}
		for _, c := range e.Changes {
			if c.Version <= since {
				t.Fatalf("version %d after %d", c.Version, since)
			}
			since = c.Version
			got++
		}
		if string(e.NextRaw) != fmt.Sprint(since) {
			t.Fatalf("next is %s, want %d (the last version sent)", e.NextRaw, since)
		}
		pages++
		if !e.More {
			break
		}
	}
	if got != 120 || pages < 3 {
		t.Fatalf("%d changes in %d pages, want 120 in at least 3", got, pages)
	}
	// The end says so.
	r, err := nc.Request("ferry.changes", fmt.Appendf(nil, `{"since":%d}`, since), 10*time.Second)
	if err != nil || !bytes.Contains(r.Data, []byte(`"more":false`)) || !bytes.Contains(r.Data, []byte(`"changes":[]`)) {
		t.Fatalf("past the end: %v %s", err, r.Data)
	}
}

// TestIdempotentRetries: a request repeated with its key (Nats-Msg-Id, the
// body's idempotency_key, or the admin API's Idempotency-Key) gets the
// first answer, never conflict, across a restart too; the same key with
// another request is conflict; duplicates racing each other write once.
func TestIdempotentRetries(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1, Reviewer: testnet.At(0), Configure: func(_ int, c *node.Config) {
		c.Limits.IdempotencyWindowSeconds = 3600
	}})
	nc := net.NATS(0)
	create := `{"action":"create","data_type":"vm","payload":{"id":"vm1","cpu":2}}`
	first := natsReq(t, nc, msg("ferry.propagate", create, "Nats-Msg-Id", "k-1"))
	if !first.OK || first.Version == 0 {
		t.Fatalf("first create: %+v", first.Error)
	}
	// The same request again: with the header, with the body field, with
	// other spacing; all get the first answer.
	for i, m := range []*nats.Msg{
		msg("ferry.propagate", create, "Nats-Msg-Id", "k-1"),
		msg("ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"vm1","cpu":2},"idempotency_key":"k-1"}`),
		msg("ferry.propagate", `{"action": "create", "data_type": "vm", "payload": { "id": "vm1", "cpu": 2 }}`, "Nats-Msg-Id", "k-1"),
	} {
		e := natsReq(t, nc, m)
		if !e.OK || e.Version != first.Version || string(e.ID) != string(first.ID) {
			t.Fatalf("retry %d: %+v (version %d), want the first answer (version %d)", i, e.Error, e.Version, first.Version)
		}
	}
	// Without the key, the retry is a conflict, as before.
	if e := natsReq(t, nc, msg("ferry.propagate", create)); e.OK || e.Error.Code != "conflict" {
		t.Fatalf("a retry without a key: %+v", e)
	}
	// The key with another request.
	e := natsReq(t, nc, msg("ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"vm2"}}`, "Nats-Msg-Id", "k-1"))
	if e.OK || e.Error.Code != "conflict" || !strings.Contains(e.Error.Message, "different request") {
		t.Fatalf("a key reused for another request: %+v", e)
	}
	// Header and body field that differ.
	e = natsReq(t, nc, msg("ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"vm3"},"idempotency_key":"a"}`, "Nats-Msg-Id", "b"))
	if e.OK || e.Error.Code != "bad_request" {
		t.Fatalf("header and body keys differ: %+v", e)
	}
	// review.submit: one request row for any number of retries.
	submit := `{"type":"insert","table_name":"tb","table_id":7,"data":{"x":1},"description":"d"}`
	s1 := natsReq(t, nc, msg("ferry.review.submit", submit, "Nats-Msg-Id", "s-1"))
	s2 := natsReq(t, nc, msg("ferry.review.submit", submit, "Nats-Msg-Id", "s-1"))
	if !s1.OK || !s2.OK || fmt.Sprint(s1.Request.ID) != fmt.Sprint(s2.Request.ID) {
		t.Fatalf("submit retried: %+v %+v", s1, s2)
	}
	if rows, _ := net.Node(0).Review().Requests(""); len(rows) != 1 {
		t.Fatalf("%d request rows after a retried submit, want 1", len(rows))
	}
	// The admin API: Idempotency-Key header.
	h := http.Header{"Idempotency-Key": {"a-1"}}
	body := `{"action":"create","data_type":"vm","payload":{"id":"vm-admin"}}`
	_, b1 := api(t, net, 0, "POST", "/api/v1/propagate", strings.NewReader(body), h)
	code, b2 := api(t, net, 0, "POST", "/api/v1/propagate", strings.NewReader(body), h)
	if code != 200 || decodeEnv(t, b1).Version != decodeEnv(t, b2).Version {
		t.Fatalf("admin retry: %d %s vs %s", code, b1, b2)
	}
	// Racing duplicates write once.
	var wg sync.WaitGroup
	versions := make(chan uint64, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := nc.RequestMsg(msg("ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"race"}}`, "Nats-Msg-Id", "race"), 30*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			var e envelope
			if err := json.Unmarshal(r.Data, &e); err != nil || !e.OK {
				t.Errorf("racing duplicate: %s", r.Data)
				return
			}
			versions <- e.Version
		}()
	}
	wg.Wait()
	close(versions)
	var v0 uint64
	for v := range versions {
		if v0 == 0 {
			v0 = v
		}
		if v != v0 {
			t.Fatalf("racing duplicates got versions %d and %d", v0, v)
		}
	}
	// The window survives a restart.
	net.Restart(0)
	nc2 := net.NATS(0)
	if e := natsReq(t, nc2, msg("ferry.propagate", create, "Nats-Msg-Id", "k-1")); !e.OK || e.Version != first.Version {
		t.Fatalf("retry after a restart: %+v (version %d), want version %d", e.Error, e.Version, first.Version)
	}
}

// TestIdempotencyWindowEnds: after the window a key is forgotten; the
// retry then runs again (a create of an existing resource: conflict).
func TestIdempotencyWindowEnds(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1, Configure: func(_ int, c *node.Config) { c.Limits.IdempotencyWindowSeconds = 1 }})
	nc := net.NATS(0)
	create := `{"action":"create","data_type":"vm","payload":{"id":"vm1"}}`
	if e := natsReq(t, nc, msg("ferry.propagate", create, "Nats-Msg-Id", "w")); !e.OK {
		t.Fatal(e.Error)
	}
	testnet.WaitFor(t, 10*time.Second, "the key is forgotten", func() bool {
		e := natsReq(t, nc, msg("ferry.propagate", create, "Nats-Msg-Id", "w"))
		return !e.OK && e.Error.Code == "conflict" && !strings.Contains(e.Error.Message, "idempotency")
	})
}

// TestHealthSaysWhyNot: /healthz and /readyz answer 200 with each
// component; below the free-space reserve writes are refused with
// unavailable: disk almost full and both answer 503 with the reason, as
// ferry status does. Before, /healthz always said ok.
func TestHealthSaysWhyNot(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1})
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + net.Node(0).AdminAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := get(p); code != 200 || !strings.HasPrefix(body, "ok\n") || !strings.Contains(body, "store: ok") || !strings.Contains(body, "nats: ok") || !strings.Contains(body, "host: ok") {
			t.Fatalf("%s: %d %q", p, code, body)
		}
	}
	code, body := get("/readyz?format=json")
	var h node.HealthReport
	if err := json.Unmarshal([]byte(body), &h); err != nil || code != 200 || !h.Ready || !h.Live || !h.Store.OK || !h.NATS.OK || h.Host.Addrs == 0 {
		t.Fatalf("/readyz?format=json: %d %s", code, body)
	}
	// A reserve larger than the disk.
	cfg := net.Config(0)
	net.Stop(0)
	h0 := net.Homes[0]
	cfg.Limits.MinFreeDiskMB = 1 << 30 // 1 PiB
	nd, err := node.New(cfg, h0, node.Options{Logger: testnet.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Close()
	if err := nd.Start(); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(nd.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	e := natsReq(t, nc, msg("ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"x"}}`))
	if e.OK || e.Error.Code != "unavailable" || !strings.Contains(e.Error.Message, "disk almost full") {
		t.Fatalf("a write below the reserve: %+v", e.Error)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + nd.AdminAddr() + p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || !strings.HasPrefix(string(b), "unavailable: unavailable: disk almost full") && !strings.HasPrefix(string(b), "unavailable: disk almost full") {
			t.Fatalf("%s below the reserve: %d %q", p, resp.StatusCode, b)
		}
	}
	if st := nd.Status(); st.Health.Ready || !strings.Contains(st.Health.Reason, "disk almost full") {
		t.Fatalf("status below the reserve: %+v", st.Health)
	}
}

// TestCloseAnswersEveryRequestTaken: requests taken before Close began are
// all answered (most of them committed); the ones that come after get no
// responders at once. Before, Close unsubscribed and dropped the queued
// requests, and replied to committed ones on a closed connection.
func TestCloseAnswersEveryRequestTaken(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1})
	nc := net.NATS(0)
	const n = 3000
	replies := make(chan *nats.Msg, n)
	inbox := nats.NewInbox()
	sub, err := nc.ChanSubscribe(inbox+".*", replies)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	for i := range n {
		if err := nc.PublishRequest("ferry.propagate", fmt.Sprintf("%s.%d", inbox, i),
			fmt.Appendf(nil, `{"action":"create","data_type":"vm","payload":{"id":"vm-%d"}}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// The server has handed every request to the node's subscription (the
	// flush above went through the same server); close now, with most of
	// them still queued or committing.
	net.Stop(0)
	answered, ok := map[string]bool{}, 0
	deadline := time.After(30 * time.Second)
	for len(answered) < n {
		select {
		case m := <-replies:
			answered[m.Subject] = true
			if bytes.Contains(m.Data, []byte(`"ok":true`)) {
				ok++
			}
		case <-deadline:
			t.Fatalf("%d of %d requests answered after Close", len(answered), n)
		}
	}
	t.Logf("%d requests answered, %d ok", len(answered), ok)
}

// TestStalledStoreStopsTheNode: a store whose commits stop (here a
// transaction that never returns holds the writer, as a disk that hangs
// would) is reported on /healthz with the reason, becomes the node's fatal
// error after StallExit, and Close returns within its bounds instead of
// hanging.
func TestStalledStoreStopsTheNode(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1, Node: node.Options{StallAfter: 200 * time.Millisecond,
		StallExit: 500 * time.Millisecond, DrainTimeout: time.Second, StoreCloseTimeout: time.Second}})
	nd := net.Node(0)
	block := make(chan struct{})
	released := false
	release := func() {
		if !released {
			released = true
			close(block)
		}
	}
	defer release()
	nd.Store().Submit(context.Background(), func(*store.Txn) error { <-block; return nil }, nil)
	nc := net.NATS(0)
	pending := make(chan error, 1)
	go func() {
		_, err := nc.Request("ferry.propagate", []byte(`{"action":"create","data_type":"vm","payload":{"id":"x"}}`), 3*time.Second)
		pending <- err
	}()
	testnet.WaitFor(t, 10*time.Second, "/healthz says the store is stalled", func() bool {
		resp, err := http.Get("http://" + nd.AdminAddr() + "/healthz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 503 && strings.Contains(string(b), "unavailable: store stalled: no commit finished")
	})
	select {
	case err := <-nd.Fatal():
		if !strings.Contains(err.Error(), "store stalled") {
			t.Fatalf("fatal error: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a stalled store did not become the node's fatal error")
	}
	start := time.Now()
	err := nd.Close()
	if took := time.Since(start); took > 8*time.Second {
		t.Fatalf("Close took %v with the writer stuck", took)
	}
	if err == nil || !strings.Contains(err.Error(), "did not close") {
		t.Fatalf("Close with the writer stuck: %v, want the store's bounded close to say so", err)
	}
	release()
	<-pending // answered or cut by the close: not waited for longer
}

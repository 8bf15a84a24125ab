package natsbridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/wait"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func start(t *testing.T, o Options) *Bridge {
	t.Helper()
	if o.Logger == nil {
		o.Logger = quiet()
	}
	if o.URL == "" && o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	b, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

type answer struct {
	OK    bool           `json:"ok"`
	Echo  map[string]any `json:"echo"`
	MsgID string         `json:"msg_id"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func ask(t *testing.T, nc *nats.Conn, msg *nats.Msg) answer {
	t.Helper()
	r, err := nc.RequestMsg(msg, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", msg.Subject, err)
	}
	var a answer
	if err := json.Unmarshal(r.Data, &a); err != nil {
		t.Fatalf("reply %q: %v", r.Data, err)
	}
	return a
}

// echo decodes a JSON object and answers it back, with the Nats-Msg-Id header.
func echo(data []byte, reply Reply) {
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		reply.Err(fmt.Errorf("%w: body is not a JSON object: %v", ferry.ErrBadRequest, err))
		return
	}
	reply.OK(map[string]any{"echo": m, "msg_id": reply.Header("Nats-Msg-Id")})
}

// TestRequestReply: a request is answered with the ok envelope, a malformed
// body with bad_request, a header reaches the handler, a panic is answered
// unavailable, and the metrics count each.
func TestRequestReply(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := start(t, Options{Prefix: "px", Registerer: reg})
	if err := b.Handle("echo", echo); err != nil {
		t.Fatal(err)
	}
	if err := b.Handle("boom", func([]byte, Reply) { panic("boom") }); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	nc := connect(t, b.ClientURL())
	msg := nats.NewMsg("px.echo")
	msg.Data = []byte(`{"a":1,"s":"<b>"}`)
	msg.Header.Set("Nats-Msg-Id", "k-1")
	if a := ask(t, nc, msg); !a.OK || a.Echo["a"] != 1.0 || a.Echo["s"] != "<b>" || a.MsgID != "k-1" {
		t.Fatalf("echo: %+v", a)
	}
	raw, err := nc.Request("px.echo", []byte(`{"s":"<b>"}`), 5*time.Second)
	if err != nil || !strings.Contains(string(raw.Data), `"<b>"`) {
		t.Fatalf("a reply is not HTML-escaped (documents go back as they came): %v %s", err, raw.Data)
	}
	for _, bad := range []string{``, `not json`, `{"a":`, `[1,2]`} {
		a := ask(t, nc, &nats.Msg{Subject: "px.echo", Data: []byte(bad)})
		if a.OK || a.Error == nil || a.Error.Code != ferry.CodeBadRequest {
			t.Fatalf("malformed body %q: %+v", bad, a)
		}
	}
	if a := ask(t, nc, &nats.Msg{Subject: "px.boom"}); a.OK || a.Error.Code != ferry.CodeUnavailable {
		t.Fatalf("panicking handler: %+v", a)
	}
	// Still serving after the panic.
	if a := ask(t, nc, &nats.Msg{Subject: "px.echo", Data: []byte(`{}`)}); !a.OK {
		t.Fatalf("after a panic: %+v", a)
	}
	// A request is counted done once its reply is published, which may be
	// after the app read the reply.
	wait.Until(t, 5*time.Second, "no request is in flight after every answer", func() error {
		if n := b.InFlight(); n != 0 {
			return fmt.Errorf("%d in flight", n)
		}
		return nil
	})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetValue()
			}
			got[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	echo := got["ferry_nats_requests_total,ok,px.echo"] + got["ferry_nats_requests_total,bad_request,px.echo"]
	if echo != 7 || got["ferry_nats_requests_total,bad_request,px.echo"] != 4 || got["ferry_nats_requests_total,unavailable,px.boom"] != 1 || got["ferry_nats_replies_total,error"] != 5 || got["ferry_nats_replies_total,ok"] != 3 || got["ferry_nats_requests_in_flight"] != 0 {
		t.Fatalf("metrics: %v", got)
	}
	if _, err := Start(Options{Listen: "127.0.0.1:0", Logger: quiet(), Registerer: reg}); err == nil {
		t.Fatal("a second bridge on the same registry started: the registration error was dropped")
	}
}

// TestOversized: a body over the server's max payload is refused by the
// client library and the bridge keeps serving; an answer over it becomes a
// too_large error instead of no answer at all.
func TestOversized(t *testing.T) {
	b := start(t, Options{MaxPayload: 1 << 20})
	if err := b.Handle("echo", echo); err != nil {
		t.Fatal(err)
	}
	if err := b.Handle("big", func(data []byte, r Reply) {
		r.OK(map[string]any{"blob": strings.Repeat("x", 2<<20)})
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if b.MaxPayload() != 1<<20 {
		t.Fatalf("max payload %d", b.MaxPayload())
	}
	nc := connect(t, b.ClientURL())
	body := []byte(`{"blob":"` + strings.Repeat("x", 2<<20) + `"}`)
	if _, err := nc.Request("ferry.echo", body, 2*time.Second); !errors.Is(err, nats.ErrMaxPayload) {
		t.Fatalf("a 2 MiB body: %v, want %v", err, nats.ErrMaxPayload)
	}
	if a := ask(t, nc, &nats.Msg{Subject: "ferry.echo", Data: []byte(`{"x":1}`)}); !a.OK {
		t.Fatalf("after an oversized body: %+v", a)
	}
	a := ask(t, nc, &nats.Msg{Subject: "ferry.big"})
	if a.OK || a.Error == nil || a.Error.Code != ferry.CodeTooLarge || !strings.Contains(a.Error.Message, "max payload") {
		t.Fatalf("an answer over the max payload: %+v", a)
	}
}

// TestDrain: Drain takes no new request (no responders), answers the ones
// already taken, and returns only when each has its reply.
func TestDrain(t *testing.T) {
	b := start(t, Options{})
	release := make(chan struct{})
	var held sync.WaitGroup
	if err := b.Handle("slow", func(data []byte, r Reply) {
		held.Add(1)
		go func() {
			defer held.Done()
			<-release
			r.OK(map[string]any{"echo": map[string]any{"n": string(data)}})
		}()
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	nc := connect(t, b.ClientURL())
	const n = 50
	replies := make(chan *nats.Msg, n)
	var subs []*nats.Subscription
	for i := range n {
		inbox := nats.NewInbox()
		sub, err := nc.ChanSubscribe(inbox, replies)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, sub)
		if err := nc.PublishRequest("ferry.slow", inbox, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	wait.Until(t, 5*time.Second, "every request is taken", func() error {
		if got := b.InFlight(); got < n {
			return fmt.Errorf("%d of %d requests taken", got, n)
		}
		return nil
	})
	drained := make(chan error, 1)
	go func() { drained <- b.Drain(context.Background()) }()
	// New requests are not taken.
	wait.Until(t, 5*time.Second, "a request after Drain finds no responders", func() error {
		if _, err := nc.Request("ferry.slow", []byte("late"), time.Second); !errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("a request after Drain: %v", err)
		}
		return nil
	})
	// Drain must not return while requests are held: give it 100 ms to
	// (wrongly) return.
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) with %d requests unanswered", err, b.InFlight())
	case <-time.After(100 * time.Millisecond):
	}
	// (A late request may have been taken before the server saw the drain:
	// it is held and answered like the others.)
	if h := b.Health(); h.InFlight < n {
		t.Fatalf("health while draining: %+v", h)
	}
	close(release)
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	held.Wait()
	for i := range n {
		select {
		case <-replies:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d requests answered", i, n)
		}
	}
	for _, s := range subs {
		_ = s.Unsubscribe()
	}
	// A Drain bounded by a context says what it left.
	b2 := start(t, Options{})
	stuck := make(chan struct{})
	defer close(stuck)
	if err := b2.Handle("stuck", func(_ []byte, r Reply) { go func() { <-stuck; r.OK(nil) }() }); err != nil {
		t.Fatal(err)
	}
	nc2 := connect(t, b2.ClientURL())
	if err := nc2.PublishRequest("ferry.stuck", nats.NewInbox(), nil); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 5*time.Second, "the request is taken", func() bool { return b2.InFlight() >= 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := b2.Drain(ctx); err == nil || !strings.Contains(err.Error(), "1 requests not answered") {
		t.Fatalf("a bounded drain with one request stuck: %v", err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func runServer(t *testing.T, port int) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server did not start")
	}
	return s
}

// TestReconnectToExternalServer: with an external server that restarts, the
// bridge reports the outage, reconnects, and serves its subjects again.
func TestReconnectToExternalServer(t *testing.T) {
	port := freePort(t)
	srv := runServer(t, port)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	b := start(t, Options{URL: url})
	if b.Embedded() {
		t.Fatal("the bridge runs its own server with a URL set")
	}
	if err := b.Handle("echo", echo); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	nc := connect(t, url)
	if a := ask(t, nc, &nats.Msg{Subject: "ferry.echo", Data: []byte(`{"n":1}`)}); !a.OK {
		t.Fatalf("before the restart: %+v", a)
	}
	if h := b.Health(); !h.OK || !h.Connected || h.Embedded {
		t.Fatalf("health: %+v", h)
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	wait.Until(t, 10*time.Second, "health is not ok with the server down", func() error {
		if h := b.Health(); h.OK {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
	if h := b.Health(); !strings.Contains(h.Reason, "reconnecting") && !strings.Contains(h.Reason, "nats connection") {
		t.Fatalf("health with the server down: %+v", h)
	}
	srv = runServer(t, port)
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	wait.Until(t, 15*time.Second, "the bridge serves again after the server came back", func() error {
		h := b.Health()
		if !h.OK || !nc.IsConnected() {
			return fmt.Errorf("health %+v, app connected %v", h, nc.IsConnected())
		}
		r, err := nc.Request("ferry.echo", []byte(`{"n":2}`), time.Second)
		if err != nil {
			return err
		}
		if !strings.Contains(string(r.Data), `"ok":true`) {
			return fmt.Errorf("answer %s", r.Data)
		}
		return nil
	})
	b.Close()
	nc.Close()
}

// TestHandleJSONSaysWhatIsWrong: a JSON subject refuses a bad body with
// bad_request and a message that names the field, what it must be and what
// it was, and the body's shape; an unknown member is refused by name; an
// optional subject takes an empty body as the zero request.
func TestHandleJSONSaysWhatIsWrong(t *testing.T) {
	b := start(t, Options{Prefix: "px"})
	type req struct {
		Since uint64 `json:"since"`
		Limit int    `json:"limit"`
	}
	for _, optional := range []bool{false, true} {
		suffix := fmt.Sprintf("json%v", optional)
		if err := HandleJSON(b, suffix, `{"since": <version>}`, optional, func(r req, _ Reply, done func(map[string]any, error)) {
			done(map[string]any{"since": r.Since}, nil)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	nc := connect(t, b.ClientURL())
	for _, tc := range []struct{ subject, body, want string }{
		{"px.jsonfalse", `{"since":-1}`, "bad request: `since` must be a non-negative integer, got -1 (expected {\"since\": <version>})"},
		{"px.jsonfalse", `{"since":"7"}`, "bad request: `since` must be a non-negative integer, got \"7\" (expected {\"since\": <version>})"},
		{"px.jsonfalse", `{"sinc":7}`, "bad request: unknown field `sinc` (did you mean `since`?) (expected {\"since\": <version>})"},
		{"px.jsonfalse", `[7]`, "bad request: the body must be a JSON object, got [7] (expected {\"since\": <version>})"},
		{"px.jsonfalse", ``, "bad request: the body is empty; it must be a JSON object (expected {\"since\": <version>})"},
		{"px.jsontrue", `{"limit":true}`, "bad request: `limit` must be an integer, got true (expected {\"since\": <version>})"},
	} {
		a := ask(t, nc, &nats.Msg{Subject: tc.subject, Data: []byte(tc.body)})
		if a.OK || a.Error == nil || a.Error.Code != ferry.CodeBadRequest || a.Error.Message != tc.want {
			t.Errorf("%s %q: %+v, want bad_request %q", tc.subject, tc.body, a.Error, tc.want)
		}
	}
	raw, err := nc.Request("px.jsontrue", nil, 5*time.Second)
	if err != nil || string(raw.Data) != `{"ok":true,"since":0}` {
		t.Fatalf("an empty body on an optional subject: %v %s", err, raw.Data)
	}
}

// Package natsbridge connects a Ferry node to its apps over NATS: it runs the
// embedded nats-server (the default) or connects to an external one, serves
// the request subjects of SPEC.md and publishes the node's events. Either
// way the rest of the node sees one client connection.
//
// The bridge decodes nothing beyond the reply envelope: each subject's
// handler, given by the node, parses its own body. It must not hold state of
// its own beyond the subscriptions and the count of requests in flight.
//
// Shutdown is a drain (drain.go): Drain stops taking requests, answers the
// ones already taken, and only then may the node close its services and
// the store; Close closes the connection last, so that replies of work the
// store finishes while it closes still reach the apps.
package natsbridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/wording"
)

// Options configure the bridge.
type Options struct {
	// URL of an external server; empty starts the embedded server on Listen.
	URL string
	// Listen is the embedded server's host:port; port 0 picks a free port.
	Listen string
	// Prefix starts every subject (ferry).
	Prefix      string
	Credentials string
	Token       string
	// MaxPayload bounds message bodies (the embedded server's max_payload).
	MaxPayload int
	Logger     *slog.Logger
	// ConnectTimeout bounds the first connection to an external server.
	ConnectTimeout time.Duration
	// Registerer receives the bridge's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Tracer, if set, hears of each event published to apps (for
	// operators: `ferry watch`).
	Tracer Tracer
	// JetStreamDir, when set, runs JetStream in the embedded server with its
	// store there (nats-server adds jetstream/ under it); the node's events
	// stream lives in it (package eventstream). Unused with URL.
	JetStreamDir string
}

// Tracer hears what the bridge published, for operators and nothing else.
type Tracer interface {
	Published(subject string)
}

// Bridge is the node's NATS side.
type Bridge struct {
	o      Options
	log    *slog.Logger
	srv    *server.Server
	nc     *nats.Conn
	mu     sync.Mutex
	subs   []*nats.Subscription
	ctx    context.Context
	cancel context.CancelFunc
	closed bool
	flight inflight
	m      *metrics
}

// Start runs the embedded server (when no URL is set) and connects.
func Start(o Options) (*Bridge, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Prefix == "" {
		o.Prefix = "ferry"
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Bridge{o: o, log: o.Logger, ctx: ctx, cancel: cancel, m: m, flight: inflight{gauge: m.inflight}}
	opts := []nats.Option{
		nats.Name("ferry"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.Timeout(o.ConnectTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				b.log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { b.log.Info("nats reconnected", "url", nc.ConnectedUrl()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			b.log.Warn("nats error", "subject", subj, "err", err)
		}),
	}
	if o.URL == "" {
		srv, err := startEmbedded(o)
		if err != nil {
			cancel()
			return nil, err
		}
		b.srv = srv
		opts = append(opts, nats.InProcessServer(srv))
		if o.Token != "" {
			opts = append(opts, nats.Token(o.Token))
		}
		nc, err := nats.Connect("", opts...)
		if err != nil {
			srv.Shutdown()
			cancel()
			return nil, fmt.Errorf("connect to embedded nats: %w", err)
		}
		b.nc = nc
		return b, nil
	}
	if o.Credentials != "" {
		opts = append(opts, nats.UserCredentials(o.Credentials))
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("connect to nats at %s: %w", o.URL, err)
	}
	b.nc = nc
	return b, nil
}

func startEmbedded(o Options) (*server.Server, error) {
	host, portS, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("nats.listen %q: %w", o.Listen, err)
	}
	port, err := strconv.Atoi(portS)
	if err != nil {
		return nil, fmt.Errorf("nats.listen %q: bad port", o.Listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	sopts := &server.Options{
		ServerName:    "ferry",
		Host:          host,
		Port:          port,
		NoSigs:        true,
		MaxPayload:    int32(max(o.MaxPayload, 1<<20)),
		MaxPending:    256 << 20,
		Authorization: o.Token,
	}
	if o.JetStreamDir != "" {
		sopts.JetStream, sopts.StoreDir = true, o.JetStreamDir
	}
	srv, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	lg := &serverLog{log: o.Logger}
	srv.SetLogger(lg, false, false)
	srv.Start()
	// Poll so a listen failure (a port in use) is reported at once.
	for deadline := time.Now().Add(5 * time.Second); !srv.ReadyForConnections(50 * time.Millisecond); {
		if err := lg.fatal(); err != nil {
			srv.Shutdown()
			return nil, fmt.Errorf("embedded nats on %s: %w", o.Listen, err)
		}
		if time.Now().After(deadline) {
			srv.Shutdown()
			return nil, fmt.Errorf("embedded nats on %s did not start", o.Listen)
		}
	}
	return srv, nil
}

// Conn is the node's client connection.
func (b *Bridge) Conn() *nats.Conn { return b.nc }

// ClientURL is where apps connect (the embedded server's address, or the
// external URL).
func (b *Bridge) ClientURL() string {
	if b.srv != nil {
		return b.srv.ClientURL()
	}
	return b.nc.ConnectedUrl()
}

// Embedded reports whether the bridge runs its own server.
func (b *Bridge) Embedded() bool { return b.srv != nil }

// Subject returns prefix.suffix.
func (b *Bridge) Subject(suffix string) string { return b.o.Prefix + "." + suffix }

// Reply answers one request. Exactly one of its methods OK or Err is called
// per request; a second call is logged and dropped.
type Reply struct {
	msg   *nats.Msg
	b     *Bridge
	start time.Time
	subj  string // the subscription's subject (the metric label)
	sm    *subjectMetrics
	state *replyState
}

type replyState struct{ sent atomic.Bool }

// OK answers {"ok": true, ...fields}.
func (r Reply) OK(fields map[string]any) {
	if _, taken := fields["ok"]; !taken {
		r.send(okReply(fields), CodeOK)
		return
	}
	out := make(map[string]any, len(fields)+1)
	for k, v := range fields {
		out[k] = v
	}
	out["ok"] = true
	r.send(out, CodeOK)
}

// okReply is an answer's fields with "ok": true beside them, encoded
// without copying the map.
type okReply map[string]any

// Err answers {"ok": false, "error": {"code", "message"}}.
func (r Reply) Err(err error) {
	r.send(errorBody(err), ferry.Code(err))
}

func errorBody(err error) map[string]any {
	return map[string]any{"ok": false, "error": map[string]string{"code": ferry.Code(err), "message": err.Error()}}
}

func (r Reply) observe(code string) {
	if r.b.m != nil && r.sm != nil {
		r.b.m.observe(r.subj, r.sm, code, r.start)
	}
}

// Expects reports whether the sender waits for a reply.
func (r Reply) Expects() bool { return r.msg.Reply != "" }

// Header is a header of the request ("" when absent), e.g. Nats-Msg-Id.
func (r Reply) Header(name string) string {
	if r.msg.Header == nil {
		return ""
	}
	return r.msg.Header.Get(name)
}

// MaxPayload is the largest reply the server takes, in bytes.
func (r Reply) MaxPayload() int { return r.b.MaxPayload() }

func (r Reply) send(v any, code string) {
	if r.state != nil && !r.state.sent.CompareAndSwap(false, true) {
		r.b.log.Error("second reply to one request dropped", "subject", r.msg.Subject)
		return
	}
	defer r.b.flight.done()
	ok := code == CodeOK
	r.observe(code)
	outcome := "ok"
	if !ok {
		outcome = "error"
	}
	if r.msg.Reply == "" {
		if !ok {
			r.b.log.Warn("request without reply subject failed", "subject", r.msg.Subject, "reply", v)
		}
		r.b.m.replied(outcome)
		return
	}
	data, err := encode(v)
	if err != nil {
		data = []byte(`{"ok":false,"error":{"code":"unavailable","message":"encode reply"}}`)
		outcome = "error"
	}
	if max := r.b.MaxPayload(); len(data) > max {
		// An app must get an answer, not a timeout: say what was too big.
		data, _ = encode(errorBody(fmt.Errorf("%w: the reply is %d bytes, over the NATS server's max payload of %d; ask for less",
			ferry.ErrTooLarge, len(data), max)))
		outcome = "too_large"
	}
	if err := r.msg.Respond(data); err != nil {
		outcome = "failed"
		if !errors.Is(err, nats.ErrConnectionClosed) {
			r.b.log.Warn("reply failed", "subject", r.msg.Subject, "err", err)
		}
	}
	r.b.m.replied(outcome)
}

// encode is compact JSON without HTML escaping: documents apps sent go back
// as they came, and '<' does not grow to six bytes.
func encode(v any) ([]byte, error) {
	switch m := v.(type) {
	case okReply:
		if b, ok := appendFlat(make([]byte, 0, flatSize(m)), m, true); ok {
			return b, nil
		}
		out := make(map[string]any, len(m)+1)
		for k, x := range m {
			out[k] = x
		}
		out["ok"] = true
		v = out
	case map[string]any:
		if b, ok := appendFlat(make([]byte, 0, flatSize(m)), m, false); ok {
			return b, nil
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// MaxPayload is the largest message the server takes (its max_payload).
func (b *Bridge) MaxPayload() int {
	if mp := b.nc.MaxPayload(); mp > 0 {
		return int(mp)
	}
	return 1 << 20
}

// Handler serves one request subject. It must not block for long: slow work
// answers through reply later, from another goroutine.
type Handler func(data []byte, reply Reply)

// Handle subscribes prefix.suffix. Plain publishes (no reply subject) are
// processed the same way; failures are logged.
func (b *Bridge) Handle(suffix string, h Handler) error {
	subj := b.Subject(suffix)
	sm := b.m.subject(subj)
	sub, err := b.nc.Subscribe(subj, func(m *nats.Msg) {
		b.flight.add()
		reply := Reply{msg: m, b: b, start: time.Now(), subj: subj, sm: sm, state: &replyState{}}
		defer func() {
			if r := recover(); r != nil {
				b.log.Error("nats handler panicked", "subject", subj, "panic", r)
				reply.Err(fmt.Errorf("%w: internal error", ferry.ErrUnavailable))
			}
		}()
		h(m.Data, reply)
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", subj, err)
	}
	// Apps pipeline many requests; keep them queued rather than dropped.
	if err := sub.SetPendingLimits(1<<20, 1<<30); err != nil {
		return fmt.Errorf("pending limits %s: %w", subj, err)
	}
	b.mu.Lock()
	b.subs = append(b.subs, sub)
	b.mu.Unlock()
	return nil
}

// Served lists the request subjects this bridge answers (with the prefix),
// in the order they were subscribed: what apps can send.
func (b *Bridge) Served() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.subs))
	for _, s := range b.subs {
		out = append(out, s.Subject)
	}
	return out
}

// Flush waits until the server has processed the subscriptions.
func (b *Bridge) Flush() error {
	if err := b.nc.FlushTimeout(5 * time.Second); err != nil {
		return fmt.Errorf("nats flush: %w", err)
	}
	return nil
}

// Publish sends an event on prefix.suffix as JSON. Events are best effort
// (core NATS): apps that were away catch up with <prefix>.changes.
func (b *Bridge) Publish(suffix string, v any) {
	data, err := encode(v)
	if err != nil {
		b.log.Error("encode event", "subject", suffix, "err", err)
		return
	}
	b.PublishRaw(suffix, data)
}

// PublishRaw sends an already encoded event on prefix.suffix.
func (b *Bridge) PublishRaw(suffix string, data []byte) {
	subject := b.Subject(suffix)
	if err := b.nc.Publish(subject, data); err != nil {
		if !errors.Is(err, nats.ErrConnectionClosed) {
			b.log.Warn("publish event", "subject", suffix, "err", err)
		}
		return
	}
	if b.o.Tracer != nil {
		b.o.Tracer.Published(subject)
	}
}

// Close stops taking requests, flushes the replies sent so far, closes the
// connection and stops the embedded server. Requests still queued are not
// answered: call Drain first.
func (b *Bridge) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	subs := b.subs
	b.subs = nil
	b.mu.Unlock()
	for _, s := range subs {
		_ = s.Unsubscribe()
	}
	b.cancel()
	_ = b.nc.FlushTimeout(2 * time.Second)
	b.nc.Close()
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
	}
}

// serverLog adapts nats-server logging to slog and keeps the fatal error
// (a port in use) instead of exiting.
type serverLog struct {
	log *slog.Logger
	mu  sync.Mutex
	err error
}

func (l *serverLog) fatal() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

func (l *serverLog) Noticef(f string, v ...any) {
	l.log.Debug(fmt.Sprintf(f, v...), "component", "nats")
}
func (l *serverLog) Warnf(f string, v ...any) { l.log.Warn(fmt.Sprintf(f, v...), "component", "nats") }
func (l *serverLog) Errorf(f string, v ...any) {
	l.log.Error(fmt.Sprintf(f, v...), "component", "nats")
}
func (l *serverLog) Debugf(string, ...any) {}
func (l *serverLog) Tracef(string, ...any) {}
func (l *serverLog) Fatalf(f string, v ...any) {
	l.mu.Lock()
	l.err = fmt.Errorf(f, v...)
	l.mu.Unlock()
}

// MsgIDHeader is the NATS header JetStream apps already send with a
// message's id: Ferry takes it as the request's idempotency key.
const MsgIDHeader = "Nats-Msg-Id"

// HandleJSON serves a request subject whose body is JSON: it decodes the
// body into T strictly (internal/wording: an unknown member is refused by
// name, a wrong type names the field and what it must be; usage says what
// the body should look like, for the error an app gets; an empty body is
// the zero T when optional) and answers with the fields call reports, or
// its error.
func HandleJSON[T any](b *Bridge, suffix, usage string, optional bool, call func(req T, reply Reply, done func(map[string]any, error))) error {
	return b.Handle(suffix, func(data []byte, reply Reply) {
		var req T
		if len(data) > 0 || !optional {
			if err := wording.DecodeJSON(data, &req, ""); err != nil {
				reply.Err(fmt.Errorf("%w (expected %s)", err, usage))
				return
			}
		}
		call(req, reply, func(fields map[string]any, err error) {
			if err != nil {
				reply.Err(err)
				return
			}
			reply.OK(fields)
		})
	})
}

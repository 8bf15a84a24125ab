package eventstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// Headers of every message of the stream.
const (
	// HeaderVersion, JetStream's message id, is the local store version of
	// the change the event is of: what <prefix>.changes calls version,
	// increasing along the stream.
	HeaderVersion = jetstream.MsgIDHeader
	// The first message after the publisher learned where the stream ends
	// expects the stream's last sequence; every later one expects the id of
	// the one before it. JetStream refuses a message whose expectation does
	// not hold, so one refused (or a message of someone else in between)
	// makes every later one refused too: the stream never gets a gap or a
	// copy.
	headerExpectedSeq = jetstream.ExpectedLastSeqHeader
	headerExpectedID  = jetstream.ExpectedLastMsgIDHeader
	// IngestRoot starts the subjects the stream listens on:
	// $FERRY.<prefix>.<event subject>.
	IngestRoot = "$FERRY"
	// metaNode, in the stream's metadata, names the node whose events it
	// holds: a second node given the same stream on a shared server is
	// refused at start.
	metaNode = "ferry_node"
	// auxCursor + stream name is the cursor kept in the store.
	auxCursor = "events/"
)

// Defaults of Options.
const (
	// DefaultBatch events at most per batch: one answer per batch.
	DefaultBatch = 256
	// DefaultBatchBytes of event bodies at most per batch.
	DefaultBatchBytes = 1 << 20
	// DefaultWindow batches at most in flight (unanswered): with the batch
	// bounds, what the publisher holds in memory and JetStream's ingest
	// queue holds of it.
	DefaultWindow = 8
	// DefaultAckTimeout: a batch unanswered this long is a failure (then the
	// cursor is learned again from the stream).
	DefaultAckTimeout = 10 * time.Second
	// DefaultRestartEvery bounds how often the embedded JetStream is
	// restarted after answers that did not come.
	DefaultRestartEvery = 30 * time.Second
	// DefaultMaxYield bounds how long new events wait, in a row, while the
	// node catches up (Deps.Yield).
	DefaultMaxYield = 5 * time.Second
	// yieldLook is how often a yielding publisher looks again.
	yieldLook = 50 * time.Millisecond
	// DefaultStuckAfter: a failure that lasts this long makes Health not OK
	// (a short one, retried at once, does not).
	DefaultStuckAfter = 5 * time.Second
	// persistEvery bounds how often the cursor is written to the store.
	persistEvery = time.Second
	// Retry backoff after a failure.
	retryMin = 250 * time.Millisecond
	retryMax = 10 * time.Second
	// diskEvery: the free space under the JetStream store is read at most
	// this often.
	diskEvery = 100 * time.Millisecond
)

// Renderer gives the event a service published when the change at local
// version ver was applied (the subject suffix under the node's prefix and
// the body), ok false when it published none. It reads only what was
// durable when the change was, and gives the same answer every time.
type Renderer interface {
	Event(ver uint64, body *pb.Body) (suffix string, data []byte, ok bool, err error)
}

// Kinds maps each change kind to the service that renders its events; a
// kind not in it has none.
type Kinds map[pb.Kind]Renderer

// OwnSilent is a Renderer that publishes no event of the node's own changes
// (propagate: an origin is not told of its own resources): those are
// passed over without reading their bodies.
type OwnSilent interface {
	NoOwnEvents() bool
}

// skipOwn reports whether an own change of kind k has no event, from its
// kind alone.
func (k Kinds) skipOwn(kind pb.Kind) bool {
	r := k[kind]
	if r == nil {
		return true
	}
	s, ok := r.(OwnSilent)
	return ok && s.NoOwnEvents()
}

// Options configure a Publisher.
type Options struct {
	// Stream is the JetStream stream's name (nats.events.stream).
	Stream string
	// Prefix is the node's subject prefix (nats.prefix).
	Prefix string
	// MaxBytes and MaxAge bound the stream (nats.events.max_bytes,
	// max_age; 0: no age limit). The oldest events go first.
	MaxBytes int64
	MaxAge   time.Duration
	// StoreLimit, when > 0, is what the embedded JetStream may store in all:
	// a new stream's MaxBytes is cut to it (WARN).
	StoreLimit int64
	// DiskDir, when set, is the JetStream store's directory: nothing is sent
	// while its file system has less than MinFreeBytes free.
	DiskDir      string
	MinFreeBytes uint64
	// Batch, BatchBytes, Window, AckTimeout, RestartEvery, StuckAfter,
	// MaxYield: see the defaults.
	Batch        int
	BatchBytes   int
	Window       int
	AckTimeout   time.Duration
	RestartEvery time.Duration
	StuckAfter   time.Duration
	MaxYield     time.Duration
	Logger       *slog.Logger
	Registerer   prometheus.Registerer
}

func (o *Options) ensureDefaults() error {
	if o.Stream == "" || o.Prefix == "" {
		return errors.New("eventstream: Options.Stream and Options.Prefix are needed")
	}
	if o.MaxBytes <= 0 {
		return errors.New("eventstream: Options.MaxBytes must be positive")
	}
	if o.Batch <= 0 {
		o.Batch = DefaultBatch
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = DefaultBatchBytes
	}
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.RestartEvery <= 0 {
		o.RestartEvery = DefaultRestartEvery
	}
	if o.StuckAfter <= 0 {
		o.StuckAfter = DefaultStuckAfter
	}
	if o.MaxYield <= 0 {
		o.MaxYield = DefaultMaxYield
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Deps are what a Publisher needs.
type Deps struct {
	Store *store.Store
	// Conn is the publisher's own connection to the node's NATS; Close
	// closes it.
	Conn  *nats.Conn
	Kinds Kinds
	Self  peer.ID
	// Tail, when set, holds the events the services' commit hooks published
	// (propagate feeds it): the publisher takes those instead of reading
	// their changes back from the log. nil: every event is rendered from
	// the log.
	Tail *Tail
	// Restart, when set, restarts the embedded server's JetStream
	// (natsbridge.Bridge.RestartJetStream); nil with an external server.
	Restart func() error
	// Yield, when set and true, holds new events back: the node catches up
	// on a backlog (stream.Receiver.CatchingUp), and storing its events
	// would take the CPU that applying it needs. The core events are
	// published as before; the stream gets them after, at most
	// Options.MaxYield later.
	Yield func() bool
}

// batch is a run of messages published together; only its last asked for
// an answer.
type batch struct {
	token   string
	n       int
	last    uint64 // local version of its last event
	through uint64 // every change up to here was read (>= last)
	seq     uint64 // the stream sequence its last message must get
	sent    time.Time
}

// Publisher keeps the node's events in the stream. One goroutine (run) owns
// the cursor and the batches in flight; Health reads a copy under mu.
type Publisher struct {
	o       Options
	d       Deps
	log     *slog.Logger
	js      jetstream.JetStream
	ingest  string // $FERRY.<prefix>.
	inbox   string // answers come to inbox.<token>
	sub     *nats.Subscription
	acks    chan *nats.Msg
	kick    chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	g       lifecycle.Group
	m       *metrics
	started bool

	// Owned by run (and New, before it starts).
	created time.Time // the stream's creation time: which stream the cursor is of
	through uint64    // every event of a change up to this version is stored
	sent    uint64    // read up to here (published or passed over)
	seq     uint64    // the stream's last sequence, counting what is in flight
	lastID  string    // the message id of the last message sent since sync ("" right after)
	flight  []*batch
	token   uint64
	saved   cursor // last written to the store
	savedAt time.Time
	diskAt  time.Time
	diskLow string // why nothing is sent, when the disk is low
	restart time.Time
	silent  bool // an answer did not come (or no stream took the events): a restart may help
	probe   bool // after a failure: one event at a time until one is stored
	outs    []out
	msg     *nats.Msg // reused for every publish (send)
	hid     []string  // its header values, reused
	hexp    []string
	// yieldSince: when the publisher began to hold new events back (zero:
	// it does not).
	yieldSince time.Time

	mu sync.Mutex
	h  Health
}

// Health is the stream's state, for /healthz and `ferry status`.
type Health struct {
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
	Stream string `json:"stream"`
	// Through: every event of a change up to this local version is in the
	// stream.
	Through uint64 `json:"through"`
	// Durable is the store's durable version: CaughtUp when Through reached
	// it (versions are not a count of changes: they are floored at the
	// clock in microseconds).
	Durable  uint64 `json:"durable"`
	CaughtUp bool   `json:"caught_up"`
	// LastSeq is the stream's last sequence as far as it answered.
	LastSeq uint64 `json:"last_seq"`
	// Stored counts the events stored since the node started.
	Stored uint64 `json:"stored"`
	// Failing: since when the last failure has lasted (zero: none).
	Failing time.Time `json:"failing_since,omitzero"`

	failure string // the last failure, while it lasts
	diskLow string // why nothing is sent while the disk is low
}

// cursor is what the store keeps: every event through Through is in the
// stream created at Created, whose last sequence was Seq then.
type cursor struct {
	Through uint64
	Seq     uint64
	Created int64 // unix nanoseconds
}

func (c cursor) encode() []byte {
	b := make([]byte, 0, 24)
	b = binary.BigEndian.AppendUint64(b, c.Through)
	b = binary.BigEndian.AppendUint64(b, c.Seq)
	return binary.BigEndian.AppendUint64(b, uint64(c.Created))
}

func decodeCursor(b []byte) (cursor, error) {
	if len(b) != 24 {
		return cursor{}, fmt.Errorf("events cursor: %d bytes, want 24", len(b))
	}
	return cursor{Through: binary.BigEndian.Uint64(b), Seq: binary.BigEndian.Uint64(b[8:]), Created: int64(binary.BigEndian.Uint64(b[16:]))}, nil
}

// New makes sure the stream exists (created, or updated to the options),
// learns the cursor (from the stream's last message, else the store), and
// when the store kept none yet writes one, synchronously: from then on every
// change's event goes to the stream. It starts nothing (Start does).
func New(d Deps, o Options) (*Publisher, error) {
	if err := o.ensureDefaults(); err != nil {
		return nil, err
	}
	if d.Store == nil || d.Conn == nil || d.Kinds == nil {
		return nil, errors.New("eventstream: Deps.Store, Conn and Kinds are needed")
	}
	js, err := jetstream.New(d.Conn)
	if err != nil {
		return nil, fmt.Errorf("events stream: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Publisher{o: o, d: d, log: o.Logger, js: js, ingest: IngestRoot + "." + o.Prefix + ".",
		inbox: nats.NewInbox(), acks: make(chan *nats.Msg, 2*o.Window+4), kick: make(chan struct{}, 1),
		ctx: ctx, cancel: cancel, msg: &nats.Msg{Header: nats.Header{}}, hid: make([]string, 1), hexp: make([]string, 1)}
	p.h.Stream = o.Stream
	p.m = newMetrics(p)
	fail := func(err error) (*Publisher, error) {
		cancel()
		return nil, err
	}
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	if err := p.sync(sctx, true); err != nil {
		return fail(err)
	}
	// Answers: a subscription on the publisher's own inbox; the channel
	// holds more than the window, so the NATS goroutine never blocks.
	if p.sub, err = d.Conn.ChanSubscribe(p.inbox+".*", p.acks); err != nil {
		return fail(fmt.Errorf("events stream: subscribe to answers: %w", err))
	}
	if err := p.m.register(o.Registerer); err != nil {
		_ = p.sub.Unsubscribe()
		return fail(err)
	}
	if d.Tail != nil {
		// An own change of a kind without own events is marked in the
		// tail as it commits: the publisher then passes over its record
		// unread (an origin's log is mostly such changes).
		d.Store.Follow(func(e store.OwnEntry) {
			if d.Kinds.skipOwn(e.Kind) {
				d.Tail.None(e.Version)
			}
		})
	}
	d.Store.WatchDurable(func(uint64) {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	})
	return p, nil
}

// Start runs the publisher's goroutine.
func (p *Publisher) Start() {
	if p.started {
		return
	}
	p.started = true
	p.g.Go(p.run)
}

// Close stops the goroutine, writes the cursor (lazily) and closes the
// connection. Events not yet answered are published again by the next
// start, from the stream's last message.
func (p *Publisher) Close() {
	p.cancel()
	p.g.Close()
	if p.sub != nil {
		_ = p.sub.Unsubscribe()
	}
	p.persist(true)
	p.d.Conn.Close()
}

// Health reports the stream's state: not OK while the disk is below the
// reserve, or a failure has lasted StuckAfter (a short one, retried, is
// only in Failing).
func (p *Publisher) Health() Health {
	p.mu.Lock()
	h := p.h
	p.mu.Unlock()
	h.Durable = p.d.Store.DurableVersion()
	h.CaughtUp = h.Through >= h.Durable
	switch {
	case h.diskLow != "":
		h.Reason = h.diskLow
	case !h.Failing.IsZero() && time.Since(h.Failing) >= p.o.StuckAfter:
		h.Reason = fmt.Sprintf("not stored for %v: %s", time.Since(h.Failing).Round(time.Second), h.failure)
	}
	h.OK = h.Reason == ""
	return h
}

// Stream names the stream.
func (p *Publisher) Stream() string { return p.o.Stream }

// Through is the local version through which every event is in the stream.
func (p *Publisher) Through() uint64 { return p.Health().Through }

// streamConfig is the stream as the options want it.
func (p *Publisher) streamConfig(maxBytes int64) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        p.o.Stream,
		Description: "Ferry node " + p.d.Self.String() + ": the events it publishes to its apps",
		Subjects:    []string{p.ingest + ">"},
		SubjectTransform: &jetstream.SubjectTransformConfig{Source: p.ingest + ">",
			Destination: p.o.Prefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxBytes:    maxBytes,
		MaxAge:      p.o.MaxAge,
		Storage:     jetstream.FileStorage,
		AllowDirect: true,
		Metadata:    map[string]string{metaNode: p.d.Self.String()},
		// Ferry does not rely on the window (see headerExpectedID); a short
		// one keeps JetStream's memory of ids small at high rates.
		Duplicates: duplicates,
	}
}

// ensureStream creates the stream, or updates one that exists to the
// options (keeping what an operator chose that Ferry does not set: replicas,
// placement, storage). A stream of another node is refused.
func (p *Publisher) ensureStream(ctx context.Context) (jetstream.Stream, error) {
	st, err := p.js.Stream(ctx, p.o.Stream)
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return nil, fmt.Errorf("%w (%w): enable it there, or turn the events stream off (nats.events.enabled: false)", errJetStreamOff, err)
	}
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		mb := p.o.MaxBytes
		if p.o.StoreLimit > 0 && mb > p.o.StoreLimit {
			p.log.Warn("nats.events.max_bytes is more than the embedded JetStream may store on this disk: the stream is created smaller",
				"max_bytes", p.o.MaxBytes, "created_with", p.o.StoreLimit, "stream", p.o.Stream)
			mb = p.o.StoreLimit
		}
		if st, err = p.js.CreateStream(ctx, p.streamConfig(mb)); err != nil {
			return nil, fmt.Errorf("create stream %s: %w", p.o.Stream, err)
		}
		p.log.Info("events stream created", "stream", p.o.Stream, "max_bytes", mb, "max_age", p.o.MaxAge)
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", p.o.Stream, err)
	}
	cfg := st.CachedInfo().Config
	if owner := cfg.Metadata[metaNode]; owner != "" && owner != p.d.Self.String() {
		return nil, fmt.Errorf("stream %s holds the events of node %s: give this node its own (nats.events.stream)", p.o.Stream, owner)
	}
	want := p.streamConfig(p.o.MaxBytes)
	essential := len(cfg.Subjects) == 1 && cfg.Subjects[0] == want.Subjects[0] && cfg.SubjectTransform != nil &&
		*cfg.SubjectTransform == *want.SubjectTransform && cfg.Discard == want.Discard && cfg.Metadata[metaNode] == p.d.Self.String()
	if essential && cfg.MaxBytes == want.MaxBytes && cfg.MaxAge == want.MaxAge && cfg.Duplicates == want.Duplicates {
		return st, nil
	}
	up := cfg
	up.Subjects, up.SubjectTransform, up.MaxBytes, up.MaxAge, up.Discard, up.Duplicates = want.Subjects, want.SubjectTransform, want.MaxBytes, want.MaxAge, want.Discard, want.Duplicates
	if up.Metadata == nil {
		up.Metadata = map[string]string{}
	}
	up.Metadata[metaNode] = p.d.Self.String()
	st2, err := p.js.UpdateStream(ctx, up)
	var apiErr *jetstream.APIError
	if err != nil && essential && errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrStorageResources {
		// JetStream checks every update against what it may store now (less
		// than when the stream was made, on a fuller disk): the stream keeps
		// its limits and serves as it is.
		p.log.Warn("events stream: its limits cannot change on this disk now (JetStream: insufficient storage resources); it keeps them",
			"stream", p.o.Stream, "max_bytes", cfg.MaxBytes, "max_age", cfg.MaxAge, "wanted_max_bytes", want.MaxBytes, "wanted_max_age", want.MaxAge)
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("update stream %s: %w", p.o.Stream, err)
	}
	p.log.Info("events stream updated", "stream", p.o.Stream, "max_bytes", up.MaxBytes, "max_age", up.MaxAge)
	return st2, nil
}

// errJetStreamOff: nothing answers JetStream's API on the node's NATS.
var errJetStreamOff = errors.New("JetStream is not enabled on the node's NATS server")

// duplicates is the stream's duplicate window.
const duplicates = time.Second

// jsErrStorageResources is JetStream's "insufficient storage resources
// available" (a stream's max_bytes beyond what the server may store).
const jsErrStorageResources jetstream.ErrorCode = 10047

// sync learns the cursor from the stream (and the store), with nothing in
// flight. first: at New, when a store without a cursor gets one.
func (p *Publisher) sync(ctx context.Context, first bool) error {
	st, err := p.ensureStream(ctx)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s: %w", p.o.Stream, err)
	}
	saved, have, err := p.loadCursor()
	if err != nil {
		return err
	}
	last := info.State.LastSeq
	lastVer, lastOK, err := p.lastVersion(ctx, st, last)
	if err != nil {
		return err
	}
	same := have && saved.Created == info.Created.UnixNano()
	var through uint64
	switch {
	case same && saved.Seq == last:
		// Nothing stored since the cursor was written.
		through = saved.Through
	case lastOK:
		through = lastVer
	case have:
		// A new stream (deleted, or its directory lost), or one whose last
		// message is gone: carry on from the store's cursor.
		through = saved.Through
	default:
		// The first start that keeps events: from now on.
		through = p.d.Store.DurableVersion()
	}
	p.created = info.Created
	p.through, p.sent, p.seq, p.lastID = through, through, last, ""
	p.flight = p.flight[:0]
	p.setHealth(func(h *Health) { h.Through, h.LastSeq = through, last })
	p.m.through.Set(float64(through))
	if first && !have {
		c := cursor{Through: through, Seq: last, Created: info.Created.UnixNano()}
		if err := p.d.Store.Update(ctx, func(tx *store.Txn) error {
			tx.SetAux(auxCursor+p.o.Stream, c.encode())
			return nil
		}); err != nil {
			return fmt.Errorf("events stream: write its cursor: %w", err)
		}
		p.saved, p.savedAt = c, time.Now()
	} else if have {
		p.saved = saved
	}
	p.log.Info("events stream cursor", "stream", p.o.Stream, "through", through, "durable", p.d.Store.DurableVersion(), "last_seq", last,
		"from_last_message", lastOK && !(same && saved.Seq == last))
	return nil
}

// walkBack bounds how far back from the stream's end sync looks for this
// node's last message (past messages others published on its subjects).
const walkBack = 64

// lastVersion is the Ferry-Version of the node's last message in the
// stream, looking back from sequence last past messages without it
// (published on the stream's subjects by someone else) and messages gone
// (expired, purged); ok false when none is found.
func (p *Publisher) lastVersion(ctx context.Context, st jetstream.Stream, last uint64) (uint64, bool, error) {
	foreign := 0
	for seq := last; seq > 0 && last-seq < walkBack; seq-- {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return 0, false, fmt.Errorf("stream %s: read message %d: %w", p.o.Stream, seq, err)
		}
		v, perr := strconv.ParseUint(m.Header.Get(HeaderVersion), 10, 64)
		if perr == nil && v > 0 {
			if foreign > 0 {
				p.log.Warn("events stream: messages without the node's message id follow its last event: only this node should publish on its subjects",
					"stream", p.o.Stream, "subjects", p.ingest+">", "messages", foreign)
			}
			return v, true, nil
		}
		foreign++
	}
	return 0, false, nil
}

func (p *Publisher) loadCursor() (cursor, bool, error) {
	b, err := p.d.Store.Aux(auxCursor + p.o.Stream)
	if errors.Is(err, store.ErrNotFound) {
		return cursor{}, false, nil
	}
	if err != nil {
		return cursor{}, false, fmt.Errorf("events stream: read its cursor: %w", err)
	}
	c, err := decodeCursor(b)
	return c, err == nil, err
}

// persist writes the cursor to the store (lazily: no fsync of its own) when
// it moved and a second passed, or now.
func (p *Publisher) persist(now bool) {
	c := cursor{Through: p.through, Seq: p.seq, Created: p.created.UnixNano()}
	if len(p.flight) > 0 {
		c.Seq = p.flight[0].seq - uint64(p.flight[0].n) // what the stream holds for sure
	}
	if c == p.saved || (!now && time.Since(p.savedAt) < persistEvery) {
		return
	}
	p.saved, p.savedAt = c, time.Now()
	key, val := auxCursor+p.o.Stream, c.encode()
	p.d.Store.SubmitLazy(context.Background(), func(tx *store.Txn) error {
		tx.SetAux(key, val)
		return nil
	}, func(err error) {
		if err != nil {
			p.log.Debug("events stream: cursor not written", "err", err.Error())
		}
	})
}

func (p *Publisher) setHealth(fn func(*Health)) {
	p.mu.Lock()
	fn(&p.h)
	p.mu.Unlock()
}

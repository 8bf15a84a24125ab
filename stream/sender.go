package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// Sender defaults.
const (
	DefaultWindow      = 4096
	DefaultAckTimeout  = 30 * time.Second
	DefaultDialTimeout = 15 * time.Second
	DefaultBackoffMin  = 200 * time.Millisecond
	DefaultBackoffMax  = 30 * time.Second
	DefaultMaxQueued   = 1 << 16
	DefaultRetryScan   = 5 * time.Second
	idleExit           = time.Minute
	reloadChunk        = 8192
)

// SenderOptions configure a Sender.
type SenderOptions struct {
	MaxMessageBytes int
	// Window bounds the unacknowledged messages in flight to one peer.
	Window int
	// AckTimeout resets a stream whose oldest message waits longer for its ack.
	AckTimeout  time.Duration
	DialTimeout time.Duration
	BackoffMin  time.Duration
	BackoffMax  time.Duration
	// MaxQueued bounds deliveries kept in memory per peer; beyond it they
	// stay in the store and are read back in order.
	MaxQueued int
	// RetryScan is the period of the stuck-delivery scan.
	RetryScan time.Duration
	// Hold, when it returns true, keeps a lane's deliveries to a peer pending
	// without sending them (a closed planner stream). Kick re-evaluates.
	Hold func(peer.ID, Lane) bool
	// OnAcked runs after a delivery's ack is recorded.
	OnAcked func(*storepb.Delivery)
	// Retention keeps acknowledged deliveries this long before they are
	// pruned from the ledger; 0 keeps them forever. Pending ones are never
	// pruned.
	Retention  time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Item is a committed delivery handed to the sender, with its envelope when
// the caller has it at hand.
type Item struct {
	D   *storepb.Delivery
	Env []byte // encoded pb.Envelope; nil: read from the store
}

// Sender pushes deliveries to peers and resends them until acknowledged.
type Sender struct {
	host   host.Host
	st     *store.Store
	opts   SenderOptions
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	boxes map[peer.ID]*outbox

	m senderMetrics
}

type senderMetrics struct {
	sent, resent, opens, failures prometheus.Counter
	acked                         *prometheus.CounterVec
	inflight                      prometheus.Gauge
}

// NewSender builds a Sender; Start begins its work.
func NewSender(h host.Host, st *store.Store, o SenderOptions) *Sender {
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = protocols.DefaultMaxMessageBytes
	}
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = DefaultBackoffMin
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	if o.MaxQueued <= 0 {
		o.MaxQueued = DefaultMaxQueued
	}
	if o.RetryScan <= 0 {
		o.RetryScan = DefaultRetryScan
	}
	if o.Hold == nil {
		o.Hold = func(peer.ID, Lane) bool { return false }
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sender{host: h, st: st, opts: o, log: o.Logger, ctx: ctx, cancel: cancel, boxes: map[peer.ID]*outbox{}}
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "delivery", Name: name, Help: help})
	}
	s.m = senderMetrics{
		sent:     c("sent_total", "Messages written to peers."),
		resent:   c("resent_total", "Messages written again after a failure."),
		opens:    c("stream_opens_total", "Outbound delivery streams opened."),
		failures: c("stream_failures_total", "Outbound delivery streams that failed or could not be opened."),
		acked: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "delivery", Name: "acked_total",
			Help: "Acks received by status."}, []string{"status"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "ferry", Subsystem: "delivery", Name: "inflight",
			Help: "Messages written and not yet acknowledged."}),
	}
	if o.Registerer != nil {
		for _, col := range []prometheus.Collector{s.m.sent, s.m.resent, s.m.opens, s.m.failures, s.m.acked, s.m.inflight} {
			_ = o.Registerer.Register(col)
		}
	}
	return s
}

// Start loads every receiver with pending deliveries and starts the
// stuck-delivery scan.
func (s *Sender) Start() error {
	if err := s.scan(); err != nil {
		return err
	}
	s.wg.Add(1)
	go s.retryLoop()
	return nil
}

// Close stops every outbox and waits for them. Pending deliveries stay in
// the store.
func (s *Sender) Close() {
	s.mu.Lock()
	s.cancel()
	for _, o := range s.boxes {
		o.resetAll()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// retryLoop is the stuck-session scan of source 004: it finds receivers with
// pending deliveries that no outbox is working on and starts one.
func (s *Sender) retryLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.RetryScan)
	defer t.Stop()
	var lastPrune time.Time
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			if err := s.scan(); err != nil && s.ctx.Err() == nil {
				s.log.Warn("retry scan failed", "err", err)
			}
			if s.opts.Retention > 0 && time.Since(lastPrune) >= min(s.opts.Retention/4, 10*time.Minute) {
				lastPrune = time.Now()
				if n, err := s.Prune(time.Now().Add(-s.opts.Retention)); err != nil && s.ctx.Err() == nil {
					s.log.Warn("prune acknowledged deliveries", "err", err)
				} else if n > 0 {
					s.log.Info("pruned acknowledged deliveries", "rows", n)
				}
			}
		}
	}
}

// Prune deletes acknowledged deliveries acknowledged before cutoff. Ids
// grow with time, so the scan stops at the first row created after it.
func (s *Sender) Prune(cutoff time.Time) (int, error) {
	c := cutoff.UnixNano()
	var old []*storepb.Delivery
	err := s.st.Deliveries(0, func(d *storepb.Delivery) bool {
		if d.CreatedAt > c {
			return false
		}
		if d.State != storepb.Delivery_STATE_PENDING && d.AckedAt > 0 && d.AckedAt < c {
			old = append(old, d)
		}
		return len(old) < 100000
	})
	if err != nil {
		return 0, err
	}
	for start := 0; start < len(old); start += 1000 {
		chunk := old[start:min(start+1000, len(old))]
		err := s.st.Update(s.ctx, func(tx *store.Txn) error {
			for _, d := range chunk {
				tx.DeleteDelivery(d)
			}
			return nil
		})
		if err != nil {
			return start, err
		}
	}
	return len(old), nil
}

func (s *Sender) scan() error {
	ids, err := s.st.PendingReceivers()
	if err != nil {
		return fmt.Errorf("list pending receivers: %w", err)
	}
	for _, p := range ids {
		if p == s.host.ID() {
			continue
		}
		o := s.box(p)
		o.mu.Lock()
		idle := len(o.queue) == 0 && len(o.inflight) == 0
		if idle {
			o.spill()
		}
		o.mu.Unlock()
		o.wakeUp()
	}
	return nil
}

// box returns the outbox of p, starting its pump if it is not running.
func (s *Sender) box(p peer.ID) *outbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.boxes[p]
	if o == nil {
		o = &outbox{s: s, peer: p, ids: map[uint64]*entry{}, inflight: map[uint64]*entry{},
			streams: map[protocol.ID]*outStream{}, cursor: map[Lane]uint64{}, wake: make(chan struct{}, 1)}
		s.boxes[p] = o
	}
	if !o.running && s.ctx.Err() == nil {
		o.running = true
		s.wg.Add(1)
		go o.run()
	}
	return o
}

// Enqueue hands committed deliveries to their receivers' outboxes. It never
// blocks: it is called from store commit hooks.
func (s *Sender) Enqueue(items ...Item) {
	for _, it := range items {
		p := peer.ID(it.D.Receiver)
		if p == s.host.ID() {
			continue
		}
		o := s.box(p)
		o.add(it)
		o.wakeUp()
	}
}

// Kick makes p's outbox try again now: after a hold is lifted, or when the
// peer has just connected (its backoff is cut short).
func (s *Sender) Kick(p peer.ID) {
	if p == s.host.ID() {
		return
	}
	o := s.box(p)
	o.mu.Lock()
	o.spill()
	o.retryAt = time.Time{}
	o.mu.Unlock()
	o.wakeUp()
}

// Holds reports whether deliveries of a lane to p are being held (see
// SenderOptions.Hold).
func (s *Sender) Holds(p peer.ID, l Lane) bool { return s.opts.Hold(p, l) }

// CloseStream closes the outbound stream of protocol id to p, if open: the
// receiver answers what it owes and closes its side. It reports whether a
// stream was open.
func (s *Sender) CloseStream(p peer.ID, id protocol.ID) bool {
	s.mu.Lock()
	o := s.boxes[p]
	s.mu.Unlock()
	if o == nil {
		return false
	}
	o.mu.Lock()
	st := o.streams[id]
	if st != nil {
		st.closing = true
	}
	o.mu.Unlock()
	if st == nil {
		return false
	}
	_ = st.s.CloseWrite()
	select {
	case <-st.done:
	case <-time.After(10 * time.Second):
		_ = st.s.Reset()
		<-st.done
	case <-s.ctx.Done():
	}
	return true
}

// StreamOpen reports whether an outbound stream of protocol id to p is open.
func (s *Sender) StreamOpen(p peer.ID, id protocol.ID) bool {
	s.mu.Lock()
	o := s.boxes[p]
	s.mu.Unlock()
	if o == nil {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	st := o.streams[id]
	return st != nil && !st.closing
}

// PeerStats is what an outbox holds.
type PeerStats struct {
	Queued, Inflight int
	Streams          []protocol.ID
	Failures         int
}

// Stats reports the outbox of p.
func (s *Sender) Stats(p peer.ID) PeerStats {
	s.mu.Lock()
	o := s.boxes[p]
	s.mu.Unlock()
	if o == nil {
		return PeerStats{}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	ps := PeerStats{Queued: len(o.queue), Inflight: len(o.inflight), Failures: o.failures}
	for id := range o.streams {
		ps.Streams = append(ps.Streams, id)
	}
	slices.Sort(ps.Streams)
	return ps
}

// outbox is the sending state of one peer. Its pump goroutine is the only
// writer of its streams; one reader per stream takes the acks.
type outbox struct {
	s    *Sender
	peer peer.ID
	wake chan struct{}

	running bool // guarded by Sender.mu

	mu        sync.Mutex
	queue     []*entry // not sent, per lane in link order
	ids       map[uint64]*entry
	inflight  map[uint64]*entry
	streams   map[protocol.ID]*outStream
	cursor    map[Lane]uint64 // highest link seq of each lane held in memory
	spilled   bool            // the store holds pending deliveries not in memory
	spillGen  int
	failures  int
	retryAt   time.Time
	idleSince time.Time
}

type entry struct {
	d      *storepb.Delivery
	env    []byte
	sentAt time.Time
	sends  int
	st     *outStream
}

type outStream struct {
	proto   protocol.ID
	s       network.Stream
	fw      *protocols.FrameWriter
	done    chan struct{}
	closing bool
}

func (o *outbox) wakeUp() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// spill marks that the store may hold deliveries not in memory; callers hold o.mu.
func (o *outbox) spill() {
	o.spilled = true
	o.spillGen++
}

func (o *outbox) add(it Item) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.ids[it.D.Id]; ok {
		return
	}
	lane := Lane(it.D.Lane)
	if o.spilled || len(o.queue) >= o.s.opts.MaxQueued {
		o.spill()
		return
	}
	o.push(&entry{d: it.D, env: it.Env}, lane)
}

// push appends an entry; callers hold o.mu.
func (o *outbox) push(e *entry, lane Lane) {
	o.queue = append(o.queue, e)
	o.ids[e.d.Id] = e
	if e.d.LinkSeq > o.cursor[lane] {
		o.cursor[lane] = e.d.LinkSeq
	}
}

// reload reads pending deliveries after the in-memory cursor of each lane.
func (o *outbox) reload() error {
	o.mu.Lock()
	gen := o.spillGen
	cursor := make(map[Lane]uint64, len(o.cursor))
	for l, c := range o.cursor {
		cursor[l] = c
	}
	room := o.s.opts.MaxQueued - len(o.queue)
	o.mu.Unlock()
	full := false
	var loaded []*storepb.Delivery
	for _, lane := range []Lane{LaneResource, LaneConsider, LanePlanner, LaneRequest, LaneDecision} {
		if room <= 0 {
			full = true
			break
		}
		ds, err := o.s.st.PendingFrom(o.peer, uint32(lane), cursor[lane], min(room, reloadChunk))
		if err != nil {
			return fmt.Errorf("read pending deliveries: %w", err)
		}
		if len(ds) == min(room, reloadChunk) {
			full = true
		}
		room -= len(ds)
		loaded = append(loaded, ds...)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, d := range loaded {
		if _, ok := o.ids[d.Id]; ok {
			continue
		}
		o.push(&entry{d: d}, Lane(d.Lane))
	}
	o.sortQueue()
	if !full && gen == o.spillGen {
		o.spilled = false
	}
	return nil
}

func (o *outbox) sortQueue() {
	slices.SortStableFunc(o.queue, func(a, b *entry) int {
		if a.d.Lane != b.d.Lane {
			return int(a.d.Lane) - int(b.d.Lane)
		}
		switch {
		case a.d.LinkSeq < b.d.LinkSeq:
			return -1
		case a.d.LinkSeq > b.d.LinkSeq:
			return 1
		}
		return 0
	})
}

// take moves up to n sendable entries from the queue to in flight.
func (o *outbox) take(n int) []*entry {
	o.mu.Lock()
	defer o.mu.Unlock()
	n = min(n, o.s.opts.Window-len(o.inflight))
	if n <= 0 || len(o.queue) == 0 {
		return nil
	}
	held := map[Lane]bool{}
	isHeld := func(l Lane) bool {
		h, ok := held[l]
		if !ok {
			h = o.s.opts.Hold(o.peer, l)
			held[l] = h
		}
		return h
	}
	var out []*entry
	i := 0
	for i < len(o.queue) && len(out) < n && !isHeld(Lane(o.queue[i].d.Lane)) {
		out = append(out, o.queue[i])
		i++
	}
	if i == len(o.queue) || len(out) == n {
		// The common case: a prefix of the queue, no copying.
		clear(o.queue[:i])
		o.queue = o.queue[i:]
	} else {
		// A held lane: skip its entries, keep them in order.
		kept := make([]*entry, 0, len(o.queue)-i)
		for j, e := range o.queue[i:] {
			if len(out) >= n {
				kept = append(kept, o.queue[i+j:]...)
				break
			}
			if isHeld(Lane(e.d.Lane)) {
				kept = append(kept, e)
				continue
			}
			out = append(out, e)
		}
		o.queue = kept
	}
	for _, e := range out {
		o.inflight[e.d.Id] = e
	}
	return out
}

func (o *outbox) run() {
	defer o.s.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if o.s.ctx.Err() != nil {
			o.stop()
			return
		}
		o.mu.Lock()
		wait := time.Until(o.retryAt)
		needReload := o.spilled && len(o.queue) < o.s.opts.MaxQueued/2
		o.mu.Unlock()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-o.wake:
			case <-o.s.ctx.Done():
			}
			t.Stop()
			continue
		}
		if needReload {
			if err := o.reload(); err != nil {
				o.s.log.Warn("reload deliveries", "peer", o.peer, "err", err)
				o.failed(err, nil)
				continue
			}
		}
		batch := o.take(512)
		if len(batch) > 0 {
			o.send(batch)
			continue
		}
		if o.idle() {
			return
		}
		select {
		case <-o.wake:
		case <-tick.C:
			o.checkTimeouts()
		case <-o.s.ctx.Done():
		}
	}
}

// idle ends the pump when nothing is queued, in flight or spilled for a
// while; it reports whether the pump should return.
func (o *outbox) idle() bool {
	o.s.mu.Lock()
	defer o.s.mu.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.queue) > 0 || len(o.inflight) > 0 || o.spilled {
		o.idleSince = time.Time{}
		return false
	}
	if o.idleSince.IsZero() {
		o.idleSince = time.Now()
		return false
	}
	if time.Since(o.idleSince) < idleExit {
		return false
	}
	o.running = false
	for _, st := range o.streams {
		_ = st.s.Close()
	}
	return true
}

// stop ends the pump on shutdown.
func (o *outbox) stop() {
	o.s.mu.Lock()
	o.running = false
	o.s.mu.Unlock()
	o.resetAll()
}

func (o *outbox) resetAll() {
	o.mu.Lock()
	streams := make([]*outStream, 0, len(o.streams))
	for _, st := range o.streams {
		streams = append(streams, st)
	}
	o.mu.Unlock()
	for _, st := range streams {
		_ = st.s.Reset()
	}
}

// send writes a batch, grouped by protocol, and flushes each stream once.
func (o *outbox) send(batch []*entry) {
	touched := map[*outStream]bool{}
	for i, e := range batch {
		if e.env == nil {
			env, err := o.s.st.ChangeEnvelope(e.d.ChangeVersion)
			if err != nil {
				// The change is gone: nothing can ever be sent for this row.
				o.s.log.Error("delivery without its change", "delivery", e.d.Id, "version", e.d.ChangeVersion, "err", err)
				o.requeue(batch[i:])
				o.failed(err, nil)
				return
			}
			e.env = env
		}
		st, err := o.stream(protocol.ID(e.d.Protocol))
		if err != nil {
			o.requeue(batch[i:])
			o.failed(err, nil)
			o.flush(touched)
			return
		}
		o.mu.Lock()
		e.st = st
		e.sentAt = time.Now()
		e.sends++
		e.d.Attempts++
		o.mu.Unlock()
		if err := st.fw.WriteRaw(o.frame(e)); err != nil {
			o.requeue(batch[i+1:])
			o.streamDown(st, err)
			o.flush(touched)
			return
		}
		if e.sends > 1 {
			o.s.m.resent.Inc()
		}
		o.s.m.sent.Inc()
		o.s.m.inflight.Inc()
		touched[st] = true
	}
	o.flush(touched)
}

func (o *outbox) flush(touched map[*outStream]bool) {
	for st := range touched {
		_ = st.s.SetWriteDeadline(time.Now().Add(protocols.WriteTimeout))
		if err := st.fw.Flush(); err != nil {
			o.streamDown(st, err)
		}
	}
}

// frame encodes a Message around the stored envelope bytes without decoding
// them: an embedded message field is its length-delimited bytes.
func (o *outbox) frame(e *entry) []byte {
	head, _ := proto.Marshal(&pb.Message{Id: e.d.Id, LinkEpoch: o.s.st.Epoch(), LinkSeq: e.d.LinkSeq, Lane: e.d.Lane})
	b := make([]byte, 0, len(head)+len(e.env)+8)
	b = append(b, head...)
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	return protowire.AppendBytes(b, e.env)
}

// stream returns the open stream of a protocol, opening it if needed.
func (o *outbox) stream(id protocol.ID) (*outStream, error) {
	o.mu.Lock()
	st := o.streams[id]
	o.mu.Unlock()
	if st != nil && !st.closing {
		return st, nil
	}
	if st != nil {
		return nil, errors.New("stream closing")
	}
	ctx, cancel := context.WithTimeout(o.s.ctx, o.s.opts.DialTimeout)
	defer cancel()
	// The outbox keeps its own capped backoff; the swarm's (up to five
	// minutes after repeated failures) would hold a healed link shut.
	ctx = network.WithForceDirectDial(ctx, "ferry delivery")
	s, err := o.s.host.NewStream(ctx, o.peer, id)
	if err != nil {
		return nil, fmt.Errorf("open %s to %s: %w", id, o.peer, err)
	}
	if err := s.Scope().SetService(protocols.ServiceDelivery); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("attach stream to service: %w", err)
	}
	max := o.s.opts.MaxMessageBytes + protocols.FrameOverhead
	st = &outStream{proto: id, s: s, fw: protocols.NewFrameWriter(s, max), done: make(chan struct{})}
	o.mu.Lock()
	o.streams[id] = st
	o.mu.Unlock()
	o.s.m.opens.Inc()
	o.s.wg.Add(1)
	go o.readAcks(st, max)
	return st, nil
}

// readAcks is the one reader of an outbound stream.
func (o *outbox) readAcks(st *outStream, max int) {
	defer o.s.wg.Done()
	defer close(st.done)
	fr := protocols.NewFrameReader(st.s, max)
	var acks []*pb.Ack
	for {
		a := &pb.Ack{}
		err := fr.Read(a)
		if err == nil {
			acks = append(acks, a)
			if fr.Buffered() > 0 && len(acks) < 1024 {
				continue
			}
		}
		if len(acks) > 0 {
			o.acked(acks)
			acks = nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			o.streamDown(st, err)
			return
		}
	}
}

// acked takes acks off the in-flight set and records them in the ledger.
func (o *outbox) acked(acks []*pb.Ack) {
	type done struct {
		d      *storepb.Delivery
		sends  int
		status pb.AckStatus
		reason string
	}
	var ds []done
	o.mu.Lock()
	for _, a := range acks {
		e, ok := o.inflight[a.Id]
		if !ok {
			continue
		}
		delete(o.inflight, a.Id)
		delete(o.ids, a.Id)
		ds = append(ds, done{d: proto.Clone(e.d).(*storepb.Delivery), sends: e.sends, status: a.Status, reason: a.Error})
	}
	o.failures = 0
	o.mu.Unlock()
	o.wakeUp()
	if len(ds) == 0 {
		return
	}
	o.s.m.inflight.Sub(float64(len(ds)))
	for _, d := range ds {
		o.s.m.acked.WithLabelValues(outcome(d.status)).Inc()
	}
	// The rows are written from the outbox's copy, without reading them
	// back: a delivery in flight is pending on disk, and the failure path
	// (which does read) never turns an acknowledged row back to pending.
	var marked []*storepb.Delivery
	o.s.st.SubmitLazy(o.s.ctx, func(tx *store.Txn) error {
		marked = marked[:0]
		for _, x := range ds {
			d := x.d
			d.State = storepb.Delivery_STATE_SENDED
			if x.status == pb.AckStatus_ACK_STATUS_REJECTED {
				d.State = storepb.Delivery_STATE_REJECTED
				d.Error = x.reason
			}
			d.AckedAt = tx.Now().UnixNano()
			d.NextAttemptAt = 0
			tx.PutDelivery(d)
			marked = append(marked, d)
		}
		return nil
	}, func(err error) {
		if err != nil {
			if !errors.Is(err, store.ErrClosed) {
				o.s.log.Warn("record acks", "peer", o.peer, "err", err)
			}
			return
		}
		if o.s.opts.OnAcked != nil {
			for _, d := range marked {
				o.s.opts.OnAcked(d)
			}
		}
	})
}

// requeue puts entries still in flight back at the front of their lanes;
// callers must not hold o.mu.
func (o *outbox) requeue(es []*entry) {
	if len(es) == 0 {
		return
	}
	o.mu.Lock()
	for _, e := range es {
		if _, ok := o.inflight[e.d.Id]; !ok {
			continue
		}
		delete(o.inflight, e.d.Id)
		e.st = nil
		o.queue = append(o.queue, e)
	}
	o.sortQueue()
	o.mu.Unlock()
}

// streamDown drops a stream and puts what was in flight on it back in the queue.
func (o *outbox) streamDown(st *outStream, err error) {
	o.mu.Lock()
	if o.streams[st.proto] == st {
		delete(o.streams, st.proto)
	}
	var back []*entry
	for _, e := range o.inflight {
		if e.st == st {
			back = append(back, e)
		}
	}
	closing := st.closing
	o.mu.Unlock()
	if err != nil {
		_ = st.s.Reset()
	} else {
		_ = st.s.Close()
	}
	o.s.m.inflight.Sub(float64(len(back)))
	o.requeue(back)
	if err != nil || (len(back) > 0 && !closing) {
		if err == nil {
			err = errors.New("stream closed with messages in flight")
		}
		o.failed(err, back)
	}
	o.wakeUp()
}

// failed schedules the next attempt with capped exponential backoff and
// jitter and records it on the deliveries that were attempted.
func (o *outbox) failed(err error, attempted []*entry) {
	o.s.m.failures.Inc()
	o.mu.Lock()
	o.failures++
	d := o.s.opts.BackoffMin << min(o.failures-1, 20)
	if d > o.s.opts.BackoffMax || d <= 0 {
		d = o.s.opts.BackoffMax
	}
	d = d/2 + rand.N(d/2+1)
	o.retryAt = time.Now().Add(d)
	if len(attempted) == 0 && len(o.queue) > 0 {
		// Nothing was written: the head of the queue was attempted.
		attempted = o.queue[:min(len(o.queue), 64)]
		for _, e := range attempted {
			e.d.Attempts++
		}
	}
	type mark struct {
		id       uint64
		attempts uint32
	}
	ids := make([]mark, 0, len(attempted))
	for _, e := range attempted {
		ids = append(ids, mark{e.d.Id, e.d.Attempts})
	}
	next := o.retryAt.UnixNano()
	failures := o.failures
	o.mu.Unlock()
	if o.s.ctx.Err() != nil {
		return
	}
	level := slog.LevelDebug
	if failures == 1 || failures%10 == 0 {
		level = slog.LevelInfo
	}
	o.s.log.Log(o.s.ctx, level, "delivery to peer failed; will retry", "peer", o.peer, "failures", failures, "retry_in", d.Round(time.Millisecond), "err", err)
	if len(ids) == 0 {
		return
	}
	o.s.st.SubmitLazy(o.s.ctx, func(tx *store.Txn) error {
		for _, m := range ids {
			dl, err := tx.GetDelivery(m.id)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if dl.State != storepb.Delivery_STATE_PENDING {
				continue
			}
			dl.Attempts = m.attempts
			dl.NextAttemptAt = next
			tx.PutDelivery(dl)
		}
		return nil
	}, nil)
}

// checkTimeouts resets a stream whose oldest message waited too long for its ack.
func (o *outbox) checkTimeouts() {
	o.mu.Lock()
	var stuck *outStream
	var orphans []*entry
	for _, e := range o.inflight {
		if time.Since(e.sentAt) <= o.s.opts.AckTimeout {
			continue
		}
		if e.st == nil || o.streams[e.st.proto] != e.st {
			orphans = append(orphans, e)
		} else if stuck == nil {
			stuck = e.st
		}
	}
	o.mu.Unlock()
	if len(orphans) > 0 {
		o.s.m.inflight.Sub(float64(len(orphans)))
		o.requeue(orphans)
		o.wakeUp()
	}
	if stuck != nil {
		o.s.log.Info("no ack in time; resetting stream", "peer", o.peer, "protocol", stuck.proto)
		_ = stuck.s.Reset() // the reader sees the error and calls streamDown
	}
}

package stream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// Sender defaults. Each is a tuning number with its reason.
const (
	// DefaultBatchEntries bounds the entries of one frame: one group commit
	// seals up to 1024 bodies under one signature, so a batch of that many
	// costs the receiver one signature check.
	DefaultBatchEntries = 1024
	// DefaultBatchBytes bounds the envelopes of one frame (a single larger
	// entry goes alone): big enough to amortise a frame, small enough that
	// a stream interleaves lanes.
	DefaultBatchBytes = 512 << 10
	// DefaultWindow is the batches in flight per lane: enough to keep a
	// loopback or LAN link busy while the receiver commits.
	DefaultWindow      = 8
	DefaultAckTimeout  = 30 * time.Second
	DefaultDialTimeout = 15 * time.Second
	DefaultBackoffMin  = 200 * time.Millisecond
	DefaultBackoffMax  = 30 * time.Second
	// DefaultRetryScan is how often receivers with a backlog and no running
	// outbox (a member that just became one, a partner added) are looked for.
	DefaultRetryScan = 5 * time.Second
	// DefaultIdleExit ends an outbox (and closes its streams) that had
	// nothing to send for this long: outboxes exist only for receivers with
	// a backlog.
	DefaultIdleExit = 10 * time.Second
	// snapshotPause holds the decision lane of a new member that fetches a
	// snapshot first, until it reports its new position (or this passes).
	snapshotPause = time.Minute
)

// Audience tells who receives the broadcast entries of a lane: partners for
// resources, members for the reviewer's decisions. Addressed entries name
// their receivers themselves.
type Audience interface {
	// Receives reports whether p receives lane l's broadcast entries.
	Receives(p peer.ID, l Lane) bool
	// Receivers lists every receiver of lane l's broadcast entries.
	Receivers(l Lane) []peer.ID
}

// SenderOptions configure a Sender.
type SenderOptions struct {
	MaxMessageBytes int
	// BatchEntries and BatchBytes bound one frame.
	BatchEntries int
	BatchBytes   int
	// Window bounds the batches in flight per lane.
	Window int
	// AckTimeout resets a stream whose oldest batch waits longer for its answer.
	AckTimeout  time.Duration
	DialTimeout time.Duration
	BackoffMin  time.Duration
	BackoffMax  time.Duration
	// RetryScan is the period of the scan for receivers with a backlog.
	RetryScan time.Duration
	// IdleExit is how long an outbox with nothing to send keeps its
	// streams open (DefaultIdleExit).
	IdleExit time.Duration
	// Hold, when it returns true, keeps a lane to a peer from sending (a
	// closed planner stream). Kick re-evaluates.
	Hold func(peer.ID, Lane) bool
	// OnAhead runs when a receiver reports that it holds this node's
	// changes beyond this node's own log: the store was restored from an
	// older copy. version is the highest the receiver holds.
	OnAhead func(p peer.ID, lane Lane, version uint64)
	// DecisionHead returns the reviewer's last decision sequence, sent with
	// decision batches so a new member can ask for a snapshot instead.
	DecisionHead func() uint64
	// OnAcked, if set, runs for every answer of a receiver: the lane is
	// applied through `through`, and refused names the changes it refused
	// for good. It runs on the stream's reader and must not block.
	OnAcked func(p peer.ID, lane Lane, through uint64, refused []*pb.Refusal)
	// DecisionFallback, when positive, holds the decision lane's entries
	// back from a receiver until they are this old: they spread by gossip
	// first (spread/), and members report what they applied (Acknowledge);
	// the stream only carries what a member has not reported by then.
	DecisionFallback time.Duration
	Logger           *slog.Logger
	Registerer       prometheus.Registerer
}

func (o *SenderOptions) fill() {
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = protocols.DefaultMaxMessageBytes
	}
	if o.BatchEntries <= 0 {
		o.BatchEntries = DefaultBatchEntries
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = min(DefaultBatchBytes, o.MaxMessageBytes)
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
	if o.RetryScan <= 0 {
		o.RetryScan = DefaultRetryScan
	}
	if o.IdleExit <= 0 {
		o.IdleExit = DefaultIdleExit
	}
	if o.Hold == nil {
		o.Hold = func(peer.ID, Lane) bool { return false }
	}
	if o.OnAhead == nil {
		o.OnAhead = func(peer.ID, Lane, uint64) {}
	}
	if o.DecisionHead == nil {
		o.DecisionHead = func() uint64 { return 0 }
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Sender streams each receiver's backlog and moves its ack floors.
type Sender struct {
	host host.Host
	st   *store.Store
	aud  Audience
	opts SenderOptions
	log  *slog.Logger
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	// heads are the last durable broadcast entry of each lane.
	heads [numLanes + 1]atomic.Uint64
	tail  tail
	dirty atomic.Uint32 // broadcast lanes with news, as bits
	kick  chan struct{}

	mu      sync.Mutex
	closed  bool
	boxes   map[peer.ID]*outbox
	floors  map[store.FloorKey]*storepb.Floor // as loaded, for outboxes not yet made
	started bool
	// truncFrom is where the next retention pass starts (0: a new turn
	// of the sweep, from the oldest record).
	truncFrom uint64

	m senderMetrics
}

type senderMetrics struct {
	batches, entries, resent, opens, failures, equivocations prometheus.Counter
	refused, acked                                           prometheus.Counter
	inflight                                                 prometheus.Gauge
}

// NewSender builds a Sender; Start begins its work.
func NewSender(h host.Host, st *store.Store, aud Audience, o SenderOptions) (*Sender, error) {
	o.fill()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sender{host: h, st: st, aud: aud, opts: o, log: o.Logger, ctx: ctx, stop: cancel,
		boxes: map[peer.ID]*outbox{}, kick: make(chan struct{}, 1), tail: tail{max: DefaultTailBytes}}
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "delivery", Name: name, Help: help})
	}
	s.m = senderMetrics{
		batches:       c("batches_sent_total", "Batches written to receivers."),
		entries:       c("sent_total", "Entries (changes) written to receivers, resends included."),
		resent:        c("resent_total", "Entries written again after a failure or a rewind."),
		opens:         c("stream_opens_total", "Outbound delivery streams opened."),
		failures:      c("stream_failures_total", "Outbound delivery streams that failed or could not be opened."),
		equivocations: c("equivocations_reported_total", "Entries receivers refused because they hold the same version of this node with other content."),
		refused:       c("refused_total", "Entries receivers refused for good."),
		acked:         c("acked_total", "Entries sent and acknowledged by their receivers (refused ones included)."),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "ferry", Subsystem: "delivery", Name: "inflight_batches",
			Help: "Batches written and not yet answered."}),
	}
	if o.Registerer != nil {
		for _, col := range []prometheus.Collector{s.m.batches, s.m.entries, s.m.resent, s.m.opens, s.m.failures,
			s.m.equivocations, s.m.refused, s.m.acked, s.m.inflight} {
			if err := o.Registerer.Register(col); err != nil {
				cancel()
				return nil, fmt.Errorf("register delivery metrics: %w", err)
			}
		}
	}
	return s, nil
}

// go runs fn on a goroutine the sender owns; after Close it runs nothing.
// Callers hold s.mu.
func (s *Sender) goLocked(fn func()) bool {
	if s.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
	return true
}

// Start loads the ack floors and the lanes' heads, starts an outbox for
// every receiver with a backlog, and the scan that finds new ones.
func (s *Sender) Start() error {
	floors, err := s.st.Floors()
	if err != nil {
		return fmt.Errorf("load ack floors: %w", err)
	}
	for _, l := range []Lane{LaneResource, LaneDecision} {
		h, err := s.st.LaneHead("", uint8(l), true)
		if err != nil {
			return fmt.Errorf("read lane heads: %w", err)
		}
		s.heads[l].Store(h)
	}
	s.mu.Lock()
	s.floors = floors
	s.started = true
	s.goLocked(s.loop)
	s.mu.Unlock()
	s.scan()
	return nil
}

// Close stops every outbox and waits for them; it saves the floors they
// moved. The log and the floors stay on disk: nothing is lost.
func (s *Sender) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.stop()
	boxes := make([]*outbox, 0, len(s.boxes))
	for _, o := range s.boxes {
		boxes = append(boxes, o)
	}
	s.mu.Unlock()
	for _, o := range boxes {
		o.resetAll()
	}
	s.wg.Wait()
	for _, o := range boxes {
		o.saveFloors(context.Background())
	}
}

// Notify tells the sender that an entry of its own log is on disk (it runs
// in store commit hooks and never blocks): broadcast entries wake the
// lane's receivers, addressed ones their addressees.
func (s *Sender) Notify(e store.OwnEntry) {
	lane := Lane(e.Lane)
	if lane < LaneResource || lane > numLanes {
		return
	}
	s.tail.add(e)
	if len(e.To) == 0 {
		for {
			h := s.heads[lane].Load()
			if e.Version <= h || s.heads[lane].CompareAndSwap(h, e.Version) {
				break
			}
		}
		for {
			d := s.dirty.Load()
			if d&(1<<lane) != 0 || s.dirty.CompareAndSwap(d, d|1<<lane) {
				break
			}
		}
		select {
		case s.kick <- struct{}{}:
		default:
		}
		return
	}
	for _, p := range e.To {
		if p == s.host.ID() {
			continue
		}
		if o := s.box(p); o != nil {
			o.noteAddressed(lane, e.Version)
			o.wakeUp()
		}
	}
}

// loop wakes the receivers of lanes with news, and periodically looks for
// receivers with a backlog and no running outbox.
func (s *Sender) loop() {
	t := time.NewTicker(s.opts.RetryScan)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.kick:
			d := s.dirty.Swap(0)
			for _, l := range Lanes {
				if d&(1<<l) == 0 {
					continue
				}
				for _, p := range s.aud.Receivers(l) {
					if p == s.host.ID() {
						continue
					}
					if o := s.box(p); o != nil {
						o.wakeUp()
					}
				}
			}
		case <-t.C:
			s.scan()
		}
	}
}

// scan starts an outbox for every receiver with a backlog (and only for
// those: an idle receiver costs no goroutine).
func (s *Sender) scan() {
	seen := map[peer.ID]bool{}
	for _, l := range []Lane{LaneResource, LaneDecision} {
		if s.heads[l].Load() == 0 {
			continue
		}
		for _, p := range s.aud.Receivers(l) {
			seen[p] = false
		}
	}
	addressed, err := s.st.AddressedReceivers()
	if err != nil && s.ctx.Err() == nil {
		s.log.Warn("list addressed receivers", "err", err)
	}
	for _, p := range addressed {
		seen[p] = true
	}
	for p, addr := range seen {
		if p == s.host.ID() || !s.owes(p, addr) {
			continue
		}
		if o := s.box(p); o != nil {
			o.wakeUp()
		}
	}
}

// owes reports whether p may have something to receive: its outbox is
// running or holds batches in flight, or a lane's head (broadcast, and
// addressed to p when addressed is set: a store read) is past p's floor.
func (s *Sender) owes(p peer.ID, addressed bool) bool {
	var floors [numLanes + 1]uint64
	s.mu.Lock()
	o := s.boxes[p]
	if o != nil && o.running {
		s.mu.Unlock()
		return true
	}
	if o == nil {
		for _, l := range Lanes {
			if f := s.floors[store.FloorKey{Receiver: p, Lane: uint8(l)}]; f != nil {
				floors[l] = f.Version
			}
		}
	}
	s.mu.Unlock()
	if o != nil {
		// The outbox keeps its lanes' heads (addressed ones too) current.
		o.mu.Lock()
		defer o.mu.Unlock()
		for _, l := range Lanes {
			ls := o.lanes[l]
			if len(ls.inflight) > 0 || ls.floor < o.head(ls) || (!ls.addrLoaded && addressed) {
				return true
			}
		}
		return false
	}
	for _, l := range []Lane{LaneResource, LaneDecision} {
		if h := s.heads[l].Load(); h > floors[l] && s.aud.Receives(p, l) {
			return true
		}
	}
	if !addressed {
		return false
	}
	for _, l := range Lanes {
		h, err := s.st.LaneHead(p, uint8(l), false)
		if err != nil || h > floors[l] {
			return true // on a read error, let the outbox look
		}
	}
	return false
}

// Kick makes p's outbox try again now: after a hold is lifted, or when the
// peer has just connected (its backoff is cut short). A peer owed nothing
// gets no outbox.
func (s *Sender) Kick(p peer.ID) {
	if p == s.host.ID() || !s.owes(p, true) {
		return
	}
	o := s.box(p)
	if o == nil {
		return
	}
	o.mu.Lock()
	o.retryAt = time.Time{}
	o.mu.Unlock()
	o.wakeUp()
}

// Holds reports whether a lane to p is held (see SenderOptions.Hold).
func (s *Sender) Holds(p peer.ID, l Lane) bool { return s.opts.Hold(p, l) }

// box returns the outbox of p, starting its pump if it is not running; nil
// once the sender is closed.
func (s *Sender) box(p peer.ID) *outbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || !s.started {
		return nil
	}
	o := s.boxes[p]
	if o == nil {
		o = newOutbox(s, p)
		s.boxes[p] = o
	}
	if !o.running {
		o.running = s.goLocked(o.run)
	}
	return o
}

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

// LaneState is what the sender knows of one receiver's lane.
type LaneState struct {
	Floor         uint64
	AckedAt       time.Time
	Inflight      int // batches
	Attempts      uint32
	NextAttemptAt time.Time
	LastError     string
	Held          bool
}

// Lane reports one receiver's lane.
func (s *Sender) Lane(p peer.ID, l Lane) LaneState {
	if l < LaneResource || l > numLanes {
		return LaneState{}
	}
	s.mu.Lock()
	o := s.boxes[p]
	var f *storepb.Floor
	if o == nil {
		f = s.floors[store.FloorKey{Receiver: p, Lane: uint8(l)}]
	}
	s.mu.Unlock()
	ls := LaneState{Held: s.opts.Hold(p, l)}
	if o == nil {
		if f != nil {
			ls.Floor, ls.AckedAt = f.Version, time.Unix(0, f.AckedAt)
		}
		return ls
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	st := o.lanes[l]
	ls.Floor, ls.Inflight, ls.Attempts, ls.LastError = st.floor, len(st.inflight), st.attempts, o.lastErr
	if st.ackedAt > 0 {
		ls.AckedAt = time.Unix(0, st.ackedAt)
	}
	if time.Now().Before(o.retryAt) {
		ls.NextAttemptAt = o.retryAt
	}
	return ls
}

// AckedEntries reports, per receiver, the entries it acknowledged since the
// sender started (refused ones included): ferry_delivery_acked_total split
// by receiver, for the console's rates.
func (s *Sender) AckedEntries() map[peer.ID]uint64 {
	s.mu.Lock()
	boxes := make([]*outbox, 0, len(s.boxes))
	for _, o := range s.boxes {
		boxes = append(boxes, o)
	}
	s.mu.Unlock()
	out := make(map[peer.ID]uint64, len(boxes))
	for _, o := range boxes {
		o.mu.Lock()
		out[o.peer] = o.acked
		o.mu.Unlock()
	}
	return out
}

// Head is the last durable broadcast entry of a lane (0: none).
func (s *Sender) Head(l Lane) uint64 {
	if l < LaneResource || l > numLanes {
		return 0
	}
	return s.heads[l].Load()
}

// outbox is the sending state of one receiver. Its pump goroutine is the
// only writer of its streams; one reader per stream takes the replies.
type outbox struct {
	s    *Sender
	peer peer.ID
	wake chan struct{}

	running bool // guarded by Sender.mu

	mu        sync.Mutex
	lanes     [numLanes + 1]*laneState
	streams   map[protocol.ID]*outStream
	failures  int
	retryAt   time.Time
	lastErr   string
	idleSince time.Time
	acked     uint64 // entries this receiver acknowledged since start (refused ones included)
}

// laneState is one lane of one receiver. The receiver has applied every
// entry up to floor; entries up to cursor were written and are in flight.
type laneState struct {
	lane       Lane
	floor      uint64
	saved      uint64 // the floor on disk
	ackedAt    int64
	cursor     uint64
	inflight   []*sent
	addrHead   uint64 // last entry addressed to this receiver in this lane (0: unknown yet)
	addrLoaded bool
	attempts   uint32    // sends of the entry after the floor
	pausedTo   time.Time // a new member fetches a snapshot (decision lane)
}

// sent is one batch in flight.
type sent struct {
	after, through uint64
	entries        int
	st             *outStream
	at             time.Time
}

type outStream struct {
	proto   protocol.ID
	s       network.Stream
	fw      *protocols.FrameWriter
	done    chan struct{}
	closing bool
	// lastReply is when the receiver last answered on this stream (or the
	// stream opened): a receiver that keeps answering is slow, not stuck.
	lastReply atomic.Int64
}

func newOutbox(s *Sender, p peer.ID) *outbox {
	o := &outbox{s: s, peer: p, wake: make(chan struct{}, 1), streams: map[protocol.ID]*outStream{}}
	for _, l := range Lanes {
		ls := &laneState{lane: l}
		if f := s.floors[store.FloorKey{Receiver: p, Lane: uint8(l)}]; f != nil {
			ls.floor, ls.saved, ls.ackedAt, ls.cursor = f.Version, f.Version, f.AckedAt, f.Version
		}
		o.lanes[l] = ls
	}
	return o
}

func (o *outbox) wakeUp() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *outbox) noteAddressed(l Lane, v uint64) {
	o.mu.Lock()
	if ls := o.lanes[l]; v > ls.addrHead {
		ls.addrHead = v
	}
	o.mu.Unlock()
}

// head is the last entry of a lane this receiver gets; callers hold o.mu.
func (o *outbox) head(ls *laneState) uint64 {
	h := ls.addrHead
	if (ls.lane == LaneResource || ls.lane == LaneDecision) && o.s.aud.Receives(o.peer, ls.lane) {
		h = max(h, o.s.heads[ls.lane].Load())
	}
	return h
}

// loadHeads reads, once per outbox, the last entry addressed to the receiver
// in each lane.
func (o *outbox) loadHeads() error {
	for _, l := range Lanes {
		o.mu.Lock()
		done := o.lanes[l].addrLoaded
		o.mu.Unlock()
		if done {
			continue
		}
		h, err := o.s.st.LaneHead(o.peer, uint8(l), false)
		if err != nil {
			return err
		}
		o.mu.Lock()
		ls := o.lanes[l]
		ls.addrHead, ls.addrLoaded = max(ls.addrHead, h), true
		o.mu.Unlock()
	}
	return nil
}

func (o *outbox) run() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	if err := o.loadHeads(); err != nil && o.s.ctx.Err() == nil {
		o.s.log.Warn("read backlog heads", "peer", o.peer, "err", err)
	}
	for {
		if o.s.ctx.Err() != nil {
			o.resetAll()
			return
		}
		o.mu.Lock()
		wait := time.Until(o.retryAt)
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
		if o.pump() {
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

// plan is one batch to write.
type plan struct {
	ls      *laneState
	after   uint64
	entries []store.Entry
}

// pump writes what the window allows on every lane; it reports whether it
// wrote anything.
func (o *outbox) pump() bool {
	var plans []plan
	now := time.Now()
	o.mu.Lock()
	type want struct {
		ls    *laneState
		after uint64
		room  int
	}
	var wants []want
	for _, l := range Lanes {
		ls := o.lanes[l]
		if now.Before(ls.pausedTo) || o.s.opts.Hold(o.peer, l) {
			continue
		}
		room := o.s.opts.Window - len(ls.inflight)
		if room <= 0 || ls.cursor >= o.head(ls) {
			continue
		}
		wants = append(wants, want{ls, ls.cursor, room})
	}
	o.mu.Unlock()
	for _, w := range wants {
		broadcast := (w.ls.lane == LaneResource || w.ls.lane == LaneDecision) && o.s.aud.Receives(o.peer, w.ls.lane)
		maxEntries, maxBytes := w.room*o.s.opts.BatchEntries, w.room*o.s.opts.BatchBytes
		es, ok := o.s.tail.backlog(o.peer, w.ls.lane, broadcast, w.after, maxEntries, maxBytes)
		if !ok {
			var err error
			es, err = o.s.st.Backlog(o.peer, uint8(w.ls.lane), broadcast, w.after, maxEntries, maxBytes)
			if err != nil {
				o.failed(fmt.Errorf("read backlog: %w", err))
				return false
			}
		}
		if w.ls.lane == LaneDecision && o.s.opts.DecisionFallback > 0 && len(es) > 0 {
			if es = o.fallbackDue(es, now); len(es) == 0 {
				continue // nothing old enough yet: the next tick looks again
			}
		}
		if len(es) == 0 {
			// The head moved past entries that are not on disk for this
			// receiver (another receiver's, or truncated): nothing to send.
			o.mu.Lock()
			if w.ls.cursor == w.after {
				w.ls.cursor = max(w.ls.cursor, min(o.head(w.ls), o.s.st.DurableVersion()))
				if len(w.ls.inflight) == 0 && w.ls.floor < w.ls.cursor {
					// nothing in flight and nothing owed below the cursor
					w.ls.floor = w.ls.cursor
				}
			}
			o.mu.Unlock()
			continue
		}
		plans = append(plans, o.cut(w.ls, w.after, es, w.room)...)
	}
	if len(plans) == 0 {
		return false
	}
	o.write(plans)
	return true
}

// fallbackDue keeps the decisions that may go on the stream now: those
// older than DecisionFallback (a version is the clock in microseconds when
// the change was made, or a little past it), up to the first that is not.
func (o *outbox) fallbackDue(es []store.Entry, now time.Time) []store.Entry {
	due := uint64(now.Add(-o.s.opts.DecisionFallback).UnixMicro())
	i, _ := slices.BinarySearchFunc(es, due+1, func(e store.Entry, v uint64) int {
		return cmp.Compare(e.Version, v)
	})
	return es[:i]
}

// Acknowledge takes a receiver's word, given outside the stream, that it
// applied lane l through version `through` (a member's report of the
// decisions it applied from gossip): the floor moves as on a reply.
// The receiver's outbox is not started for it: the periodic scan starts
// it if the lane still owes something.
func (s *Sender) Acknowledge(p peer.ID, l Lane, through uint64) {
	s.mu.Lock()
	if s.closed || !s.started {
		s.mu.Unlock()
		return
	}
	o := s.boxes[p]
	if o == nil {
		o = newOutbox(s, p)
		s.boxes[p] = o
	}
	s.mu.Unlock()
	o.replies(nil, []*pb.Reply{{Lane: uint32(l), Epoch: s.st.Epoch(), Through: through}})
}

// HoldsAtMost takes a receiver's word (its hello) that it holds nothing of
// this node's after version v: a floor above v is wrong (its store was
// restored or replaced), and the lane goes back to v and is sent again (the
// receiver's position reports, when the stream opens, refine it).
func (s *Sender) HoldsAtMost(p peer.ID, v uint64) {
	s.mu.Lock()
	if s.closed || !s.started {
		s.mu.Unlock()
		return
	}
	o := s.boxes[p]
	if o == nil {
		o = newOutbox(s, p)
		s.boxes[p] = o
	}
	s.mu.Unlock()
	o.mu.Lock()
	if len(o.streams) > 0 {
		// A stream is open: the receiver reported its positions when it
		// opened, which say more than a hello built before the last replies.
		o.mu.Unlock()
		return
	}
	floors := make(map[Lane]uint64, len(Lanes))
	for _, l := range Lanes {
		if ls := o.lanes[l]; ls.floor > v {
			floors[l] = ls.floor
		}
	}
	o.mu.Unlock()
	// Only a lane that owes the receiver an entry in (v, floor] is wrong: a
	// floor also passes entries that were for others.
	wrong := map[Lane]bool{}
	for l, f := range floors {
		broadcast := (l == LaneResource || l == LaneDecision) && s.aud.Receives(p, l)
		es, err := s.st.Backlog(p, uint8(l), broadcast, v, 1, math.MaxInt)
		if err == nil && len(es) > 0 && es[0].Version <= f {
			wrong[l] = true
		}
	}
	if len(wrong) == 0 {
		return
	}
	moved := false
	o.mu.Lock()
	for _, l := range Lanes {
		if ls := o.lanes[l]; wrong[l] && ls.floor > v {
			s.log.Info("receiver holds less than it acknowledged (its store was restored or replaced); resending from what it holds",
				"peer", p, "lane", l, "floor", ls.floor, "holds", v)
			ls.floor = v
			o.dropInflight(ls)
			ls.cursor = v
			moved = true
		}
	}
	o.mu.Unlock()
	if moved {
		o.saveFloors(s.ctx)
		s.Kick(p)
	}
}

// cut groups entries into batches: consecutive entries of one protocol, at
// most BatchEntries and about BatchBytes each.
func (o *outbox) cut(ls *laneState, after uint64, es []store.Entry, room int) []plan {
	var out []plan
	start, size := 0, 0
	for i, e := range es {
		if i > start && (e.Protocol != es[start].Protocol || i-start >= o.s.opts.BatchEntries || size+len(e.Env) > o.s.opts.BatchBytes) {
			out = append(out, plan{ls: ls, after: after, entries: es[start:i]})
			after = es[i-1].Version
			start, size = i, 0
			if len(out) == room {
				return out
			}
		}
		size += len(e.Env)
	}
	return append(out, plan{ls: ls, after: after, entries: es[start:]})
}

// write sends batches, each on its protocol's stream, and flushes each
// stream once.
func (o *outbox) write(plans []plan) {
	touched := map[*outStream]bool{}
	defer func() {
		for st := range touched {
			_ = st.s.SetWriteDeadline(time.Now().Add(protocols.WriteTimeout))
			if err := st.fw.Flush(); err != nil {
				o.streamDown(st, err)
			}
		}
	}()
	for _, p := range plans {
		proto := p.entries[0].Protocol
		st, err := o.stream(proto)
		if err != nil {
			o.mu.Lock()
			p.ls.attempts++ // the entries after the floor were tried again
			o.mu.Unlock()
			o.s.m.failures.Inc()
			o.failed(err)
			return
		}
		o.mu.Lock()
		if p.ls.cursor != p.after {
			// A reply moved the lane while the backlog was read: read again.
			o.mu.Unlock()
			return
		}
		last := p.entries[len(p.entries)-1].Version
		resend := p.after < p.ls.floor || (len(p.ls.inflight) == 0 && p.ls.attempts > 0)
		p.ls.inflight = append(p.ls.inflight, &sent{after: p.after, through: last, entries: len(p.entries), st: st, at: time.Now()})
		p.ls.cursor = last
		if len(p.ls.inflight) == 1 {
			p.ls.attempts++
		}
		o.mu.Unlock()
		var head uint64
		if p.ls.lane == LaneDecision {
			head = o.s.opts.DecisionHead()
		}
		if err := st.fw.WriteRaw(encodeBatch(o.s.st.Epoch(), p.ls.lane, p.after, p.entries, head)); err != nil {
			o.streamDown(st, err)
			return
		}
		touched[st] = true
		o.s.m.batches.Inc()
		o.s.m.inflight.Inc()
		o.s.m.entries.Add(float64(len(p.entries)))
		if resend {
			o.s.m.resent.Add(float64(len(p.entries)))
		}
	}
}

// encodeBatch builds a Batch frame around the stored envelope bytes without
// decoding them: a repeated message field is its length-delimited bytes.
func encodeBatch(epoch uint64, lane Lane, after uint64, es []store.Entry, headSeq uint64) []byte {
	size := 32
	for _, e := range es {
		size += len(e.Env) + 4
	}
	b := make([]byte, 0, size)
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, epoch)
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(lane))
	if after > 0 {
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, after)
	}
	for _, e := range es {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, e.Env)
	}
	if headSeq > 0 {
		b = protowire.AppendTag(b, 5, protowire.VarintType)
		b = protowire.AppendVarint(b, headSeq)
	}
	return b
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
	limit := o.s.opts.MaxMessageBytes + protocols.FrameOverhead
	st = &outStream{proto: id, s: s, fw: protocols.NewFrameWriter(s, limit), done: make(chan struct{})}
	st.lastReply.Store(time.Now().UnixNano())
	o.s.mu.Lock()
	ok := o.s.goLocked(func() { o.readReplies(st) })
	o.s.mu.Unlock()
	if !ok {
		_ = s.Reset()
		return nil, errors.New("sender closed")
	}
	o.mu.Lock()
	o.streams[id] = st
	o.mu.Unlock()
	o.s.m.opens.Inc()
	return st, nil
}

// readReplies is the one reader of an outbound stream.
func (o *outbox) readReplies(st *outStream) {
	defer close(st.done)
	fr := protocols.NewFrameReader(st.s, protocols.MaxReplyBytes)
	var rs []*pb.Reply
	for {
		r := &pb.Reply{}
		err := fr.Read(r)
		if err == nil {
			rs = append(rs, r)
			if fr.Buffered() > 0 && len(rs) < 256 {
				continue
			}
		}
		if len(rs) > 0 {
			st.lastReply.Store(time.Now().UnixNano())
			o.replies(st, rs)
			rs = nil
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

// replies applies what a receiver answered: floors move, position reports
// rewind or advance lanes, refusals are recorded.
func (o *outbox) replies(st *outStream, rs []*pb.Reply) {
	epoch := o.s.st.Epoch()
	durable := o.s.st.DurableVersion()
	type refusal struct {
		ver    uint64
		reason string
	}
	var refused []refusal
	var ahead []struct {
		l Lane
		v uint64
	}
	type ackNote struct {
		l       Lane
		through uint64
		refused []*pb.Refusal
	}
	var acks []ackNote
	now := time.Now()
	o.mu.Lock()
	for _, r := range rs {
		l := Lane(r.Lane)
		if l < LaneResource || l > numLanes {
			continue
		}
		ls := o.lanes[l]
		through := r.Through
		if r.Epoch != epoch {
			through = 0 // the receiver holds nothing of this incarnation
		}
		if r.WantSnapshot {
			ls.pausedTo = now.Add(snapshotPause)
			o.dropInflight(ls)
			ls.cursor = ls.floor
			continue
		}
		if r.Report {
			if through > durable {
				ahead = append(ahead, struct {
					l Lane
					v uint64
				}{l, through})
			}
			switch {
			case through < ls.floor:
				o.s.log.Info("receiver holds less than it acknowledged (its store was restored or replaced); resending from its position",
					"peer", o.peer, "lane", l, "floor", ls.floor, "position", through)
				ls.floor = through
				o.dropInflight(ls)
				ls.cursor = ls.floor
			case through > ls.floor:
				ls.floor, ls.ackedAt = through, now.UnixNano()
			}
			if through > 0 {
				ls.pausedTo = time.Time{}
			}
		} else {
			if through > ls.floor {
				ls.floor, ls.ackedAt = through, now.UnixNano()
				ls.attempts = 0
				o.failures = 0
				o.lastErr = ""
			}
			if o.s.opts.OnAcked != nil {
				acks = append(acks, ackNote{l, through, r.Refused})
			}
		}
		if ls.cursor < ls.floor {
			ls.cursor = ls.floor
		}
		kept := ls.inflight[:0]
		for _, b := range ls.inflight {
			if b.through > ls.floor {
				kept = append(kept, b)
			} else {
				o.s.m.inflight.Dec()
				o.s.m.acked.Add(float64(b.entries))
				o.acked += uint64(b.entries)
			}
		}
		clear(ls.inflight[len(kept):])
		ls.inflight = kept
		for _, f := range r.Refused {
			refused = append(refused, refusal{f.Version, f.Reason})
			o.s.m.refused.Inc()
			if f.Equivocation {
				o.s.m.equivocations.Inc()
				o.s.log.Error("receiver holds another change under this node's version: equivocation (was this node's store restored from an older copy while its clock went back?)",
					"peer", o.peer, "lane", l, "version", f.Version, "reason", f.Reason)
			} else {
				o.s.log.Warn("receiver refused a change for good", "peer", o.peer, "lane", l, "version", f.Version, "reason", f.Reason)
			}
		}
	}
	o.mu.Unlock()
	o.wakeUp()
	for _, a := range ahead {
		o.s.opts.OnAhead(o.peer, a.l, a.v)
	}
	for _, a := range acks {
		o.s.opts.OnAcked(o.peer, a.l, a.through, a.refused)
	}
	if len(refused) > 0 {
		o.s.st.SubmitLazy(o.s.ctx, func(tx *store.Txn) error {
			for _, r := range refused {
				tx.SetRefused(o.peer, r.ver, r.reason)
			}
			return nil
		}, nil)
	}
	o.saveFloors(o.s.ctx)
}

// dropInflight forgets a lane's batches in flight (they will be read
// again from the log); callers hold o.mu.
func (o *outbox) dropInflight(ls *laneState) {
	o.s.m.inflight.Sub(float64(len(ls.inflight)))
	clear(ls.inflight)
	ls.inflight = ls.inflight[:0]
}

// saveFloors writes the floors that moved, without an fsync of their own: a
// floor lost in a crash only means a resend the receiver answers at once.
func (o *outbox) saveFloors(ctx context.Context) {
	type fl struct {
		lane Lane
		f    *storepb.Floor
	}
	var fs []fl
	o.mu.Lock()
	for _, l := range Lanes {
		ls := o.lanes[l]
		if ls.floor != ls.saved {
			ls.saved = ls.floor
			fs = append(fs, fl{l, &storepb.Floor{Version: ls.floor, AckedAt: ls.ackedAt}})
		}
	}
	o.mu.Unlock()
	if len(fs) == 0 {
		return
	}
	o.s.st.SubmitLazy(ctx, func(tx *store.Txn) error {
		for _, f := range fs {
			tx.SetFloor(o.peer, uint8(f.lane), f.f)
		}
		return nil
	}, nil)
}

// idle ends the pump when nothing was owed or in flight for a while; it
// reports whether the pump should return.
func (o *outbox) idle() bool {
	o.s.mu.Lock()
	defer o.s.mu.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	for _, l := range Lanes {
		ls := o.lanes[l]
		if len(ls.inflight) > 0 || (ls.cursor < o.head(ls) && !o.s.opts.Hold(o.peer, l) && !now.Before(ls.pausedTo)) {
			o.idleSince = time.Time{}
			return false
		}
	}
	if o.idleSince.IsZero() {
		o.idleSince = now
		return false
	}
	if now.Sub(o.idleSince) < o.s.opts.IdleExit {
		return false
	}
	o.running = false
	if len(o.streams) > 0 {
		o.s.log.Debug("nothing owed: closing the quiet delivery streams", "peer", o.peer, "streams", len(o.streams))
	}
	for _, st := range o.streams {
		st.closing = true // a quiet close, not a failure (streamDown)
		_ = st.s.Close()
	}
	return true
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

// streamDown drops a stream. Every lane with batches in flight on it goes
// back to its floor (go-back-N: later batches of the lane may be held by
// the receiver waiting for this stream's), and is resent from there.
func (o *outbox) streamDown(st *outStream, err error) {
	o.mu.Lock()
	if o.streams[st.proto] == st {
		delete(o.streams, st.proto)
	}
	lost := 0
	for _, l := range Lanes {
		ls := o.lanes[l]
		hit := false
		for _, b := range ls.inflight {
			if b.st == st {
				hit = true
				lost += b.entries
			}
		}
		if hit {
			o.dropInflight(ls)
			ls.cursor = ls.floor
		}
	}
	closing := st.closing
	o.mu.Unlock()
	if err != nil {
		_ = st.s.Reset()
	} else {
		_ = st.s.Close()
	}
	// A stream this node closed with nothing in flight ends however its
	// reader learns of it (EOF, or a reset of the closed stream): that is
	// no failure, and says nothing to operators above DEBUG.
	quiet := closing && lost == 0
	if quiet {
		o.s.log.Debug("closed a quiet delivery stream", "peer", o.peer, "protocol", st.proto, "end", err)
	}
	if (err != nil && !quiet) || (lost > 0 && !closing) {
		if err == nil {
			err = errors.New("stream closed with batches in flight")
		}
		o.s.m.failures.Inc()
		o.failed(err)
	}
	o.wakeUp()
}

// failed schedules the next attempt with capped exponential backoff and jitter.
func (o *outbox) failed(err error) {
	o.mu.Lock()
	o.failures++
	d := o.s.opts.BackoffMin << min(o.failures-1, 20)
	if d > o.s.opts.BackoffMax || d <= 0 {
		d = o.s.opts.BackoffMax
	}
	d = d/2 + rand.N(d/2+1)
	o.retryAt = time.Now().Add(d)
	o.lastErr = err.Error()
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
}

// checkTimeouts resets a stream on which batches wait and nothing was
// answered for AckTimeout (since the later of the last answer and the
// oldest batch's send): a receiver that keeps answering is slow, not stuck.
func (o *outbox) checkTimeouts() {
	o.mu.Lock()
	var stuck *outStream
	now := time.Now()
	for _, l := range Lanes {
		for _, b := range o.lanes[l].inflight {
			last := time.Unix(0, b.st.lastReply.Load())
			if b.at.After(last) {
				last = b.at
			}
			if now.Sub(last) > o.s.opts.AckTimeout {
				stuck = b.st
				break
			}
		}
		if stuck != nil {
			break
		}
	}
	o.mu.Unlock()
	if stuck != nil {
		o.s.log.Info("no answer in time; resetting stream", "peer", o.peer, "protocol", stuck.proto)
		_ = stuck.s.Reset() // the reader sees the error and calls streamDown
	}
}

// Receivers lists the peers the sender has state for (outboxes or floors).
func (s *Sender) Receivers() []peer.ID {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := map[peer.ID]bool{}
	for p := range s.boxes {
		set[p] = true
	}
	for k := range s.floors {
		set[k.Receiver] = true
	}
	out := make([]peer.ID, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

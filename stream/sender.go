package stream

// The sender: the registry of receivers (one outbox each, outbox.go), the
// loop and the scan that wake them, dialing, the outbound streams, writing
// batches and reading replies. A lane's state moves by laneState.step
// (lane.go).
//
// Locks, in the manner of nats-server's locksordering.txt: A -> B means
// that B may be locked while A is held, never the opposite.
//
//	Sender.mu -> outbox.mu
//
//   - Sender.mu guards the registry: started, boxes, floors, truncFrom,
//     and each outbox's running and pokes. Every goroutine of the sender
//     is counted by its lifecycle.Group g, so that none starts after
//     Close; Close shuts g and cancels the sender's context under
//     Sender.mu, so what holds it sees g.Closed() steady. g's own lock is
//     a leaf.
//   - outbox.mu guards one receiver's state: lanes, streams (and each
//     outStream's closing), retry, idleSince, acked.
//   - tail.mu -> tail.rmu, leaves: notify and the pump take them with no
//     other lock.
//   - heads, dirty and outStream.lastReply are atomics: read them under
//     any lock, or none.
//   - Only outbox.idle holds both locks, for the moment its pump's running
//     goes false (box starts a new pump only then) and the outbox's streams
//     are marked closing; it calls nothing while it does.
//
// Never called with a sender lock held (any of the above):
//   - the SenderOptions callbacks (Hold, OnAhead, OnAcked, DecisionHead,
//     Floors)
//     and the Audience: they take their owners' locks, and their owners
//     call the sender (Kick, CloseStream, Acknowledge). The outbox asks
//     Hold and the Audience first (outbox.view) and takes its lock after;
//   - the store (reads, SubmitLazy, Update): its completer calls notify
//     (store.Follow), which takes Sender.mu and then outbox.mu (one after
//     the other), and Truncate reads lanes (Sender.Lane) from inside a
//     store scan;
//   - libp2p: NewStream, writes and flushes, Close, Reset;
//   - the logger, and laneState.step's actions (metrics, logs, callbacks,
//     store writes): a step runs under outbox.mu, its actions after.
//
// Time, rand.N and laneState.step itself are no calls out: they are used
// under outbox.mu.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
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

	"github.com/ferrynet/ferry/internal/lifecycle"
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
	// outbox (a member that just became one, a partner added) are looked for
	// while some are owed something; at rest the looks back off to a minute.
	DefaultRetryScan = 5 * time.Second
	// DefaultIdleExit ends an outbox (and closes its streams) that had
	// nothing to send for this long: outboxes exist only for receivers with
	// a backlog.
	DefaultIdleExit = 10 * time.Second
	// DefaultRoomWait is how long an outbox waits for room under the
	// node's connection bound (SenderOptions.Room) before it dials anyway:
	// long enough for gossip and the members' reports to do the work (a
	// decision's fallback is 10 s), short enough that a member nothing
	// else reaches is not left behind for long.
	DefaultRoomWait = 2 * time.Minute
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

// FloorTracer hears what moves a receiver's ack floors: its methods run on
// the goroutine that moved the floor (a stream's reply reader, a pump, a
// hello), after the sender let go of its locks, and must not block. Calls
// about one lane may come from several goroutines (a lane's protocols have
// a stream each), so a later call may carry an older floor.
type FloorTracer interface {
	// Refused names changes of lane l that p refused for good. It comes
	// before the FloorMoved that passes them.
	Refused(p peer.ID, l Lane, refused []*pb.Refusal)
	// FloorMoved says that p's floor of lane l is now floor: p applied
	// (or refused) every entry of the lane addressed to it up to floor.
	// rewound: the floor went back (the receiver holds less than it
	// acknowledged: its store was restored or replaced).
	FloorMoved(p peer.ID, l Lane, floor uint64, rewound bool)
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
	// RetryScan is the period of the scan for receivers with a backlog
	// (backing off to 12 times it at rest).
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
	// Floors, if set, hears of every move of a receiver's ack floor and
	// of every change a receiver refused (apps' delivery status and
	// waits, package delivery).
	Floors FloorTracer
	// DecisionFallback, when positive, holds the decision lane's entries
	// back from a receiver until they are this old: they spread by gossip
	// first (spread/), and members report what they applied (Acknowledge);
	// the stream only carries what a member has not reported by then.
	DecisionFallback time.Duration
	// Room, if set, is asked before the sender opens a stream to a receiver
	// it holds no connection with: whether a new connection fits within
	// the node's bound (peers.Keeper.Room, which may close a less needed
	// one to make room). While it says no, the outbox waits as after a
	// failure (ErrNoRoom, the same backoff) without counting an attempt;
	// once it has waited RoomWait with no word from the receiver it dials
	// anyway: a bound must never cut a receiver off.
	Room func(peer.ID) bool
	// Dialed, if set, is told when a dial Room let go has ended, opened
	// or failed (peers.Keeper.Dialed): the room it held is given back
	// then, however long the dial took.
	Dialed func(peer.ID)
	// RoomWait bounds the wait for Room (DefaultRoomWait).
	RoomWait   time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
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
	if o.RoomWait <= 0 {
		o.RoomWait = DefaultRoomWait
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
	g    lifecycle.Group // every goroutine of the sender

	// heads are the last durable broadcast entry of each lane.
	heads [numLanes + 1]atomic.Uint64
	tail  tail
	dirty atomic.Uint32 // broadcast lanes with news, as bits
	kick  chan struct{}

	mu      sync.Mutex
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
	roomWaits, roomForced                                    prometheus.Counter
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
		roomWaits:     c("room_waits_total", "Times a receiver's outbox waited instead of opening a connection that does not fit within connections.max."),
		roomForced:    c("room_forced_total", "Connections opened above connections.max after a receiver's outbox waited for room for the longest wait (SenderOptions.RoomWait)."),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "ferry", Subsystem: "delivery", Name: "inflight_batches",
			Help: "Batches written and not yet answered."}),
	}
	if o.Registerer != nil {
		for _, col := range []prometheus.Collector{s.m.batches, s.m.entries, s.m.resent, s.m.opens, s.m.failures,
			s.m.equivocations, s.m.refused, s.m.acked, s.m.roomWaits, s.m.roomForced, s.m.inflight} {
			if err := o.Registerer.Register(col); err != nil {
				cancel()
				return nil, fmt.Errorf("register delivery metrics: %w", err)
			}
		}
	}
	st.Follow(s.notify) // the sender follows what the log commits
	return s, nil
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
	s.g.Go(s.loop)
	s.mu.Unlock()
	s.scan()
	return nil
}

// Close stops every outbox and waits for them; it saves the floors they
// moved. The log and the floors stay on disk: nothing is lost.
func (s *Sender) Close() {
	s.mu.Lock()
	if s.g.Closed() {
		s.mu.Unlock()
		return
	}
	s.g.Shut()
	s.stop()
	boxes := make([]*outbox, 0, len(s.boxes))
	for _, o := range s.boxes {
		boxes = append(boxes, o)
	}
	s.mu.Unlock()
	for _, o := range boxes {
		o.resetAll()
	}
	s.g.Close()
	for _, o := range boxes {
		o.saveFloors(context.Background())
	}
}

// notify hears of an entry of this node's log once it is on disk (the store
// calls it, store.Follow, and it never blocks): broadcast entries wake the
// lane's receivers, addressed ones their addressees.
func (s *Sender) notify(e store.OwnEntry) {
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
// receivers with a backlog and no running outbox: every RetryScan while
// some receiver is owed something or news came since the last look, and
// at rest twice as long after each look that found nobody owed, up to
// restScans times RetryScan.
func (s *Sender) loop() {
	wait := s.opts.RetryScan
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.kick:
			if wait != s.opts.RetryScan {
				wait = s.opts.RetryScan
				t.Reset(wait)
			}
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
			if s.scan() {
				wait = s.opts.RetryScan
			} else {
				wait = min(2*wait, restScans*s.opts.RetryScan)
			}
			t.Reset(wait)
		}
	}
}

// restScans bounds the scan's wait at rest, in RetryScans (see loop): a
// minute at the default.
const restScans = 12

// scan starts an outbox for every receiver with a backlog (and only for
// those: an idle receiver costs no goroutine). It reports whether some
// receiver was owed something.
func (s *Sender) scan() bool {
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
	owed := false
	for p, addr := range seen {
		if p == s.host.ID() || !s.owes(p, addr) {
			continue
		}
		owed = true
		if o := s.box(p); o != nil {
			o.wakeUp()
		}
	}
	return owed
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
		v := o.view(false)
		o.mu.Lock()
		defer o.mu.Unlock()
		for _, l := range Lanes {
			if o.lanes[l].owes(o.bcastHead(v, l), addressed) {
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
	o.retry.at = time.Time{}
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
	if s.g.Closed() || !s.started {
		return nil
	}
	o := s.boxes[p]
	if o == nil {
		o = newOutbox(s, p)
		s.boxes[p] = o
	}
	if o.running {
		o.pokes++
	} else {
		o.running = s.g.Go(o.run)
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
	ls.Floor, ls.Inflight, ls.Attempts, ls.LastError = st.floor, len(st.inflight), st.attempts, o.retry.lastErr
	if st.ackedAt > 0 {
		ls.AckedAt = time.Unix(0, st.ackedAt)
	}
	if time.Now().Before(o.retry.at) {
		ls.NextAttemptAt = o.retry.at
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

// Head is the last durable broadcast entry of a lane (0: none).
func (s *Sender) Head(l Lane) uint64 {
	if l < LaneResource || l > numLanes {
		return 0
	}
	return s.heads[l].Load()
}

// Acknowledge takes a receiver's word, given outside the stream, that it
// applied lane l through version `through` (a member's report of the
// decisions it applied from gossip): the floor moves as on a reply.
// The receiver's outbox is not started for it: the periodic scan starts
// it if the lane still owes something.
func (s *Sender) Acknowledge(p peer.ID, l Lane, through uint64) {
	s.mu.Lock()
	if s.g.Closed() || !s.started {
		s.mu.Unlock()
		return
	}
	o := s.boxes[p]
	if o == nil {
		o = newOutbox(s, p)
		s.boxes[p] = o
	}
	s.mu.Unlock()
	o.replies([]*pb.Reply{{Lane: uint32(l), Epoch: s.st.Epoch(), Through: through}})
}

// HoldsAtMost takes a receiver's word (its hello) that it holds nothing of
// this node's after version v: a floor above v is wrong (its store was
// restored or replaced), and the lane goes back to v and is sent again (the
// receiver's position reports, when the stream opens, refine it).
func (s *Sender) HoldsAtMost(p peer.ID, v uint64) {
	s.mu.Lock()
	if s.g.Closed() || !s.started {
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
	moved := map[Lane]laneActions{}
	o.mu.Lock()
	for _, l := range Lanes {
		if wrong[l] {
			if a := o.stepLocked(l, laneInput{ev: evHoldsAtMost, version: v}); a.rewound {
				moved[l] = a
			}
		}
	}
	o.mu.Unlock()
	for _, l := range Lanes {
		if a, ok := moved[l]; ok {
			o.count(a)
			o.traceFloor(l, a)
			s.log.Info("receiver holds less than it acknowledged (its store was restored or replaced); resending from what it holds",
				"peer", p, "lane", l, "floor", a.rewoundFrom, "holds", v)
		}
	}
	if len(moved) > 0 {
		o.saveFloors(s.ctx)
		s.Kick(p)
	}
}

// Streams: dialing, writing batches, reading replies. One outbound stream
// per (receiver, protocol); the pump is its only writer, readReplies its
// only reader.

// outStream is one outbound stream and what its writer and reader share.
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
		if errors.Is(err, ErrNoRoom) {
			o.failed(err) // the backoff, without an attempt: nothing was tried
			return
		}
		if err != nil {
			o.mu.Lock()
			o.stepLocked(p.lane, laneInput{ev: evOpenFailed}) // the entries after the floor were tried again
			o.mu.Unlock()
			o.s.m.failures.Inc()
			o.failed(err)
			return
		}
		b := sent{after: p.after, through: p.entries[len(p.entries)-1].Version, entries: len(p.entries), st: st}
		o.mu.Lock()
		a := o.stepLocked(p.lane, laneInput{ev: evSent, now: time.Now(), batch: b})
		o.mu.Unlock()
		if a.stale {
			// A reply moved the lane while the backlog was read: read again.
			return
		}
		var head uint64
		if p.lane == LaneDecision {
			head = o.s.opts.DecisionHead()
		}
		// One buffer serves every frame of the outbox: WriteRaw copies the
		// frame on (into the writer's buffer, or through yamux, which
		// copies what it sends) before it returns; only one pump runs.
		o.frame = encodeBatch(o.frame[:0], o.s.st.Epoch(), p.lane, p.after, p.entries, head)
		err = st.fw.WriteRaw(o.frame)
		if cap(o.frame) > 4<<20 {
			o.frame = nil // a rare large frame is not kept
		}
		if err != nil {
			o.streamDown(st, err)
			return
		}
		touched[st] = true
		o.s.m.batches.Inc()
		o.s.m.inflight.Inc()
		o.s.m.entries.Add(float64(len(p.entries)))
		if a.resend {
			o.s.m.resent.Add(float64(len(p.entries)))
		}
	}
}

// encodeBatch builds a Batch frame from the stored envelopes: compact,
// each envelope its body and leaf index, each tree's proof once
// (protocols.AppendCompact).
func encodeBatch(dst []byte, epoch uint64, lane Lane, after uint64, es []store.Entry, headSeq uint64) []byte {
	// What the compact frame takes: each body and leaf index, and each
	// tree's proof once (AppendCompactShapes); a full envelope's length
	// only for one without a shape.
	size := 32
	envs := make([][]byte, len(es))
	shapes := make([]*protocols.EnvelopeShape, len(es))
	var sig []byte
	for i, e := range es {
		if e.Shape == nil {
			size += len(e.Env) + 4
		} else {
			c, esig := protocols.CompactCost(e.Env, e.Shape, sig)
			size, sig = size+c, esig
		}
		envs[i], shapes[i] = e.Env, e.Shape
	}
	b := slices.Grow(dst, size)
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, epoch)
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(lane))
	if after > 0 {
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, after)
	}
	if headSeq > 0 {
		b = protowire.AppendTag(b, 5, protowire.VarintType)
		b = protowire.AppendVarint(b, headSeq)
	}
	return protocols.AppendCompactShapes(b, envs, shapes)
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
	dial, err := o.room()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(o.s.ctx, o.s.opts.DialTimeout)
	defer cancel()
	// The outbox keeps its own capped backoff; the swarm's (up to five
	// minutes after repeated failures) would hold a healed link shut.
	ctx = network.WithForceDirectDial(ctx, "ferry delivery")
	if dial {
		// One dial for the room Room let go, and the stream over what it
		// opened: a stream that dials would dial again, outside the bound,
		// if that connection closed before the stream opened (the keeper
		// closing a connection that carries nothing yet to make room).
		err := o.s.host.Connect(ctx, peer.AddrInfo{ID: o.peer})
		if o.s.opts.Dialed != nil {
			// The dial has ended: its room is the connection's now, or
			// free again.
			o.s.opts.Dialed(o.peer)
		}
		if err != nil {
			return nil, fmt.Errorf("open %s to %s: %w", id, o.peer, err)
		}
	}
	s, err := o.s.host.NewStream(network.WithNoDial(ctx, "ferry delivery: over an open connection"), o.peer, id)
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
	if !o.s.g.Go(func() { o.readReplies(st) }) {
		_ = s.Reset()
		return nil, errors.New("sender closed")
	}
	o.mu.Lock()
	o.streams[id] = st
	o.mu.Unlock()
	if o.s.ctx.Err() != nil {
		// Close cancelled the context before it reset the streams it
		// found; this one may have been listed after: its reader returns.
		_ = s.Reset()
	}
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
			o.replies(rs)
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

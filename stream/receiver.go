package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/inbound"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// Inbound is one verified change handed to a Handler.
type Inbound struct {
	From     peer.ID // the stream's remote peer (for deliveries, also the origin)
	Protocol protocol.ID
	Origin   peer.ID // who signed the body
	Body     *pb.Body
	Raw      []byte // the envelope as received, stored verbatim (nil: EnvelopeRaw)
	Hash     uint64 // store.BodyHash of the body
	Lane     Lane
	// Prepared is what the handler's Prepare computed, if it has one.
	Prepared any
	// Gossip: it came in a news on the decisions topic (spread), which asks
	// for a gap itself once it stays (news may arrive out of order), so the
	// handler should not ask at once.
	Gossip bool

	part *store.PartLeaf // the part it came in (Raw nil), if it did
}

// EnvelopeRaw is the change's envelope, self-contained and encoded: as it
// came, or, for a change that came in a part of its tree (one proof for
// several changes), rebuilt from the part once.
func (in *Inbound) EnvelopeRaw() []byte {
	if in.Raw == nil && in.part != nil {
		in.Raw = in.part.Envelope()
	}
	return in.Raw
}

// AppendTo logs the change in tx as received (store.Txn.AppendReceived); a
// change that came in a part goes as a leaf of it, so that the store keeps
// the part as it came (store.Txn.AppendReceivedPart).
func (in *Inbound) AppendTo(tx *store.Txn) (uint64, error) {
	if in.Raw == nil && in.part != nil {
		return tx.AppendReceivedPart(in.Body, in.Hash, *in.part)
	}
	return tx.AppendReceived(in.Body, in.Hash, in.Raw)
}

// InboundOf builds the Inbound of a change that arrived outside a
// delivery stream (catch-up): env must have been verified against origin.
func InboundOf(env *pb.Envelope, body *pb.Body, origin peer.ID) (*Inbound, error) {
	raw, err := proto.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("encode envelope: %w", err)
	}
	return &Inbound{From: origin, Origin: origin, Body: body, Raw: raw, Hash: store.BodyHash(env.Body),
		Lane: LaneOf(body)}, nil
}

// Preparer is an optional part of a Handler: Prepare runs on the stream's
// reader goroutine before the batch is ordered, so work that needs no store
// (decoding, validation, encoding events) stays off the store's single
// writer.
type Preparer interface {
	Prepare(in *Inbound)
}

// Handler is the service side of inbound deliveries.
type Handler interface {
	// Admit runs before anything is written. An error resets the stream:
	// use it for peers that may not send this change at all.
	Admit(in *Inbound) error
	// Apply runs inside the store transaction that applies the batch and
	// moves the lane's position. A *RejectError means the change is
	// authentic but refused for good: its writes are rolled back, the lane
	// moves on and the sender is told. Any other error fails the whole
	// batch (nothing is answered; it comes again).
	Apply(tx *store.Txn, in *Inbound) (pb.AckStatus, error)
}

// EquivocationPrefix starts the reason of every equivocation refusal (and
// of its record at the sender, store.Txn.SetRefused), so the reason alone
// tells an equivocation from other refusals.
const EquivocationPrefix = "equivocation:"

// RejectError refuses an authentic change for good.
type RejectError struct {
	Reason string
	// Keep leaves the handler's writes in place (bookkeeping that must
	// record the refused change, such as an origin's chain mark); by
	// default they are rolled back.
	Keep bool
	// Equivocation: this node holds the same (origin, version) with other
	// content.
	Equivocation bool
}

func (e *RejectError) Error() string { return e.Reason }

// Reject builds a RejectError whose writes are rolled back.
func Reject(format string, args ...any) error {
	return &RejectError{Reason: fmt.Sprintf(format, args...)}
}

// RejectKeeping builds a RejectError that keeps the handler's writes.
func RejectKeeping(format string, args ...any) error {
	return &RejectError{Reason: fmt.Sprintf(format, args...), Keep: true}
}

// CheckHeld answers a change that may be held already: DUPLICATE when this
// node holds it with the same content, an equivocation refusal when it holds
// another change under the same (origin, version), and held=false when it
// does not hold it.
func CheckHeld(tx *store.Txn, origin peer.ID, version, hash uint64) (held bool, err error) {
	e, ok, err := tx.HeldOrigin(origin, version)
	if err != nil || !ok {
		return false, err
	}
	if e.Hash != 0 && e.Hash != hash {
		return true, &RejectError{Equivocation: true,
			Reason: fmt.Sprintf("%s this node holds another change of %s under version %d", EquivocationPrefix, origin, version)}
	}
	return true, nil
}

// Snapshots lets a service turn a new member's decision lane into a
// snapshot fetch: Want reports, for the decision lane of sender (whose last
// decision sequence is head), that this node fetches a snapshot first; it
// calls done once the snapshot was taken, and the receiver then reports its
// new position to sender (Report).
type Snapshots interface {
	Want(sender peer.ID, head uint64, done func()) bool
}

// ReceiverOptions configure a Receiver.
type ReceiverOptions struct {
	MaxMessageBytes int
	Logger          *slog.Logger
	Registerer      prometheus.Registerer
	// MaxHeldBytes bounds out-of-order batches held per (sender, lane).
	MaxHeldBytes int
	// Snapshots, if set, may hold a new member's decision lane.
	Snapshots Snapshots
	// Tracer, if set, hears of each change applied (for operators).
	Tracer Tracer
	// Admit, if set, decides at open whether a peer may send on a delivery
	// protocol at all (partners, members); a refused stream is reset
	// before anything is read. Handler.Admit still checks every change.
	Admit func(p peer.ID, id protocol.ID) bool
}

// DefaultMaxHeldBytes bounds what one lane holds while it waits for an
// earlier batch that travels on another stream.
const DefaultMaxHeldBytes = 64 << 20

// Catching up: a batch whose last change was made at its origin more than
// behindAge ago comes from a backlog (a partner back after a while, a new
// member), and the receiver reports itself catching up (CatchingUp) until
// behindHold after the last such batch. Clocks of nodes may differ a little;
// those who act on it bound what they do (eventstream.Options.MaxYield).
const (
	behindAge  = time.Second
	behindHold = 250 * time.Millisecond
)

// Receiver serves the delivery protocols.
type Receiver struct {
	host     host.Host
	st       *store.Store
	handler  Handler
	verifier *protocols.Verifier
	opts     ReceiverOptions
	log      *slog.Logger
	ctx      context.Context
	cancel   context.CancelFunc
	g        lifecycle.Group // every delivery stream handler

	mu      sync.Mutex
	lanes   map[laneKey]*sequencer
	streams map[*inStream]struct{}

	received *prometheus.CounterVec
	// behind: until when (unix nanoseconds) this node catches up on a
	// backlog (CatchingUp).
	behind atomic.Int64
}

// CatchingUp reports whether this node is applying a backlog: a batch of
// changes made long ago at their origin came in the last moment.
func (r *Receiver) CatchingUp() bool { return time.Now().UnixNano() < r.behind.Load() }

// noteAge marks the receiver catching up when a batch's last change is old.
func (r *Receiver) noteAge(b *batch) {
	now := time.Now().UnixNano()
	if last := b.ins[len(b.ins)-1].Body.CreatedAtUnixNano; last > 0 && now-last > int64(behindAge) {
		r.behind.Store(now + int64(behindHold))
	}
}

type laneKey struct {
	peer peer.ID
	lane Lane
}

// sequencer orders one sender lane. durable is the position committed;
// next is the last entry submitted (>= durable). submitMu serialises the
// submissions of the lane (several streams may carry it) and may be held
// while the store's queue is full; mu guards the state and is never held
// across a blocking call, so commit callbacks can always take it.
type sequencer struct {
	submitMu  sync.Mutex
	mu        sync.Mutex
	loaded    bool
	epoch     uint64
	durable   uint64
	next      uint64
	held      map[uint64]*batch // by after
	heldBytes int
	// waiters are copies of submitted, uncommitted batches that came on
	// another stream: they are answered when the commit lands.
	waiters []waiter
}

type waiter struct {
	st      *inStream
	through uint64
}

// batch is a decoded, verified Batch frame.
type batch struct {
	st      *inStream
	lane    Lane
	epoch   uint64
	after   uint64
	through uint64
	headSeq uint64
	ins     []*Inbound
	bytes   int
}

// NewReceiver builds a Receiver; Start registers its protocol handlers.
func NewReceiver(h host.Host, st *store.Store, v *protocols.Verifier, handler Handler, o ReceiverOptions) (*Receiver, error) {
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = protocols.DefaultMaxMessageBytes
	}
	if o.MaxHeldBytes == 0 {
		o.MaxHeldBytes = DefaultMaxHeldBytes
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Receiver{host: h, st: st, handler: handler, verifier: v, opts: o, log: o.Logger,
		ctx: ctx, cancel: cancel, lanes: map[laneKey]*sequencer{}, streams: map[*inStream]struct{}{},
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "delivery", Name: "received_total",
			Help: "Inbound changes by outcome."}, []string{"outcome"})}
	for _, o := range []string{"applied", "duplicate", "rejected", "equivocation", "held", "dropped", "malformed", "refused", "failed"} {
		r.received.WithLabelValues(o)
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(r.received); err != nil {
			cancel()
			return nil, fmt.Errorf("register receiver metrics: %w", err)
		}
	}
	return r, nil
}

// Start registers the stream handlers of every delivery protocol.
func (r *Receiver) Start() {
	for _, p := range protocols.DeliveryProtocols {
		var admit inbound.Admit
		if r.opts.Admit != nil {
			admit = func(remote peer.ID) bool { return r.opts.Admit(remote, p) }
		}
		inbound.Handle(r.host, &r.g, p, protocols.ServiceDelivery, 256<<10, admit, r.log, r.serve)
	}
}

// Close unregisters the handlers, refuses new streams, resets the streams
// being served and waits for their handlers.
func (r *Receiver) Close() {
	for _, p := range protocols.DeliveryProtocols {
		r.host.RemoveStreamHandler(p)
	}
	r.g.Shut()
	r.mu.Lock()
	r.cancel()
	for in := range r.streams {
		_ = in.s.Reset()
	}
	r.mu.Unlock()
	r.g.Close()
}

// inStream is one inbound stream: its reader is the handler goroutine and a
// writer goroutine answers on the same stream.
type inStream struct {
	s       network.Stream
	remote  peer.ID
	proto   protocol.ID
	mu      sync.Mutex
	replies []*pb.Reply
	wake    chan struct{}
	failed  chan struct{} // closed when the stream must be reset
	failErr error
	once    sync.Once
	owed    sync.WaitGroup // batches submitted or waiting and not yet answered
}

func (in *inStream) fail(err error) {
	in.once.Do(func() {
		in.failErr = err
		close(in.failed)
		_ = in.s.Reset() // wakes the reader
	})
}

func (in *inStream) reply(rs ...*pb.Reply) {
	in.mu.Lock()
	in.replies = append(in.replies, rs...)
	in.mu.Unlock()
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// Report sends p, on the streams it has open to this node, this node's
// position in each of its lanes (after a snapshot moved the decision lane).
func (r *Receiver) Report(p peer.ID) {
	rs, err := r.positions(p)
	if err != nil {
		r.log.Warn("read positions", "peer", p, "err", err)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for in := range r.streams {
		if in.remote == p {
			in.reply(rs...)
			return
		}
	}
}

// positions are this node's reports of how far it holds each of p's lanes.
func (r *Receiver) positions(p peer.ID) ([]*pb.Reply, error) {
	out := make([]*pb.Reply, 0, numLanes)
	for _, l := range Lanes {
		pos, err := r.st.Position(p, uint8(l))
		if err != nil {
			return nil, err
		}
		out = append(out, &pb.Reply{Lane: uint32(l), Epoch: pos.Epoch, Through: pos.Version, Report: true})
	}
	return out, nil
}

func (r *Receiver) serve(s network.Stream) error {
	in := &inStream{s: s, remote: s.Conn().RemotePeer(), proto: s.Protocol(),
		wake: make(chan struct{}, 1), failed: make(chan struct{})}
	r.mu.Lock()
	if err := r.ctx.Err(); err != nil {
		// Close reset the streams it found before this one was listed.
		r.mu.Unlock()
		return err
	}
	r.streams[in] = struct{}{}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.streams, in)
		r.mu.Unlock()
	}()
	// First, where this node stands in each of the sender's lanes.
	reports, err := r.positions(in.remote)
	if err != nil {
		return fmt.Errorf("read positions: %w", err)
	}
	in.reply(reports...)
	writerDone := make(chan error, 1)
	stop := make(chan struct{})
	go func() { writerDone <- r.writeReplies(in, stop) }()

	err = r.readLoop(in)
	if err == nil {
		// Clean EOF: answer what is owed, then close.
		owed := make(chan struct{})
		go func() { in.owed.Wait(); close(owed) }()
		select {
		case <-owed:
		case <-time.After(10 * time.Second):
			err = errors.New("gave up waiting to answer owed batches")
		case <-in.failed:
			err = in.failErr
		case <-r.ctx.Done():
			err = r.ctx.Err()
		}
	}
	close(stop)
	if werr := <-writerDone; err == nil && werr != nil {
		err = werr
	}
	return err
}

func (r *Receiver) readLoop(in *inStream) error {
	fr := protocols.NewFrameReader(in.s, r.opts.MaxMessageBytes+protocols.FrameOverhead).Account(in.s.Scope())
	defer fr.Release()
	for {
		_ = in.s.SetReadDeadline(time.Now().Add(protocols.IdleTimeout))
		frame, err := fr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			r.received.WithLabelValues("malformed").Inc()
			return fmt.Errorf("read batch: %w", err)
		}
		select {
		case <-in.failed:
			return in.failErr
		case <-r.ctx.Done():
			return r.ctx.Err()
		default:
		}
		// The batch's own copy of the frame: its bodies point into it
		// (protocols.Part.Kept) while the reader's buffer takes the next.
		b, err := r.open(in, append([]byte(nil), frame...))
		if err != nil {
			r.received.WithLabelValues("refused").Inc()
			return err
		}
		if len(b.ins) == 0 {
			continue
		}
		r.noteAge(b)
		if err := r.sequence(b); err != nil {
			return err
		}
	}
}

// decodeBatch reads a Batch frame, keeping each envelope's and tree
// proof's bytes as they came.
func decodeBatch(frame []byte) (epoch uint64, lane Lane, after, headSeq uint64, envs, trees [][]byte, err error) {
	for len(frame) > 0 {
		num, typ, n := protowire.ConsumeTag(frame)
		if n < 0 {
			return 0, 0, 0, 0, nil, nil, protowire.ParseError(n)
		}
		frame = frame[n:]
		switch {
		case (num == 4 || num == 6) && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(frame)
			if n < 0 {
				return 0, 0, 0, 0, nil, nil, protowire.ParseError(n)
			}
			if num == 4 {
				envs = append(envs, v)
			} else {
				trees = append(trees, v)
			}
			frame = frame[n:]
		case typ == protowire.VarintType && num >= 1 && num <= 5:
			v, n := protowire.ConsumeVarint(frame)
			if n < 0 {
				return 0, 0, 0, 0, nil, nil, protowire.ParseError(n)
			}
			switch num {
			case 1:
				epoch = v
			case 2:
				lane = Lane(v)
			case 3:
				after = v
			case 5:
				headSeq = v
			}
			frame = frame[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, frame)
			if n < 0 {
				return 0, 0, 0, 0, nil, nil, protowire.ParseError(n)
			}
			frame = frame[n:]
		}
	}
	return epoch, lane, after, headSeq, envs, trees, nil
}

// opened is one envelope of a batch, verified: its body, signer, leaf hash
// and its encoding as a self-contained envelope (what is stored).
type opened struct {
	body   *pb.Body
	origin peer.ID
	leaf   [32]byte
	raw    []byte
	part   *store.PartLeaf // instead of raw: a leaf of a part
}

// openEnvelopes verifies a batch's envelopes: compact ones (Envelope.tree
// names one of the batch's tree proofs) one tree at a time, one root and
// one signature per tree; self-contained ones alone. The result is in the
// batch's order.
func (r *Receiver) openEnvelopes(envs, trees [][]byte) ([]opened, error) {
	out := make([]opened, len(envs))
	parts := make([]*protocols.Part, len(trees))
	// where a compact envelope is in its part: tree is 1-based (0: a
	// self-contained envelope, opened already).
	type at struct{ tree, i int }
	where := make([]at, len(envs))
	for j, raw := range envs {
		shape, ok := protocols.ParseEnvelope(raw, false)
		if !ok {
			return nil, inbound.Refuse("malformed envelope", nil)
		}
		if shape.Tree == 0 {
			env := &pb.Envelope{}
			if err := proto.Unmarshal(raw, env); err != nil {
				return nil, inbound.Refuse("malformed envelope", err)
			}
			body, origin, leaf, err := r.verifier.OpenLeaf(env)
			if err != nil {
				return nil, inbound.Refuse("bad envelope", err)
			}
			out[j] = opened{body: body, origin: origin, leaf: leaf, raw: raw}
			continue
		}
		if int(shape.Tree) > len(trees) {
			return nil, inbound.Refuse(fmt.Sprintf("envelope of tree %d in a batch of %d tree proofs", shape.Tree, len(trees)), nil)
		}
		if shape.Size != 0 || len(shape.Sig) > 0 || shape.PathLen > 0 {
			return nil, inbound.Refuse("an envelope both compact and self-contained (a tree and its own size, path or signature)", nil)
		}
		p := parts[shape.Tree-1]
		if p == nil {
			size, sig, hashes, err := protocols.ParseTreeProof(trees[shape.Tree-1])
			if err != nil {
				return nil, inbound.Refuse("malformed tree proof", err)
			}
			// Kept: the frame is the batch's own copy (readLoop), never
			// written again, so the bodies may point into it.
			p = &protocols.Part{Size: size, Sig: sig, Proof: hashes, Kept: true}
			parts[shape.Tree-1] = p
		}
		where[j] = at{int(shape.Tree), len(p.Index)}
		p.Index = append(p.Index, shape.Leaf)
		p.Bodies = append(p.Bodies, shape.Body)
	}
	done := make([]*protocols.OpenedPart, len(parts))
	for i, p := range parts {
		if p == nil {
			return nil, inbound.Refuse(fmt.Sprintf("tree proof %d: no envelope refers to it", i+1), nil)
		}
		o, err := r.verifier.OpenPart(p)
		if err != nil {
			return nil, inbound.Refuse(fmt.Sprintf("bad envelopes of tree proof %d", i+1), err)
		}
		done[i] = o
	}
	leaves := make([]store.PartLeaf, len(where)) // the leaves as the store takes them, one allocation
	for j, w := range where {
		if w.tree == 0 {
			continue
		}
		p, o := parts[w.tree-1], done[w.tree-1]
		leaves[j] = store.PartLeaf{Part: p, Opened: o, I: w.i}
		out[j] = opened{body: o.Bodies[w.i], origin: o.Origin, leaf: o.Leaves[w.i], part: &leaves[j]}
	}
	return out, nil
}

// open decodes and verifies a batch: every envelope signed by the sender,
// of a kind this protocol carries and of the batch's lane, in increasing
// versions after the batch's `after`, addressed to this node or to any;
// then each is admitted and prepared by the service. Any failure refuses
// the whole frame (the stream is reset; nothing is written).
func (r *Receiver) open(in *inStream, frame []byte) (*batch, error) {
	epoch, lane, after, headSeq, envs, trees, err := decodeBatch(frame)
	if err != nil {
		return nil, inbound.Refuse("malformed batch", err)
	}
	if lane < LaneResource || lane > numLanes {
		return nil, inbound.Refuse(fmt.Sprintf("unknown lane %d", lane), nil)
	}
	if len(envs) == 0 {
		return nil, inbound.Refuse("empty batch", nil)
	}
	oks, err := r.openEnvelopes(envs, trees)
	if err != nil {
		return nil, err
	}
	b := &batch{st: in, lane: lane, epoch: epoch, after: after, headSeq: headSeq, bytes: len(frame)}
	prev := after
	for _, e := range oks {
		body := e.body
		if e.origin != in.remote {
			return nil, inbound.Refuse(fmt.Sprintf("change signed by %s, not by the sender", e.origin), nil)
		}
		if !protocols.KindAllowed(in.proto, body.Kind) {
			return nil, inbound.Refuse(fmt.Sprintf("kind %s not allowed on %s", body.Kind, in.proto), nil)
		}
		if LaneOf(body) != lane {
			return nil, inbound.Refuse(fmt.Sprintf("kind %s in lane %s", body.Kind, lane), nil)
		}
		if body.OriginVersion <= prev {
			return nil, inbound.Refuse(fmt.Sprintf("version %d out of order (after %d)", body.OriginVersion, prev), nil)
		}
		prev = body.OriginVersion
		if len(body.To) > 0 && peer.ID(body.To) != r.host.ID() {
			return nil, inbound.Refuse("change addressed to another peer", nil)
		}
		m := &Inbound{From: in.remote, Protocol: in.proto, Origin: e.origin, Body: body, Raw: e.raw,
			Hash: store.HashOfLeaf(e.leaf), Lane: lane, part: e.part}
		if err := r.handler.Admit(m); err != nil {
			return nil, inbound.Refuse("not admitted", err)
		}
		b.ins = append(b.ins, m)
	}
	b.through = prev
	if p, ok := r.handler.(Preparer); ok {
		for _, m := range b.ins {
			p.Prepare(m)
		}
	}
	return b, nil
}

func (r *Receiver) seqFor(p peer.ID, lane Lane) *sequencer {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := laneKey{p, lane}
	s := r.lanes[key]
	if s == nil {
		s = &sequencer{held: map[uint64]*batch{}}
		r.lanes[key] = s
	}
	return s
}

func (r *Receiver) sequence(b *batch) error {
	if b.lane == LaneDecision && b.headSeq > 0 && r.opts.Snapshots != nil && b.after == 0 &&
		r.opts.Snapshots.Want(b.st.remote, b.headSeq, func() { r.Report(b.st.remote) }) {
		b.st.reply(&pb.Reply{Lane: uint32(b.lane), WantSnapshot: true})
		return nil
	}
	sq := r.seqFor(b.st.remote, b.lane)
	sq.submitMu.Lock()
	defer sq.submitMu.Unlock()
	ready, dup, err := r.order(sq, b)
	if err != nil {
		return err
	}
	if dup != nil {
		dup.Refused = r.equivocations(b)
		b.st.reply(dup)
		return nil
	}
	for _, x := range ready {
		r.submit(sq, x)
	}
	return nil
}

// order decides, under the state lock, what to do with a batch: answer it
// (all held here already), hold it (an earlier one travels on another
// stream), or return it and the held ones it unblocks for submission.
func (r *Receiver) order(sq *sequencer, b *batch) ([]*batch, *pb.Reply, error) {
	sq.mu.Lock()
	defer sq.mu.Unlock()
	if !sq.loaded {
		pos, err := r.st.Position(b.st.remote, uint8(b.lane))
		if err != nil {
			return nil, nil, fmt.Errorf("read position: %w", err)
		}
		sq.epoch, sq.durable, sq.next, sq.loaded = pos.Epoch, pos.Version, pos.Version, true
	}
	if b.epoch != sq.epoch {
		// The sender's store is another incarnation: its lanes start over.
		if sq.epoch != 0 {
			r.log.Info("sender store is a new incarnation; its lanes start over", "peer", b.st.remote, "lane", b.lane, "epoch", b.epoch)
		}
		sq.epoch, sq.durable, sq.next = b.epoch, 0, 0
		sq.dropHeld()
	}
	switch {
	case b.through <= sq.durable:
		r.received.WithLabelValues("duplicate").Add(float64(len(b.ins)))
		return nil, &pb.Reply{Lane: uint32(b.lane), Epoch: sq.epoch, Through: sq.durable}, nil
	case b.through <= sq.next:
		// Submitted, not yet committed: answer this copy when it lands.
		b.st.owed.Add(1)
		sq.waiters = append(sq.waiters, waiter{st: b.st, through: b.through})
		return nil, nil, nil
	case b.after > sq.next:
		if old, ok := sq.held[b.after]; ok {
			if old.through >= b.through {
				return nil, nil, nil // the held copy covers it; it is answered when applied
			}
			sq.heldBytes -= old.bytes
			old.st.owed.Done()
		}
		if sq.heldBytes+b.bytes > r.opts.MaxHeldBytes {
			r.received.WithLabelValues("dropped").Add(float64(len(b.ins)))
			return nil, nil, nil // no answer: the sender resends
		}
		b.st.owed.Add(1)
		sq.held[b.after] = b
		sq.heldBytes += b.bytes
		r.received.WithLabelValues("held").Add(float64(len(b.ins)))
		return nil, nil, nil
	}
	b.st.owed.Add(1)
	ready := []*batch{b}
	sq.next = b.through
	for {
		var nxt *batch
		for after, h := range sq.held {
			if after > sq.next {
				continue
			}
			delete(sq.held, after)
			sq.heldBytes -= h.bytes
			if h.through <= sq.next {
				// Covered by what is submitted: answer when it lands.
				sq.waiters = append(sq.waiters, waiter{st: h.st, through: h.through})
				continue
			}
			nxt = h
			break
		}
		if nxt == nil {
			break
		}
		// Owed was counted when it was held.
		ready = append(ready, nxt)
		sq.next = nxt.through
	}
	return ready, nil, nil
}

// dropHeld forgets held batches; callers hold sq.mu.
func (sq *sequencer) dropHeld() {
	for _, h := range sq.held {
		h.st.owed.Done()
	}
	clear(sq.held)
	sq.heldBytes = 0
}

// equivocations checks, off the store's writer, the entries of a batch
// this node holds already: one held with other content is refused.
func (r *Receiver) equivocations(b *batch) []*pb.Refusal {
	var out []*pb.Refusal
	for _, m := range b.ins {
		e, err := r.st.OriginEntry(m.Origin, m.Body.OriginVersion)
		if err != nil || e.Hash == 0 || e.Hash == m.Hash {
			continue
		}
		out = append(out, r.equivocation(m))
	}
	return out
}

func (r *Receiver) equivocation(m *Inbound) *pb.Refusal {
	r.received.WithLabelValues("equivocation").Inc()
	reason := fmt.Sprintf("%s this node holds another change of %s under version %d", EquivocationPrefix, m.Origin, m.Body.OriginVersion)
	r.log.Error("refused a change: its sender signed another change under the same version before (was the sender's store restored from an older copy while its clock went back?)",
		"peer", m.From, "version", m.Body.OriginVersion, "kind", m.Body.Kind)
	return &pb.Refusal{Version: m.Body.OriginVersion, Reason: reason, Equivocation: true}
}

// submit queues the transaction that applies a batch and moves the lane's
// position. The caller holds sq.submitMu and has counted the batch as owed.
func (r *Receiver) submit(sq *sequencer, b *batch) {
	from, lane, epoch := b.st.remote, b.lane, b.epoch
	var refused []*pb.Refusal
	var counts Counts
	r.st.Submit(r.ctx, func(tx *store.Txn) error {
		refused, counts = refused[:0], Counts{}
		// A received resource change writes about four keys (the chain,
		// the version counter, the origin index, the row) and registers
		// two hooks (its event, the tracer's), and logs one change.
		tx.Reserve(4*len(b.ins)+2, 2*len(b.ins), len(b.ins))
		pos, err := tx.Position(from, uint8(lane))
		if err != nil {
			return err
		}
		held := pos.Version
		if pos.Epoch != epoch {
			held = 0
		}
		if held < b.after {
			return fmt.Errorf("lane %s of %s out of order: holds %d, batch after %d", lane, from, held, b.after)
		}
		for _, m := range b.ins {
			v := m.Body.OriginVersion
			if v <= held {
				if _, err := CheckHeld(tx, m.Origin, v, m.Hash); err != nil {
					var rej *RejectError
					if !errors.As(err, &rej) {
						return err
					}
					refused = append(refused, r.equivocation(m))
				}
				counts[Duplicate]++
				continue
			}
			out, rej, err := ApplyOne(tx, m, r.handler.Apply)
			if err != nil {
				return err
			}
			if out == Applied && r.opts.Tracer != nil {
				r.opts.Tracer.Applied(tx, m)
			}
			counts[out]++
			switch {
			case rej == nil:
			case rej.Equivocation:
				refused = append(refused, r.equivocation(m))
			default:
				refused = append(refused, &pb.Refusal{Version: v, Reason: clip(rej.Reason)})
				r.log.Warn("change refused", "peer", from, "origin", m.Origin, "kind", m.Body.Kind, "version", v, "reason", rej.Reason)
			}
		}
		if b.through > held {
			tx.SetPosition(from, uint8(lane), &storepb.Position{Epoch: epoch, Version: b.through})
		}
		return nil
	}, func(err error) {
		defer b.st.owed.Done()
		sq.mu.Lock()
		var answer []waiter
		if err != nil {
			sq.loaded = false
			sq.dropHeld()
			answer = sq.waiters
			sq.waiters = nil
		} else {
			if sq.epoch == epoch && b.through > sq.durable {
				sq.durable = b.through
			}
			kept := sq.waiters[:0]
			for _, w := range sq.waiters {
				if w.through <= sq.durable {
					answer = append(answer, w)
				} else {
					kept = append(kept, w)
				}
			}
			sq.waiters = kept
		}
		durable := sq.durable
		sq.mu.Unlock()
		for _, w := range answer {
			if err == nil {
				w.st.reply(&pb.Reply{Lane: uint32(lane), Epoch: epoch, Through: durable})
			}
			w.st.owed.Done()
		}
		if err != nil {
			r.log.Warn("apply failed; the sender will resend", "peer", from, "lane", lane, "through", b.through, "err", err)
			r.received.WithLabelValues("failed").Add(float64(len(b.ins)))
			b.st.fail(fmt.Errorf("apply batch through %d: %w", b.through, err))
			return
		}
		r.received.WithLabelValues("applied").Add(float64(counts[Applied]))
		r.received.WithLabelValues("duplicate").Add(float64(counts[Duplicate]))
		r.received.WithLabelValues("rejected").Add(float64(counts[Refused]))
		b.st.reply(&pb.Reply{Lane: uint32(lane), Epoch: epoch, Through: b.through, Refused: refused})
	})
}

// clip bounds a refusal's reason so a reply of many stays small.
func clip(s string) string {
	if len(s) > 256 {
		return s[:256]
	}
	return s
}

// writeReplies answers on the stream, flushing when no more are queued.
func (r *Receiver) writeReplies(in *inStream, stop <-chan struct{}) error {
	fw := protocols.NewFrameWriter(in.s, protocols.MaxReplyBytes)
	for {
		in.mu.Lock()
		batch := in.replies
		in.replies = nil
		in.mu.Unlock()
		if len(batch) > 0 {
			_ = in.s.SetWriteDeadline(time.Now().Add(protocols.WriteTimeout))
			for _, a := range batch {
				if err := fw.Write(a); err != nil {
					in.fail(err)
					return err
				}
			}
			if err := fw.Flush(); err != nil {
				in.fail(err)
				return err
			}
			continue
		}
		select {
		case <-in.wake:
		case <-stop:
			in.mu.Lock()
			left := len(in.replies)
			in.mu.Unlock()
			if left > 0 {
				continue
			}
			return nil
		}
	}
}

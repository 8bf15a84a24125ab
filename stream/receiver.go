package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// Inbound is one verified message handed to a Handler.
type Inbound struct {
	From     peer.ID // the stream's remote peer
	Protocol protocol.ID
	Origin   peer.ID // who signed the body
	Body     *pb.Body
	Envelope *pb.Envelope
	Lane     Lane
	// Prepared is what the handler's Prepare computed, if it has one.
	Prepared any
}

// Preparer is an optional part of a Handler: Prepare runs on the stream's
// reader goroutine before the message is ordered, so work that needs no
// store (decoding, validation, encoding events) stays off the store's
// single writer.
type Preparer interface {
	Prepare(in *Inbound)
}

// Handler is the service side of inbound deliveries.
type Handler interface {
	// Admit runs before anything is written. An error resets the stream:
	// use it for peers that may not send this message at all.
	Admit(in *Inbound) error
	// Apply runs inside the store transaction that also advances the link.
	// A *RejectError means the message is authentic but refused for good: its
	// writes are rolled back, the link advances and the sender is told. Any
	// other error fails the transaction (nothing is acked; it comes again).
	Apply(tx *store.Txn, in *Inbound) (pb.AckStatus, error)
}

// RejectError refuses an authentic message for good.
type RejectError struct {
	Reason string
	// Keep leaves the handler's writes in place (bookkeeping that must
	// record the refused message, such as an origin's chain mark); by
	// default they are rolled back.
	Keep bool
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

// ReceiverOptions configure a Receiver.
type ReceiverOptions struct {
	MaxMessageBytes int
	Logger          *slog.Logger
	Registerer      prometheus.Registerer
	// MaxHeldBytes bounds out-of-order messages held per (sender, lane).
	MaxHeldBytes int
}

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
	wg       sync.WaitGroup

	mu      sync.Mutex
	lanes   map[laneKey]*sequencer
	streams map[*inStream]struct{}

	received *prometheus.CounterVec
}

type laneKey struct {
	peer peer.ID
	lane Lane
}

// sequencer orders one sender lane. next is the next link seq to submit;
// durable is the last one committed. submitMu serialises the submissions
// of the lane (several streams may carry it) and may be held while the
// store's queue is full; mu guards the state and is never held across a
// blocking call, so commit callbacks can always take it.
type sequencer struct {
	submitMu  sync.Mutex
	mu        sync.Mutex
	loaded    bool
	epoch     uint64
	next      uint64
	durable   uint64
	held      map[uint64]*heldMsg
	heldBytes int
	// waiters are later copies of submitted, uncommitted messages, which
	// came on another stream: they are answered when the commit lands.
	waiters map[uint64][]waiter
}

type waiter struct {
	st *inStream
	id uint64
}

type heldMsg struct {
	in    *Inbound
	msg   *pb.Message
	st    *inStream
	bytes int
}

// NewReceiver builds a Receiver; Start registers its protocol handlers.
func NewReceiver(h host.Host, st *store.Store, v *protocols.Verifier, handler Handler, o ReceiverOptions) *Receiver {
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = protocols.DefaultMaxMessageBytes
	}
	if o.MaxHeldBytes == 0 {
		o.MaxHeldBytes = 64 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Receiver{host: h, st: st, handler: handler, verifier: v, opts: o, log: o.Logger,
		ctx: ctx, cancel: cancel, lanes: map[laneKey]*sequencer{}, streams: map[*inStream]struct{}{},
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "delivery", Name: "received_total",
			Help: "Inbound delivery messages by outcome."}, []string{"outcome"})}
	if o.Registerer != nil {
		_ = o.Registerer.Register(r.received)
	}
	return r
}

// Start registers the stream handlers of every delivery protocol.
func (r *Receiver) Start() {
	for _, p := range protocols.DeliveryProtocols {
		Handle(r.host, p, protocols.ServiceDelivery, 256<<10, r.log, func(s network.Stream) error {
			r.wg.Add(1)
			defer r.wg.Done()
			return r.serve(s)
		})
	}
}

// Close unregisters the handlers, resets the streams being served and
// waits for their goroutines.
func (r *Receiver) Close() {
	for _, p := range protocols.DeliveryProtocols {
		r.host.RemoveStreamHandler(p)
	}
	r.mu.Lock()
	r.cancel()
	for in := range r.streams {
		_ = in.s.Reset()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// inStream is one inbound stream: its reader is the handler goroutine and an
// ack writer goroutine answers on the same stream.
type inStream struct {
	s       network.Stream
	remote  peer.ID
	proto   protocol.ID
	mu      sync.Mutex
	acks    []*pb.Ack
	wake    chan struct{}
	failed  chan struct{} // closed when the stream must be reset
	failErr error
	once    sync.Once
	owed    sync.WaitGroup // messages submitted and not yet answered
}

func (in *inStream) fail(err error) {
	in.once.Do(func() {
		in.failErr = err
		close(in.failed)
		_ = in.s.Reset() // wakes the reader
	})
}

func (in *inStream) ack(a *pb.Ack) {
	in.mu.Lock()
	in.acks = append(in.acks, a)
	in.mu.Unlock()
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

func (r *Receiver) serve(s network.Stream) error {
	in := &inStream{s: s, remote: s.Conn().RemotePeer(), proto: s.Protocol(),
		wake: make(chan struct{}, 1), failed: make(chan struct{})}
	r.mu.Lock()
	if r.ctx.Err() != nil {
		r.mu.Unlock()
		return r.ctx.Err()
	}
	r.streams[in] = struct{}{}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.streams, in)
		r.mu.Unlock()
	}()
	writerDone := make(chan error, 1)
	stop := make(chan struct{})
	go func() { writerDone <- r.writeAcks(in, stop) }()

	err := r.readLoop(in)
	if err == nil {
		// Clean EOF: answer what is owed, then close.
		owed := make(chan struct{})
		go func() { in.owed.Wait(); close(owed) }()
		select {
		case <-owed:
		case <-time.After(10 * time.Second):
			err = errors.New("gave up waiting to answer owed acks")
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
	fr := protocols.NewFrameReader(in.s, r.opts.MaxMessageBytes+protocols.FrameOverhead)
	for {
		_ = in.s.SetReadDeadline(time.Now().Add(protocols.IdleTimeout))
		msg := &pb.Message{}
		err := fr.Read(msg)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			r.received.WithLabelValues("malformed").Inc()
			return fmt.Errorf("read message: %w", err)
		}
		select {
		case <-in.failed:
			return in.failErr
		case <-r.ctx.Done():
			return r.ctx.Err()
		default:
		}
		if err := r.accept(in, msg); err != nil {
			r.received.WithLabelValues("refused").Inc()
			return err
		}
	}
}

// accept verifies a message and hands it to its lane's sequencer.
func (r *Receiver) accept(in *inStream, msg *pb.Message) error {
	body, origin, err := r.verifier.Open(msg.Envelope)
	if err != nil {
		return Refuse("bad envelope", err)
	}
	if !protocols.KindAllowed(in.proto, body.Kind) {
		return Refuse(fmt.Sprintf("kind %s not allowed on %s", body.Kind, in.proto), nil)
	}
	lane := LaneFor(body.Kind)
	if Lane(msg.Lane) != lane {
		return Refuse(fmt.Sprintf("kind %s on lane %d", body.Kind, msg.Lane), nil)
	}
	if msg.LinkSeq == 0 {
		return Refuse("link seq 0", nil)
	}
	if len(body.To) > 0 && peer.ID(body.To) != r.host.ID() {
		return Refuse("message addressed to another peer", nil)
	}
	m := &Inbound{From: in.remote, Protocol: in.proto, Origin: origin, Body: body, Envelope: msg.Envelope, Lane: lane}
	if err := r.handler.Admit(m); err != nil {
		return Refuse("not admitted", err)
	}
	if p, ok := r.handler.(Preparer); ok {
		p.Prepare(m)
	}
	return r.sequence(in, m, msg)
}

func (r *Receiver) seqFor(p peer.ID, lane Lane) *sequencer {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := laneKey{p, lane}
	s := r.lanes[key]
	if s == nil {
		s = &sequencer{held: map[uint64]*heldMsg{}, waiters: map[uint64][]waiter{}}
		r.lanes[key] = s
	}
	return s
}

func (r *Receiver) sequence(in *inStream, m *Inbound, msg *pb.Message) error {
	sq := r.seqFor(in.remote, m.Lane)
	sq.submitMu.Lock()
	defer sq.submitMu.Unlock()
	ready, err := r.order(sq, in, m, msg)
	if err != nil {
		return err
	}
	for _, sub := range ready {
		r.submitOwed(sq, sub)
	}
	return nil
}

// submission is a message whose turn has come, with the lane state it was
// ordered under.
type submission struct {
	in    *inStream
	m     *Inbound
	msg   *pb.Message
	epoch uint64
}

// order decides, under the state lock, what to do with a message: answer
// it as a duplicate, hold it, or return it (and any held ones it unblocks)
// for submission in link order.
func (r *Receiver) order(sq *sequencer, in *inStream, m *Inbound, msg *pb.Message) ([]submission, error) {
	sq.mu.Lock()
	defer sq.mu.Unlock()
	if !sq.loaded {
		ls, err := r.st.LinkIn(in.remote, uint32(m.Lane))
		if err != nil {
			return nil, fmt.Errorf("read link state: %w", err)
		}
		sq.epoch, sq.durable, sq.next, sq.loaded = ls.Epoch, ls.LastSeq, ls.LastSeq+1, true
	}
	if msg.LinkEpoch != sq.epoch {
		// The sender's store is a new incarnation: its lane restarts at 1.
		r.log.Info("sender lane restarted", "peer", in.remote, "lane", m.Lane, "epoch", msg.LinkEpoch)
		sq.epoch, sq.durable, sq.next = msg.LinkEpoch, 0, 1
		for _, h := range sq.held {
			h.st.owed.Done()
		}
		clear(sq.held)
		sq.heldBytes = 0
	}
	switch {
	case msg.LinkSeq <= sq.durable:
		r.received.WithLabelValues("duplicate").Inc()
		in.ack(&pb.Ack{Id: msg.Id, Status: pb.AckStatus_ACK_STATUS_DUPLICATE})
		return nil, nil
	case msg.LinkSeq < sq.next:
		// Submitted, not yet committed: answer this copy when it lands.
		in.owed.Add(1)
		sq.waiters[msg.LinkSeq] = append(sq.waiters[msg.LinkSeq], waiter{st: in, id: msg.Id})
		return nil, nil
	case msg.LinkSeq > sq.next:
		size := len(msg.Envelope.Body) + 256
		if old, ok := sq.held[msg.LinkSeq]; ok {
			// A resend on a newer stream replaces the held copy.
			sq.heldBytes -= old.bytes
			delete(sq.held, msg.LinkSeq)
			old.st.owed.Done()
		}
		if sq.heldBytes+size > r.opts.MaxHeldBytes {
			r.received.WithLabelValues("dropped").Inc()
			return nil, nil // no ack: the sender resends
		}
		in.owed.Add(1)
		sq.held[msg.LinkSeq] = &heldMsg{in: m, msg: msg, st: in, bytes: size}
		sq.heldBytes += size
		r.received.WithLabelValues("held").Inc()
		return nil, nil
	}
	in.owed.Add(1)
	ready := []submission{{in: in, m: m, msg: msg, epoch: sq.epoch}}
	sq.next = msg.LinkSeq + 1
	for {
		h, ok := sq.held[sq.next]
		if !ok {
			break
		}
		delete(sq.held, sq.next)
		sq.heldBytes -= h.bytes
		// Owed was counted when held.
		ready = append(ready, submission{in: h.st, m: h.in, msg: h.msg, epoch: sq.epoch})
		sq.next++
	}
	return ready, nil
}

// submitOwed queues the apply transaction of the next message of a lane.
// The caller holds sq.submitMu (not sq.mu) and has counted the message as
// owed.
func (r *Receiver) submitOwed(sq *sequencer, sub submission) {
	in, m, msg := sub.in, sub.m, sub.msg
	seq, epoch := msg.LinkSeq, sub.epoch
	var status pb.AckStatus
	var reason string
	r.st.Submit(r.ctx, func(tx *store.Txn) error {
		ls, err := tx.LinkIn(m.From, uint32(m.Lane))
		if err != nil {
			return err
		}
		if ls.Epoch == epoch && ls.LastSeq >= seq {
			status = pb.AckStatus_ACK_STATUS_DUPLICATE
			return nil
		}
		if (ls.Epoch == epoch && ls.LastSeq != seq-1) || (ls.Epoch != epoch && seq != 1) {
			return fmt.Errorf("lane %s of %s out of order: holds %d/%d, got %d/%d", m.Lane, m.From, ls.Epoch, ls.LastSeq, epoch, seq)
		}
		sp := tx.Savepoint()
		status, err = r.handler.Apply(tx, m)
		var rej *RejectError
		switch {
		case errors.As(err, &rej):
			if !rej.Keep {
				tx.RollbackTo(sp)
			}
			status, reason = pb.AckStatus_ACK_STATUS_REJECTED, rej.Reason
		case err != nil:
			return err
		}
		tx.SetLinkIn(m.From, uint32(m.Lane), &storepb.LinkState{Epoch: epoch, LastSeq: seq})
		return nil
	}, func(err error) {
		defer in.owed.Done()
		sq.mu.Lock()
		waiters := sq.waiters[seq]
		delete(sq.waiters, seq)
		if err != nil {
			sq.loaded = false
			for _, h := range sq.held {
				h.st.owed.Done()
			}
			clear(sq.held)
			sq.heldBytes = 0
		} else if sq.epoch == epoch && seq > sq.durable {
			sq.durable = seq
		}
		sq.mu.Unlock()
		for _, w := range waiters {
			if err == nil {
				w.st.ack(&pb.Ack{Id: w.id, Status: pb.AckStatus_ACK_STATUS_DUPLICATE})
			}
			w.st.owed.Done()
		}
		if err != nil {
			r.log.Warn("apply failed; the sender will resend", "peer", m.From, "lane", m.Lane, "seq", seq, "err", err)
			r.received.WithLabelValues("failed").Inc()
			in.fail(fmt.Errorf("apply seq %d: %w", seq, err))
			return
		}
		if status == pb.AckStatus_ACK_STATUS_REJECTED {
			r.log.Warn("message rejected", "peer", m.From, "origin", m.Origin, "kind", m.Body.Kind, "reason", reason)
		}
		r.received.WithLabelValues(outcome(status)).Inc()
		in.ack(&pb.Ack{Id: msg.Id, Status: status, Error: reason})
	})
}

func outcome(s pb.AckStatus) string {
	switch s {
	case pb.AckStatus_ACK_STATUS_APPLIED:
		return "applied"
	case pb.AckStatus_ACK_STATUS_DUPLICATE:
		return "duplicate"
	case pb.AckStatus_ACK_STATUS_REJECTED:
		return "rejected"
	}
	return "other"
}

// writeAcks answers on the stream, flushing when no more acks are queued.
func (r *Receiver) writeAcks(in *inStream, stop <-chan struct{}) error {
	fw := protocols.NewFrameWriter(in.s, r.opts.MaxMessageBytes+protocols.FrameOverhead)
	for {
		in.mu.Lock()
		batch := in.acks
		in.acks = nil
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
			left := len(in.acks)
			in.mu.Unlock()
			if left > 0 {
				continue
			}
			return nil
		}
	}
}

package eventstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/protocols/pb"
)

// run publishes until the context ends: each round sends what the window
// allows and waits for something to do; a failure is logged, reported, and
// followed by a pause (backoff) and a resync from the stream.
func (p *Publisher) run() {
	backoff := retryMin
	synced := true // New synced
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for p.ctx.Err() == nil {
		err := p.round(&synced, timer)
		if p.ctx.Err() != nil {
			return
		}
		if err == nil {
			backoff = retryMin
			continue
		}
		synced, p.probe = false, true
		p.failed(err, backoff)
		p.maybeRestart()
		if !sleep(p.ctx, timer, backoff) {
			return
		}
		backoff = min(2*backoff, retryMax)
	}
}

// round resyncs when needed, sends, and waits once.
func (p *Publisher) round(synced *bool, timer *time.Timer) error {
	if !*synced {
		if err := p.awaitFlight(timer); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
		err := p.sync(ctx, false)
		cancel()
		if err != nil {
			p.m.errors.WithLabelValues("sync").Inc()
			if errors.Is(err, errJetStreamOff) {
				p.silent = true // an embedded JetStream that shut itself down starts again
			}
			return err
		}
		*synced = true
	}
	if err := p.step(); err != nil {
		return err
	}
	if len(p.flight) == 0 && p.sent >= p.d.Store.DurableVersion() {
		p.recovered() // caught up, nothing owed
	}
	return p.wait(timer)
}

// failed reports a failure: health (not OK once it lasts StuckAfter), the
// metric, one WARN line.
func (p *Publisher) failed(err error, retry time.Duration) {
	msg := err.Error()
	p.setHealth(func(h *Health) {
		if h.Failing.IsZero() {
			h.Failing = time.Now()
		}
		h.failure = msg
	})
	p.m.failing.Set(1)
	p.log.Warn("events stream: not stored; the cursor stays where the stream ends and the events go again from the change log",
		"err", msg, "through", p.through, "retry_in", retry)
}

// recovered clears a failure once the stream stored again (or nothing is
// owed).
func (p *Publisher) recovered() {
	was := false
	p.setHealth(func(h *Health) {
		was = !h.Failing.IsZero()
		h.Failing, h.failure = time.Time{}, ""
	})
	if was {
		p.m.failing.Set(0)
		p.log.Info("events stream: storing again", "stream", p.o.Stream, "through", p.through)
	}
}

// step takes the answers that came and sends what the window allows.
func (p *Publisher) step() error {
	for {
		if err := p.takeAcks(); err != nil {
			return err
		}
		if len(p.flight) >= p.o.Window || (p.probe && len(p.flight) > 0) || p.sent >= p.d.Store.DurableVersion() || p.lowDisk() || p.yielding() {
			return nil
		}
		more, err := p.send()
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
}

// yielding reports whether new events wait while the node catches up
// (Deps.Yield): for at most MaxYield in a row, then they go while it still
// does.
func (p *Publisher) yielding() bool {
	if p.d.Yield == nil || !p.d.Yield() {
		if !p.yieldSince.IsZero() {
			p.yieldSince = time.Time{}
		}
		return false
	}
	now := time.Now()
	if p.yieldSince.IsZero() {
		p.yieldSince = now
		p.m.yields.Inc()
	}
	return now.Sub(p.yieldSince) < p.o.MaxYield
}

// wait blocks until there is something to do: a durable change, an answer,
// an answer overdue, the disk to look at again, the cursor to write, or
// the end.
func (p *Publisher) wait(timer *time.Timer) error {
	d := time.Hour
	if len(p.flight) > 0 {
		d = time.Until(p.flight[0].sent.Add(p.o.AckTimeout))
	}
	if p.diskLow != "" {
		d = min(d, time.Second)
	}
	if p.saved.Through != p.through {
		d = min(d, persistEvery)
	}
	if !p.yieldSince.IsZero() {
		d = min(d, yieldLook)
	}
	resetTimer(timer, max(d, 0))
	select {
	case <-p.ctx.Done():
		return nil
	case m := <-p.acks:
		return p.answer(m)
	case <-p.kick:
		return nil
	case <-timer.C:
		p.persist(false)
		return p.overdue()
	}
}

// overdue fails when the oldest batch waited AckTimeout for its answer.
func (p *Publisher) overdue() error {
	if len(p.flight) == 0 || time.Since(p.flight[0].sent) < p.o.AckTimeout {
		return nil
	}
	p.m.errors.WithLabelValues("timeout").Inc()
	p.silent = true
	return fmt.Errorf("JetStream did not answer for %d events within %v (stream %s)", p.flight[0].n, p.o.AckTimeout, p.o.Stream)
}

// takeAcks handles the answers that came, without waiting.
func (p *Publisher) takeAcks() error {
	for {
		select {
		case m := <-p.acks:
			if err := p.answer(m); err != nil {
				return err
			}
		default:
			return p.overdue()
		}
	}
}

// ack is JetStream's answer to a publish.
type ack struct {
	Stream    string `json:"stream"`
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate"`
	Error     *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

// answer takes the answer to a batch: stored at the sequence expected moves
// the cursor; anything else is a failure (then the stream is asked where it
// ends).
func (p *Publisher) answer(m *nats.Msg) error {
	tok := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	if len(p.flight) == 0 || p.flight[0].token != tok {
		for i, b := range p.flight {
			if b.token == tok {
				return fmt.Errorf("JetStream answered events through %d before the %d events sent ahead of them", b.last, p.flight[0].n+i-1)
			}
		}
		return nil // a batch given up already
	}
	b := p.flight[0]
	if m.Header.Get("Status") == "503" {
		p.silent = true
		p.m.errors.WithLabelValues("no_stream").Inc()
		return fmt.Errorf("no JetStream stream takes %s> (is JetStream running?)", p.ingest)
	}
	var a ack
	if err := json.Unmarshal(m.Data, &a); err != nil {
		p.m.errors.WithLabelValues("answer").Inc()
		return fmt.Errorf("JetStream's answer %q: %w", m.Data, err)
	}
	if a.Error != nil {
		p.m.errors.WithLabelValues("refused").Inc()
		return fmt.Errorf("JetStream refused the events through local version %d: %s (error %d)", b.last, a.Error.Description, a.Error.ErrCode)
	}
	if a.Stream != p.o.Stream || a.Seq != b.seq || a.Duplicate {
		p.m.errors.WithLabelValues("sequence").Inc()
		return fmt.Errorf("JetStream stored the event of local version %d in %s at sequence %d; %s at %d was expected", b.last, a.Stream, a.Seq, p.o.Stream, b.seq)
	}
	p.flight = p.flight[1:]
	p.through, p.probe = b.through, false
	p.m.stored.Add(float64(b.n))
	p.m.through.Set(float64(p.through))
	p.setHealth(func(h *Health) {
		h.Through, h.LastSeq = b.through, b.seq
		h.Stored += uint64(b.n)
	})
	p.recovered()
	p.persist(false)
	return nil
}

// out is one event of a batch, ready to publish.
type out struct {
	subject string
	data    []byte
	id      string // its message id (the local version)
	prev    string // the id of the message before it ("": the first since sync)
	seq     uint64 // the stream's last sequence it expects when prev is ""
}

// send reads the changes after p.sent (at most scanLimit), renders their
// events and publishes them as one batch (only its last message asks for
// an answer). It reports whether it read anything.
func (p *Publisher) send() (bool, error) {
	outs := p.outs[:0]
	size, seq, lastID := 0, p.seq, p.lastID
	b := &batch{}
	var rerr error
	// An event the tail holds is taken as its hook published it: the
	// change's record is not decoded (known).
	var held tailEvent
	known := func(ver uint64) bool {
		var ok bool
		held, ok = p.d.Tail.take(ver)
		return ok
	}
	if p.d.Tail == nil {
		known = nil
	}
	err := p.d.Store.LogBodies(p.sent, scanLimit, known, p.d.Kinds.skipOwn, func(ver uint64, body *pb.Body) bool {
		var suffix string
		var data []byte
		ok := false
		switch {
		case body == nil && held.ver == ver && ver != 0 && held.suffix == "": // Tail.None
			b.through = ver
			return true
		case body == nil && held.ver == ver && ver != 0:
			suffix, data, ok = held.suffix, held.data, true
			p.m.fromTail.Inc()
		case body == nil: // an own change without an event, passed over unread
			b.through = ver
			return true
		default:
			if r := p.d.Kinds[body.Kind]; r != nil {
				if suffix, data, ok, rerr = r.Event(ver, body); rerr != nil {
					rerr = fmt.Errorf("the event of change %d: %w", ver, rerr)
					return false
				}
			}
		}
		b.through = ver
		if !ok {
			return true
		}
		if suffix == "" {
			rerr = fmt.Errorf("the event of change %d has no subject", ver)
			return false
		}
		id := strconv.FormatUint(ver, 10)
		outs = append(outs, out{subject: p.ingest + suffix, data: data, id: id, prev: lastID, seq: seq})
		seq++
		lastID = id
		size += len(data)
		b.last = ver
		// After a failure one event goes alone until JetStream stores
		// again: its answer names the cause (a batch's last message would
		// only say that the one before it was refused).
		return !p.probe && len(outs) < p.o.Batch && size < p.o.BatchBytes
	})
	p.outs = outs[:0]
	if err = errors.Join(err, rerr); err != nil {
		p.m.errors.WithLabelValues("read").Inc()
		return false, err
	}
	if b.through == 0 {
		return false, nil
	}
	p.sent = b.through
	if len(outs) == 0 {
		// Only changes without an event: covered once what is ahead is.
		if n := len(p.flight); n > 0 {
			p.flight[n-1].through = b.through
		} else {
			p.through = b.through
			p.m.through.Set(float64(p.through))
			p.setHealth(func(h *Health) { h.Through = b.through })
		}
		return true, nil
	}
	p.token++
	b.token, b.n, b.seq, b.sent = strconv.FormatUint(p.token, 36), len(outs), seq, time.Now()
	// One message and header map serve every publish: PublishMsg encodes
	// them into the connection's buffer before it returns.
	m, h := p.msg, p.msg.Header
	for i, o := range outs {
		clear(h)
		p.hid[0] = o.id
		h[HeaderVersion] = p.hid
		if o.prev == "" {
			p.hexp[0] = strconv.FormatUint(o.seq, 10)
			h[headerExpectedSeq] = p.hexp
		} else {
			p.hexp[0] = o.prev
			h[headerExpectedID] = p.hexp
		}
		m.Subject, m.Data, m.Reply = o.subject, o.data, ""
		if i == len(outs)-1 {
			m.Reply = p.inbox + "." + b.token
		}
		if err := p.d.Conn.PublishMsg(m); err != nil {
			p.m.errors.WithLabelValues("publish").Inc()
			return false, fmt.Errorf("publish to %s: %w", o.subject, err)
		}
	}
	m.Data = nil
	p.seq, p.lastID = seq, lastID
	p.flight = append(p.flight, b)
	return true, nil
}

// scanLimit bounds the changes one send reads (own changes have no event:
// an origin passes over many).
const scanLimit = 4 * DefaultBatch

// awaitFlight waits until every batch in flight was answered or is
// overdue, so that what the stream says next is not overtaken by messages
// still on their way.
func (p *Publisher) awaitFlight(timer *time.Timer) error {
	for len(p.flight) > 0 {
		last := p.flight[len(p.flight)-1]
		resetTimer(timer, max(time.Until(last.sent.Add(p.o.AckTimeout)), 0))
		select {
		case <-p.ctx.Done():
			return p.ctx.Err()
		case m := <-p.acks:
			tok := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
			for i, b := range p.flight {
				if b.token == tok {
					p.flight = p.flight[i+1:]
					break
				}
			}
		case <-timer.C:
			p.flight = p.flight[:0]
		}
	}
	return nil
}

// lowDisk reports whether the file system under the JetStream store is
// below the reserve: then nothing is sent (the events wait in the change
// log) until space is freed.
func (p *Publisher) lowDisk() bool {
	if p.o.DiskDir == "" || p.o.MinFreeBytes == 0 {
		return false
	}
	if time.Since(p.diskAt) < diskEvery {
		return p.diskLow != ""
	}
	p.diskAt = time.Now()
	u, err := vfs.Default.GetDiskUsage(p.o.DiskDir)
	if err != nil {
		return p.diskLow != "" // unknown: as it was
	}
	if u.AvailBytes < p.o.MinFreeBytes {
		if p.diskLow == "" {
			p.log.Warn("events stream: disk almost full: events wait in the change log until space is freed",
				"free_bytes", u.AvailBytes, "reserve_bytes", p.o.MinFreeBytes, "dir", p.o.DiskDir)
			p.m.errors.WithLabelValues("disk").Inc()
		}
		p.diskLow = fmt.Sprintf("disk almost full: %.1f MiB free under %s, below the reserve of %.1f MiB (limits.min_free_disk_mb): events wait in the change log until space is freed",
			float64(u.AvailBytes)/(1<<20), p.o.DiskDir, float64(p.o.MinFreeBytes)/(1<<20))
		p.setHealth(func(h *Health) { h.diskLow = p.diskLow })
		return true
	}
	if p.diskLow != "" {
		p.log.Info("events stream: disk space freed: storing events again", "free_bytes", u.AvailBytes)
		p.diskLow = ""
		p.setHealth(func(h *Health) { h.diskLow = "" })
	}
	return false
}

// maybeRestart restarts the embedded JetStream after answers that did not
// come (a file store that met ENOSPC answers nothing until it is reopened),
// once the disk has room, at most every RestartEvery.
func (p *Publisher) maybeRestart() {
	if !p.silent || p.d.Restart == nil || time.Since(p.restart) < p.o.RestartEvery {
		return
	}
	p.diskAt = time.Time{}
	if p.lowDisk() {
		return
	}
	p.restart, p.silent = time.Now(), false
	p.m.restarts.Inc()
	if err := p.d.Restart(); err != nil {
		p.log.Error("events stream: restarting the embedded JetStream failed", "err", err.Error())
		return
	}
	p.log.Warn("events stream: JetStream answered nothing; restarted the embedded JetStream (its file store keeps a write error until it is reopened)",
		"stream", p.o.Stream)
}

// sleep waits d or until ctx ends (false).
func sleep(ctx context.Context, timer *time.Timer, d time.Duration) bool {
	resetTimer(timer, d)
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	t.Stop()
	select {
	case <-t.C:
	default:
	}
	t.Reset(d)
}

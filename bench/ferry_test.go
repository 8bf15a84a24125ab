package bench

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/testnet"
)

const (
	payloadBytes = 256
	dataType     = "bench"
	propagateSub = "ferry.propagate"
	createdSub   = "ferry.resource.created.>"
)

var idKey = []byte(`"id":"`)

// epoch is the process's time origin: every timestamp is time.Since(epoch),
// monotonic, so goroutines never share a mutable start time.
var epoch = time.Now()

func now() time.Duration { return time.Since(epoch) }

// propagateBody appends a create request whose payload object is exactly
// payloadBytes long: {"id":"<id>","pad":"xxx..."}.
func propagateBody(buf []byte, id string) []byte {
	buf = append(buf, `{"action":"create","data_type":"`+dataType+`","payload":`...)
	head := len(`{"id":"`) + len(id) + len(`","pad":"`)
	pad := max(payloadBytes-head-len(`"}`), 0)
	buf = append(buf, `{"id":"`...)
	buf = append(buf, id...)
	buf = append(buf, `","pad":"`...)
	for range pad {
		buf = append(buf, 'x')
	}
	buf = append(buf, `"}}`...)
	return buf
}

// eventID finds the first "id":"..." in a reply or an event (the resource's
// id: no other key of either ends in a bare "id").
func eventID(data []byte) []byte {
	i := bytes.Index(data, idKey)
	if i < 0 {
		return nil
	}
	rest := data[i+len(idKey):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil
	}
	return rest[:j]
}

// seqOf parses "e<digits>"; -1 if id is not a measured event.
func seqOf(id []byte) int {
	if len(id) < 2 || id[0] != 'e' {
		return -1
	}
	n := 0
	for _, c := range id[1:] {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// counter counts the events one node publishes on its NATS. Its handler
// runs on one goroutine (one subscription); read it after done or after
// the subscription is drained.
type counter struct {
	n      int
	counts []uint8
	got    int
	dups   int
	bad    int
	doneAt time.Duration
	// recvNs is the arrival of every every-th event (event i at i/every),
	// when asked for (every > 0).
	recvNs []int64
	every  int
	done   chan struct{}
	warm   chan struct{}
	once   sync.Once
	sub    *nats.Subscription
}

// newCounter counts n events on nc; every > 0 also records the arrival of
// every every-th event (1: each event).
func newCounter(t testing.TB, nc *nats.Conn, n, every int) *counter {
	t.Helper()
	c := &counter{n: n, counts: make([]uint8, n), done: make(chan struct{}), warm: make(chan struct{}), every: every}
	if every > 0 {
		c.recvNs = make([]int64, samples(n, every))
	}
	sub, err := nc.Subscribe(createdSub, c.handle)
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c.sub = sub
	return c
}

func (c *counter) handle(m *nats.Msg) {
	id := eventID(m.Data)
	if len(id) > 0 && id[0] == 'w' {
		c.once.Do(func() { close(c.warm) })
		return
	}
	i := seqOf(id)
	if i < 0 || i >= c.n {
		c.bad++
		return
	}
	c.counts[i]++
	if c.counts[i] > 1 {
		c.dups++
		return
	}
	if c.recvNs != nil && i%c.every == 0 {
		c.recvNs[i/c.every] = int64(now())
	}
	c.got++
	if c.got == c.n {
		c.doneAt = now()
		close(c.done)
	}
}

// app is a NATS client pipelining propagate requests with one reply inbox.
type app struct {
	nc       *nats.Conn
	inbox    string
	sem      chan struct{}
	n        int
	start    time.Duration
	ok       int
	failed   int
	firstErr string
	doneAt   time.Duration
	// ackNs and sendNs are the reply and the send of every every-th
	// request (request i at i/every), when asked for (every > 0).
	ackNs  []int64
	sendNs []int64
	every  int
	done   chan struct{}
	sub    *nats.Subscription
}

// newApp makes an app for n requests, at most inflight unanswered; every > 0
// also records the send and reply times of every every-th request.
func newApp(t testing.TB, nc *nats.Conn, n, inflight, every int) *app {
	t.Helper()
	a := &app{nc: nc, inbox: nats.NewInbox(), sem: make(chan struct{}, inflight), n: n, done: make(chan struct{}), every: every}
	if every > 0 {
		a.ackNs = make([]int64, samples(n, every))
		a.sendNs = make([]int64, samples(n, every))
	}
	sub, err := nc.Subscribe(a.inbox, a.reply)
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	a.sub = sub
	return a
}

func (a *app) reply(m *nats.Msg) {
	<-a.sem
	if bytes.Contains(m.Data, []byte(`"ok":true`)) {
		a.ok++
		if a.ackNs != nil {
			if i := seqOf(eventID(m.Data)); i >= 0 && i < a.n && i%a.every == 0 {
				a.ackNs[i/a.every] = int64(now())
			}
		}
	} else {
		a.failed++
		if a.firstErr == "" {
			a.firstErr = string(m.Data)
		}
	}
	if a.ok+a.failed == a.n {
		a.doneAt = now()
		close(a.done)
	}
}

// send issues n creates, at most cap(sem) unanswered; pace > 0 spaces the
// sends (the i-th no earlier than start+i*pace).
func (a *app) send(t testing.TB, pace time.Duration) {
	t.Helper()
	buf := make([]byte, 0, 512)
	for i := range a.n {
		if pace > 0 {
			if d := a.start + time.Duration(i)*pace - now(); d > 0 {
				time.Sleep(d) // load pacing: the offered rate
			}
		}
		a.sem <- struct{}{}
		buf = propagateBody(buf[:0], "e"+strconv.Itoa(i))
		if a.sendNs != nil && i%a.every == 0 {
			a.sendNs[i/a.every] = int64(now())
		}
		if err := a.nc.PublishRequest(propagateSub, a.inbox, buf); err != nil {
			t.Fatalf("publish request %d: %v", i, err)
		}
	}
	if err := a.nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

type ferryResult struct {
	Partners int
	N        int
	Elapsed  time.Duration // first send to last event at the slowest partner
	AckedAt  time.Duration // first send to last fsynced reply at A
	Check    string
	Failed   bool
	// Latency runs, and the saturation run's sample (every SampleEvery-th
	// event).
	P50, P99, Max, AckP50, AckP99 time.Duration
	Rate                          float64 // offered load, events/s; 0: as fast as the app can
	SampleEvery                   int     // 1: every event
	Samples                       int
}

func (r ferryResult) EventsPerSec() float64 { return float64(r.N) / r.Elapsed.Seconds() }

// waitAll waits for the app's replies and every counter, with a deadline.
func waitAll(t testing.TB, a *app, cs []*counter, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	select {
	case <-a.done:
	case <-deadline:
		t.Fatalf("timed out: %d ok + %d failed replies of %d", a.ok, a.failed, a.n)
	}
	for i, c := range cs {
		select {
		case <-c.done:
		case <-deadline:
			t.Fatalf("timed out: partner %d has %d of %d events", i+1, c.got, c.n)
		}
	}
}

// settle lets late duplicates arrive, then stops the counters and checks
// that every reply was ok and every event arrived exactly once everywhere.
func settle(t testing.TB, a *app, cs []*counter, wait time.Duration) (string, bool) {
	t.Helper()
	time.Sleep(wait) // a window for late duplicates to arrive: time passing is the point
	_ = a.sub.Drain()
	for _, c := range cs {
		_ = c.sub.Drain()
	}
	testnet.WaitFor(t, 30*time.Second, "every subscription is drained", func() bool {
		if a.sub.IsValid() {
			return false
		}
		for _, c := range cs {
			if c.sub.IsValid() {
				return false
			}
		}
		return true
	})
	bad := a.ok != a.n || a.failed != 0
	got, dups, unk := 0, 0, 0
	for _, c := range cs {
		got += c.got
		dups += c.dups
		unk += c.bad
	}
	bad = bad || got != a.n*len(cs) || dups != 0 || unk != 0
	msg := fmt.Sprintf("replies %d/%d ok; events %d/%d, %d dup", a.ok, a.n, got, a.n*len(cs), dups)
	if unk != 0 {
		msg += fmt.Sprintf(", %d unparsed", unk)
	}
	if a.failed != 0 {
		msg += "; first error: " + a.firstErr
	}
	if bad {
		t.Errorf("ferry checks failed: %s", msg)
	}
	return msg, bad
}

// samples is how many of n events (0..n-1) are multiples of every.
func samples(n, every int) int { return (n + every - 1) / every }

// latencies fills in the send-to-event and send-to-reply quantiles of the
// events whose times the app and the counter recorded (every a.every-th).
func latencies(r *ferryResult, a *app, c *counter) {
	n := len(a.sendNs)
	lat := make([]time.Duration, 0, n)
	ack := make([]time.Duration, 0, n)
	for i := range n {
		lat = append(lat, time.Duration(c.recvNs[i]-a.sendNs[i]))
		ack = append(ack, time.Duration(a.ackNs[i]-a.sendNs[i]))
	}
	r.SampleEvery, r.Samples = a.every, n
	slices.Sort(lat)
	slices.Sort(ack)
	r.P50, r.P99, r.Max = quantile(lat, 0.50), quantile(lat, 0.99), lat[len(lat)-1]
	r.AckP50, r.AckP99 = quantile(ack, 0.50), quantile(ack, 0.99)
}

// quantile of sorted durations (nearest rank).
func quantile(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

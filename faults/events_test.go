package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrynet/ferry/eventstream"
	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
)

// eventsHealth is the events part of a node's /healthz?format=json.
func eventsHealth(t *testing.T, n *proc.Node) (h eventstream.Health, ok bool) {
	t.Helper()
	code, b, err := n.Get("/healthz?format=json")
	if err != nil || code == 0 {
		return h, false
	}
	var r struct {
		Events *eventstream.Health `json:"events"`
	}
	if json.Unmarshal(b, &r) != nil || r.Events == nil {
		return h, false
	}
	return *r.Events, true
}

var cursorLine = regexp.MustCompile(`msg="events stream cursor".* through=(\d+) durable=(\d+)`)

// resumeLine says where n's events stream resumed in its last run: the
// cursor it learned and the changes on its disk then. A cursor below them
// is a crash's gap: events of changes on disk that the stream lacked, sent
// again from the change log.
func resumeLine(n *proc.Node) (string, bool) {
	runs := strings.Split(n.StderrAll(), "---- run ")
	m := cursorLine.FindStringSubmatch(runs[len(runs)-1])
	if m == nil {
		return "(no events stream cursor line)", false
	}
	through, _ := strconv.ParseUint(m[1], 10, 64)
	durable, _ := strconv.ParseUint(m[2], 10, 64)
	if through < durable {
		return fmt.Sprintf("resumed at version %d with changes up to %d on disk: their events came from the change log", through, durable), true
	}
	return fmt.Sprintf("resumed at version %d, the end of its disk (no gap this time)", through), false
}

// TestDurableConsumerAcrossReceiverRestarts is the events stream's promise
// to an app: it made a durable consumer on its node B's stream and went
// away; meanwhile A's 10,000 creates arrived at B, and B was stopped once
// with SIGTERM and once with SIGKILL, and restarted each time (killed
// again, at most twice more, until a kill caught events not yet in the
// stream: the log says whether one did). The app comes back and fetches:
// every create once, none missing, in A's order, each delivered once as it
// acks them.
func TestDurableConsumerAcrossReceiverRestarts(t *testing.T) {
	const total = 10_000
	a := proc.New(t, proc.Options{Name: "A"})
	b := proc.New(t, proc.Options{Name: "B"})
	proc.Partners(a, b)
	a.Start()
	b.Start()

	// The app subscribes through a durable consumer, then goes away.
	ctx := context.Background()
	consumer := func(nc *nats.Conn) jetstream.Consumer {
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		c, err := js.CreateOrUpdateConsumer(ctx, node.DefaultEventsStream, jetstream.ConsumerConfig{Durable: "app",
			FilterSubject: "ferry.resource.created.>", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 20_000})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	nc := connect(t, b.NATSURL())
	consumer(nc)
	nc.Close()

	var progress atomic.Int64
	restarts := make(chan string, 1)
	go func() {
		var did []string
		defer func() { restarts <- strings.Join(did, "; ") }()
		for progress.Load() < total/4 {
			time.Sleep(5 * time.Millisecond)
		}
		code, err := b.TermErr(time.Minute)
		if err != nil || code != 0 {
			t.Errorf("SIGTERM to B: exit %d, %v", code, err)
		}
		did = append(did, "SIGTERM")
		if err := b.StartErr(); err != nil {
			t.Errorf("restart B: %v", err)
			return
		}
		for progress.Load() < total*2/5 {
			time.Sleep(5 * time.Millisecond)
		}
		// SIGKILL while events wait to be stored: a gap the restart must
		// fill from the change log. Whether one was open shows after the
		// restart (resumeLine); without one, B is killed again, at most
		// three times while the creates still come.
		for kills := 1; ; kills++ {
			for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
				if h, ok := eventsHealth(t, b); ok && !h.CaughtUp {
					break
				}
			}
			b.Kill()
			if err := b.StartErr(); err != nil {
				t.Errorf("restart B: %v", err)
				return
			}
			line, gap := resumeLine(b)
			did = append(did, "SIGKILL: "+line)
			if gap || kills == 3 || progress.Load() > total*9/10 {
				return
			}
		}
	}()
	app := connect(t, a.NATSURL())
	acked, retries := sendAll(t, app, "ev", total, 64, &progress)
	did := <-restarts
	if t.Failed() {
		t.FailNow()
	}
	testnet.WaitFor(t, 3*time.Minute, "B acknowledged every create", func() bool { return pendingAcks(t, a) == 0 })
	wait.Until(t, time.Minute, "B's events stream holds every change", func() error {
		h, ok := eventsHealth(t, b)
		if !ok || !h.OK || !h.CaughtUp {
			return fmt.Errorf("events health %+v", h)
		}
		return nil
	})

	// The app comes back and reads all of it.
	nc = connect(t, b.NATSURL())
	c := consumer(nc)
	origin := a.PeerID().String()
	seen := make(map[string]bool, total)
	var last, lastLocal uint64
	deadline := time.Now().Add(2 * time.Minute)
	for len(seen) < total {
		if time.Now().After(deadline) {
			t.Fatalf("fetched %d of %d events in 2 minutes", len(seen), total)
		}
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			var ev struct {
				Origin       string `json:"origin"`
				Version      uint64 `json:"version"`
				LocalVersion uint64 `json:"local_version"`
				Resource     struct {
					ID string `json:"id"`
				} `json:"resource"`
			}
			if err := json.Unmarshal(m.Data(), &ev); err != nil {
				t.Fatalf("event %s: %v", m.Data(), err)
			}
			md, err := m.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			id := m.Headers().Get(eventstream.HeaderVersion)
			switch {
			case ev.Origin != origin:
				t.Fatalf("event of origin %s, want %s", ev.Origin, origin)
			case seen[ev.Resource.ID]:
				t.Fatalf("%s came twice (origin version %d, stream sequence %d)", ev.Resource.ID, ev.Version, md.Sequence.Stream)
			case ev.Version <= last:
				t.Fatalf("%s (origin version %d) after origin version %d: A's order is broken", ev.Resource.ID, ev.Version, last)
			case id != strconv.FormatUint(ev.LocalVersion, 10) || ev.LocalVersion <= lastLocal:
				t.Fatalf("%s: message id %s, local version %d after %d", ev.Resource.ID, id, ev.LocalVersion, lastLocal)
			case md.NumDelivered != 1:
				t.Fatalf("%s delivered %d times", ev.Resource.ID, md.NumDelivered)
			}
			if _, ok := acked[ev.Resource.ID]; !ok {
				t.Fatalf("%s: no reply acknowledged it", ev.Resource.ID)
			}
			if acked[ev.Resource.ID] != ev.Version {
				t.Fatalf("%s at origin version %d; A answered %d", ev.Resource.ID, ev.Version, acked[ev.Resource.ID])
			}
			seen[ev.Resource.ID], last, lastLocal = true, ev.Version, ev.LocalVersion
			if err := m.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			t.Fatal(err)
		}
	}
	// Nothing more, and nothing left unacknowledged.
	batch, err := c.Fetch(10, jetstream.FetchMaxWait(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		t.Fatalf("one more event after all %d: %s", total, m.Data())
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumPending != 0 || info.NumAckPending != 0 || info.NumRedelivered != 0 {
		t.Fatalf("consumer after reading all: %d pending, %d unacknowledged, %d redelivered", info.NumPending, info.NumAckPending, info.NumRedelivered)
	}
	t.Logf("%d creates at A (%d attempts unanswered, retried) while B was stopped and restarted: %s; the app's durable consumer got all %d once, in A's order",
		total, retries, did, len(seen))
}

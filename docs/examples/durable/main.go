// An app that reads its Ferry node's events through a durable consumer of
// the events stream (FERRY_EVENTS): every event once, in order, across its
// own absences and the node's restarts.
package main

import (
	"context"
	"encoding/json"
	"log"
	"os"
	"os/signal"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ResourceEvent is the body of ferry.resource.<created|updated|deleted>.<data_type>.
type ResourceEvent struct {
	Origin       string          `json:"origin"`        // the peer id of the node that owns the resource
	Version      uint64          `json:"version"`       // the origin's version of this change
	LocalVersion uint64          `json:"local_version"` // this node's version of it (= the Nats-Msg-Id header)
	Resource     json.RawMessage `json:"resource"`
}

func main() {
	nc, err := nats.Connect(os.Getenv("NATS_URL")) // the node's NATS, nats://127.0.0.1:4222 by default
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Drain()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	// Made once; later runs find it and go on where the app left off,
	// however long it was away (within the stream's max_bytes and max_age).
	cons, err := js.CreateOrUpdateConsumer(ctx, "FERRY_EVENTS", jetstream.ConsumerConfig{
		Durable:       "orders-app",
		FilterSubject: "ferry.resource.*.orders",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		log.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var ev ResourceEvent
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			log.Printf("bad event %s: %v", m.Subject(), err)
			_ = m.Term() // never redelivered
			return
		}
		log.Printf("%s %s v%d (local %s): %s", m.Subject(), ev.Origin, ev.Version, m.Headers().Get("Nats-Msg-Id"), ev.Resource)
		// ... apply it to the app's state, then:
		if err := m.DoubleAck(ctx); err != nil { // acked once JetStream confirms: not redelivered
			log.Printf("ack: %v", err)
		}
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Stop()
	<-ctx.Done()
}

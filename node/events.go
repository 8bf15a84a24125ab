package node

import (
	"fmt"

	"github.com/ferrynet/ferry/eventstream"
	"github.com/ferrynet/ferry/protocols/pb"
)

// newEvents builds the events stream (nats.events): the JetStream stream on
// the node's NATS that keeps every event the services publish, driven by
// the change log (package eventstream). propagate and review render the
// events of their kinds.
func (n *Node) newEvents() (*eventstream.Publisher, error) {
	c := n.cfg
	conn, err := n.bridge.Connect("ferry-events")
	if err != nil {
		return nil, fmt.Errorf("nats.events: %w", err)
	}
	kinds := eventstream.Kinds{}
	for _, k := range []pb.Kind{pb.Kind_KIND_RESOURCE_CREATE, pb.Kind_KIND_RESOURCE_UPDATE, pb.Kind_KIND_RESOURCE_DELETE, pb.Kind_KIND_CONSIDERS, pb.Kind_KIND_PLANNER} {
		kinds[k] = n.prop
	}
	kinds[pb.Kind_KIND_REVIEW_REQUEST], kinds[pb.Kind_KIND_REVIEW_DECISION] = n.review, n.review
	d := eventstream.Deps{Store: n.st, Conn: conn, Kinds: kinds, Self: n.id, Tail: n.evtail, Yield: n.receiver.CatchingUp}
	o := eventstream.Options{Stream: c.NATS.Events.Stream, Prefix: c.NATS.Prefix, MaxBytes: int64(c.NATS.Events.MaxBytes),
		MaxAge: c.EventsMaxAge(), Logger: n.log.With("component", "events"), Registerer: n.reg}
	if n.bridge.JetStreamEmbedded() {
		d.Restart = n.bridge.RestartJetStream
		o.StoreLimit = n.bridge.JetStreamMaxStore()
		o.DiskDir, o.MinFreeBytes = n.home.DataPath(), uint64(c.Limits.MinFreeDiskMB)<<20
	}
	p, err := eventstream.New(d, o)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("nats.events: %w", err)
	}
	return p, nil
}

// Events is the events stream's publisher (nil when nats.events is off).
func (n *Node) Events() *eventstream.Publisher { return n.events }

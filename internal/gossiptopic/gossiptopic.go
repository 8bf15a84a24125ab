// Package gossiptopic joins a gossipsub topic the way Ferry's services do:
// the topic's validator first (so nothing unchecked is ever delivered or
// forwarded), then the topic, then one subscription. A failure undoes what
// was done. It also holds the options of the node's one gossipsub router
// (RouterOptions), shared by every service that gossips.
package gossiptopic

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p-pubsub"
)

// Join registers v for the topic name on ps, joins it and subscribes.
func Join(ps *pubsub.PubSub, name string, v any) (*pubsub.Topic, *pubsub.Subscription, error) {
	if err := ps.RegisterTopicValidator(name, v); err != nil {
		return nil, nil, fmt.Errorf("%s validator: %w", name, err)
	}
	t, err := ps.Join(name)
	if err != nil {
		_ = ps.UnregisterTopicValidator(name)
		return nil, nil, fmt.Errorf("join %s: %w", name, err)
	}
	sub, err := t.Subscribe()
	if err != nil {
		_ = t.Close()
		_ = ps.UnregisterTopicValidator(name)
		return nil, nil, fmt.Errorf("subscribe %s: %w", name, err)
	}
	return t, sub, nil
}

// RouterOptions are the gossipsub options of a node's router: default
// signing (StrictSign: every message is signed by its author, so GetFrom
// is authenticated), flood publishing, so that a query reaches every
// connected member at once instead of waiting for the mesh to form, a
// deeper queue per peer (gossipsub drops a message to a peer whose queue
// is full; members joining together publish their records at once), and
// a heartbeat of Heartbeat instead of gossipsub's second.
func RouterOptions() []pubsub.Option {
	p := pubsub.DefaultGossipSubParams()
	p.HeartbeatInterval = Heartbeat
	return []pubsub.Option{
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithFloodPublish(true),
		pubsub.WithPeerOutboundQueueSize(peerQueue),
		pubsub.WithGossipSubParams(p),
	}
}

// Heartbeat is the gossipsub router's heartbeat (gossipsub's default is a
// second). Each heartbeat walks every peer of every topic (three a node),
// to keep the mesh between its bounds and to tell Dlazy peers per topic
// the ids of the messages of the last three heartbeats (IHAVE), whether
// or not anything was published: at rest it is most of what a node does.
// A message is forwarded along the mesh as it comes, not on a heartbeat,
// so what waits on it is the repair of the mesh after a peer comes or
// goes, and a message a peer missed, fetched after the IHAVE (the message
// cache keeps five heartbeats, 15 s). Ferry's own repairs (the decision
// head, catch-up) run on seconds as well.
const Heartbeat = 3 * time.Second

// peerQueue is gossipsub's outbound queue per peer (its default is 32).
const peerQueue = 256

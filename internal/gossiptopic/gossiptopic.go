// Package gossiptopic joins a gossipsub topic the way Ferry's services do:
// the topic's validator first (so nothing unchecked is ever delivered or
// forwarded), then the topic, then one subscription. A failure undoes what
// was done. It also holds the options of the node's one gossipsub router
// (RouterOptions), shared by every service that gossips.
package gossiptopic

import (
	"fmt"

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
// connected member at once instead of waiting for the mesh to form, and a
// deeper queue per peer (gossipsub drops a message to a peer whose queue
// is full; members joining together publish their records at once).
func RouterOptions() []pubsub.Option {
	return []pubsub.Option{
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithFloodPublish(true),
		pubsub.WithPeerOutboundQueueSize(peerQueue),
	}
}

// peerQueue is gossipsub's outbound queue per peer (its default is 32).
const peerQueue = 256

// Package gossiptopic joins a gossipsub topic the way Ferry's services do:
// the topic's validator first (so nothing unchecked is ever delivered or
// forwarded), then the topic, then one subscription. A failure undoes what
// was done.
package gossiptopic

import (
	"fmt"

	gossip "github.com/libp2p/go-libp2p-pubsub"
)

// Join registers v for the topic name on ps, joins it and subscribes.
func Join(ps *gossip.PubSub, name string, v any) (*gossip.Topic, *gossip.Subscription, error) {
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

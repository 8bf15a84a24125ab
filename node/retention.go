package node

import (
	"time"
)

// retainEvery is how often the node drops delivery records past the
// retention window: a tenth of the window, at most a minute, at least a
// second.
func retainEvery(window time.Duration) time.Duration {
	return min(max(window/10, time.Second), time.Minute)
}

// retain drops, every retainEvery, the delivery records every receiver
// acknowledged that are older than limits.ack_retention_hours (0 keeps
// them forever).
func (n *Node) retain() {
	window := time.Duration(n.cfg.Limits.AckRetentionHours * float64(time.Hour))
	if n.opts.Retention > 0 {
		window = n.opts.Retention
	}
	if window <= 0 {
		return
	}
	t := time.NewTicker(retainEvery(window))
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		dropped, err := n.sender.Truncate(n.ctx, time.Now().Add(-window))
		switch {
		case err != nil && n.ctx.Err() == nil:
			n.log.Warn("drop acknowledged delivery records", "err", err)
		case dropped > 0:
			n.log.Debug("dropped acknowledged delivery records past the retention window", "records", dropped)
		}
	}
}

package node

import (
	"time"

	"github.com/ferrynet/ferry/admin"
	"github.com/ferrynet/ferry/natsbridge"
)

// Idempotency keys (internal/idem, store/idem.go): where a request's key
// comes from, and the loop that forgets old keys.
const (
	// MsgIDHeader is the NATS header JetStream apps already send.
	MsgIDHeader = natsbridge.MsgIDHeader
	// IdempotencyKeyHeader is the admin API's header.
	IdempotencyKeyHeader = admin.IdempotencyKeyHeader
	// expireBatch keys are forgotten per commit.
	expireBatch = 10000
)

// expireIdempotencyKeys forgets keys older than the window, every quarter
// of it (between 1 s and 1 min).
func (n *Node) expireIdempotencyKeys() {
	every := min(max(n.st.IdempotencyWindow()/4, time.Second), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		for {
			got, err := n.st.ExpireIdempotency(n.ctx, n.st.Now(), expireBatch)
			if err != nil {
				if n.ctx.Err() == nil {
					n.log.Debug("expire idempotency keys", "err", err.Error())
				}
				break
			}
			if got < expireBatch {
				break
			}
		}
	}
}

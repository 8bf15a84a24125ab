package node

import (
	"fmt"
	"time"

	"github.com/ferrynet/ferry"
)

// Idempotency keys (internal/idem, store/idem.go): where a request's key
// comes from, and the loop that forgets old keys.
const (
	// MsgIDHeader is the NATS header JetStream apps already send.
	MsgIDHeader = "Nats-Msg-Id"
	// IdempotencyKeyHeader is the admin API's header.
	IdempotencyKeyHeader = "Idempotency-Key"
	// expireBatch keys are forgotten per commit.
	expireBatch = 10000
)

// idempotencyKey merges a key given in a header into the body's field: one
// of them, or both the same.
func idempotencyKey(field *string, header, headerName string) error {
	switch {
	case header == "":
	case *field == "":
		*field = header
	case *field != header:
		return fmt.Errorf("%w: idempotency_key %q and the %s header %q differ; send one", ferry.ErrBadRequest, *field, headerName, header)
	}
	return nil
}

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

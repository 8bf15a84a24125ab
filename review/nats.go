package review

import (
	"context"
	"fmt"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/idem"
	"github.com/ferrynet/ferry/natsbridge"
)

// ServeNATS answers the service's app subjects on b (SPEC:
// <prefix>.review.submit and <prefix>.review.decide, the latter refused
// unless decide: review.nats_decide); requests run under ctx.
func (s *Service) ServeNATS(ctx context.Context, b *natsbridge.Bridge, decide bool) error {
	if err := natsbridge.HandleJSON(b, "review.submit", `{"type", "table_name", "table_id", "data", "description", "idempotency_key"?}`, false,
		func(req SubmitRequest, reply natsbridge.Reply, done func(map[string]any, error)) {
			if err := idem.MergeKey(&req.IdempotencyKey, reply.Header(natsbridge.MsgIDHeader), natsbridge.MsgIDHeader); err != nil {
				done(nil, err)
				return
			}
			s.Submit(ctx, req, func(row Row, err error) { done(map[string]any{"request": row}, err) })
		}); err != nil {
		return err
	}
	return natsbridge.HandleJSON(b, "review.decide", `{"request_id", "decision", "data"?, "set"?, "note"?}`, false,
		func(req DecideRequest, _ natsbridge.Reply, done func(map[string]any, error)) {
			if !decide {
				done(nil, fmt.Errorf("%w: deciding over NATS is off (review.nats_decide: false); use ferry requests or the admin API", ferry.ErrForbidden))
				return
			}
			s.Decide(ctx, req, func(row Row, err error) { done(map[string]any{"request": row}, err) })
		})
}

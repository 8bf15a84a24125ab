package propagate

import (
	"context"

	"github.com/ferrynet/ferry/internal/idem"
	"github.com/ferrynet/ferry/natsbridge"
)

// ServeNATS answers the service's app subjects on b (SPEC: <prefix>.propagate
// and <prefix>.changes); requests run under ctx.
func (s *Service) ServeNATS(ctx context.Context, b *natsbridge.Bridge) error {
	// The busiest subject: its body is read in one pass (DecodeRequest); an
	// unusual body goes through the strict decoder, as every other
	// subject's (natsbridge.HandleJSON).
	if err := b.Handle("propagate", func(data []byte, reply natsbridge.Reply) {
		req, ok := DecodeRequest(data)
		if !ok {
			var err error
			if req, err = decodeSlow(data); err != nil {
				reply.Err(err)
				return
			}
		}
		if err := idem.MergeKey(&req.IdempotencyKey, reply.Header(natsbridge.MsgIDHeader), natsbridge.MsgIDHeader); err != nil {
			reply.Err(err)
			return
		}
		s.Propagate(ctx, req, func(res Result, err error) {
			if err != nil {
				reply.Err(err)
				return
			}
			reply.OK(res)
		})
	}); err != nil {
		return err
	}
	// An empty body asks for everything from the start. A page fills the
	// reply up to the server's max payload.
	return natsbridge.HandleJSON(b, "changes", `{"since": <version>, "limit"?: <n>}`, true,
		func(req ChangesRequest, reply natsbridge.Reply, done func(map[string]any, error)) {
			page, err := s.ChangesPage(req, reply.MaxPayload())
			done(map[string]any{"changes": page.Changes, "next": page.Next, "more": page.More}, err)
		})
}

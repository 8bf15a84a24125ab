package delivery

import (
	"github.com/ferrynet/ferry/natsbridge"
)

// ServeNATS answers the service's app subjects on b (SPEC:
// <prefix>.delivery.status and <prefix>.delivery.wait).
func (s *Service) ServeNATS(b *natsbridge.Bridge) error {
	if err := natsbridge.HandleJSON(b, "delivery.status", `{"version"}`, false,
		func(req StatusRequest, _ natsbridge.Reply, done func(map[string]any, error)) {
			done(s.Status(req))
		}); err != nil {
		return err
	}
	return natsbridge.HandleJSON(b, "delivery.wait", `{"version", "receivers"?, "timeout_ms"?}`, false,
		func(req WaitRequest, _ natsbridge.Reply, done func(map[string]any, error)) {
			s.Wait(req, done)
		})
}

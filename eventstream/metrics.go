package eventstream

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/internal/promreg"
)

type metrics struct {
	stored   prometheus.Counter
	fromTail prometheus.Counter
	errors   *prometheus.CounterVec
	restarts prometheus.Counter
	yields   prometheus.Counter
	failing  prometheus.Gauge
	through  prometheus.Gauge
	caughtUp prometheus.GaugeFunc
}

// newMetrics makes the publisher's metrics (register registers them, once
// the publisher is whole).
func newMetrics(p *Publisher) *metrics {
	m := &metrics{
		stored: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_events_stream_stored_total",
			Help: "Events the JetStream events stream stored (answered), since the node started."}),
		fromTail: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_events_stream_from_memory_total",
			Help: "Events the events stream took as the services published them (the tail in memory) instead of reading their changes back from the log."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_events_stream_errors_total",
			Help: "Failures of the events stream by kind: timeout (no answer), refused, sequence, no_stream, answer, publish, read, sync, disk (below the reserve)."}, []string{"kind"}),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_events_stream_jetstream_restarts_total",
			Help: "Restarts of the embedded JetStream after answers that did not come (a file store that met ENOSPC)."}),
		yields: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_events_stream_yields_total",
			Help: "Times the events stream held new events back while the node caught up on a backlog (for at most 5 s each)."}),
		failing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_events_stream_failing",
			Help: "1 while the events stream's last attempt failed (it retries), else 0."}),
		through: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_events_stream_through_version",
			Help: "The local version through which every event is in the stream."}),
	}
	m.caughtUp = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_events_stream_caught_up",
		Help: "1 when the stream holds the events of every change on disk, else 0 (changes wait to be read into it)."},
		func() float64 {
			if p.Health().CaughtUp {
				return 1
			}
			return 0
		})
	for _, k := range []string{"timeout", "refused", "sequence", "no_stream", "answer", "publish", "read", "sync", "disk"} {
		m.errors.WithLabelValues(k)
	}
	return m
}

func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	return promreg.Register(reg, m.stored, m.fromTail, m.errors, m.restarts, m.yields, m.failing, m.through, m.caughtUp)
}

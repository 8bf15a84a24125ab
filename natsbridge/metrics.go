package natsbridge

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry"
)

// CodeOK labels requests answered {"ok": true}.
const CodeOK = "ok"

// Codes are the values of the code label: ok and every error code of SPEC.md.
var Codes = []string{CodeOK, ferry.CodeBadRequest, ferry.CodeUnknownAction, ferry.CodeNotOwner, ferry.CodeTooLarge,
	ferry.CodeNotFound, ferry.CodeConflict, ferry.CodeForbidden, ferry.CodeUnavailable}

// metrics count the requests apps make, by subject and answer code, and
// time them from arrival to answer (the answer comes after the change is
// on disk, so this is what an app waits).
type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "nats", Name: "requests_total",
			Help: "Requests apps made on the node's NATS subjects, by subject and answer code (ok or the error code)."},
			[]string{"subject", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "ferry", Subsystem: "nats", Name: "request_duration_seconds",
			Help:    "Time from a request's arrival to its answer, by subject.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"subject"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.latency} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// subject creates a subject's series at zero, so alerts see 0, not no data.
func (m *metrics) subject(subj string) {
	for _, c := range Codes {
		m.requests.WithLabelValues(subj, c)
	}
	m.latency.WithLabelValues(subj)
}

func (m *metrics) observe(subj, code string, start time.Time) {
	m.requests.WithLabelValues(subj, code).Inc()
	m.latency.WithLabelValues(subj).Observe(time.Since(start).Seconds())
}

package natsbridge

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/promreg"
)

// CodeOK labels requests answered {"ok": true}.
const CodeOK = "ok"

// Codes are the values of the code label: ok and every error code of SPEC.md.
var Codes = []string{CodeOK, ferry.CodeBadRequest, ferry.CodeUnknownAction, ferry.CodeNotOwner, ferry.CodeTooLarge,
	ferry.CodeNotFound, ferry.CodeConflict, ferry.CodeForbidden, ferry.CodeUnavailable, ferry.CodeCorrupt}

// Outcomes are the values of the outcome label of replies_total.
var Outcomes = []string{"ok", "error", "too_large", "failed"}

// metrics count the requests apps make, by subject and answer code, time
// them from arrival to answer (the answer comes after the change is on
// disk, so this is what an app waits), count how replies went out and how
// many requests are being handled.
type metrics struct {
	requests *prometheus.CounterVec // subject, code
	latency  *prometheus.HistogramVec
	replies  *prometheus.CounterVec // outcome
	inflight prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "nats", Name: "requests_total",
			Help: "Requests apps made on the node's NATS subjects, by subject and answer code (ok or the error code)."},
			[]string{"subject", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "ferry", Subsystem: "nats", Name: "request_duration_seconds",
			Help:    "Time from a request's arrival to its answer, by subject.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"subject"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "nats", Name: "replies_total",
			Help: "Replies to apps: ok, error (an error answer), too_large (the answer did not fit the max payload; an error was sent instead), failed (could not be sent)."},
			[]string{"outcome"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "ferry", Subsystem: "nats", Name: "requests_in_flight",
			Help: "Requests taken and not yet answered."}),
	}
	for _, o := range Outcomes {
		m.replies.WithLabelValues(o)
	}
	if err := promreg.Register(reg, m.requests, m.latency, m.replies, m.inflight); err != nil {
		return nil, fmt.Errorf("nats: %w", err)
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

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
	outcome  map[string]prometheus.Counter // replies by outcome, looked up once
}

// subjectMetrics are one subject's series, looked up once when it is
// subscribed rather than by label at every request.
type subjectMetrics struct {
	code    map[string]prometheus.Counter
	latency prometheus.Observer
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
	m.outcome = make(map[string]prometheus.Counter, len(Outcomes))
	for _, o := range Outcomes {
		m.outcome[o] = m.replies.WithLabelValues(o)
	}
	if err := promreg.Register(reg, m.requests, m.latency, m.replies, m.inflight); err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	return m, nil
}

// subject creates a subject's series at zero, so alerts see 0, not no data.
func (m *metrics) subject(subj string) *subjectMetrics {
	sm := &subjectMetrics{code: make(map[string]prometheus.Counter, len(Codes)), latency: m.latency.WithLabelValues(subj)}
	for _, c := range Codes {
		sm.code[c] = m.requests.WithLabelValues(subj, c)
	}
	return sm
}

func (m *metrics) observe(subj string, sm *subjectMetrics, code string, start time.Time) {
	c := sm.code[code]
	if c == nil { // a code outside Codes: its series is made on first use
		c = m.requests.WithLabelValues(subj, code)
	}
	c.Inc()
	sm.latency.Observe(time.Since(start).Seconds())
}

// replied counts one reply by its outcome (one of Outcomes).
func (m *metrics) replied(outcome string) {
	if c := m.outcome[outcome]; c != nil {
		c.Inc()
		return
	}
	m.replies.WithLabelValues(outcome).Inc()
}

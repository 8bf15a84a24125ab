package node

// metrics.go is what the node exports for operators beyond each
// component's own counters: the review decisions and the build. The state
// gauges (delivery backlog, review queue, peers, store bytes...) are
// package admin's (admin/metrics.go).

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Decision outcomes (the outcome label of ferry_review_decisions_total).
var decisionOutcomes = []string{"accepted", "edited", "rejected", "approved", "refused"}

type nodeMetrics struct {
	decisions *prometheus.CounterVec
	build     *prometheus.GaugeVec
}

func newNodeMetrics(reg prometheus.Registerer) (*nodeMetrics, error) {
	m := &nodeMetrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "review", Name: "decisions_total",
			Help: "Decisions made on this node (the reviewer), by outcome: accepted, edited, rejected, approved (an approval kept while the request waits for review.approvals), or refused (the decision was not taken)."},
			[]string{"outcome"}),
		build: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "ferry", Name: "build_info",
			Help: "Always 1; the labels say which Ferry build runs."}, []string{"version", "revision", "goversion"}),
	}
	for _, o := range decisionOutcomes {
		m.decisions.WithLabelValues(o)
	}
	m.build.WithLabelValues(Version, BuildRevision(), runtime.Version()).Set(1)
	for _, c := range []prometheus.Collector{m.decisions, m.build} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Version is Ferry's release, sent in hello and in membership records.
const Version = "0.1.0"

// BuildRevision is the VCS revision the binary was built from ("unknown"
// outside a checkout), with "+dirty" when the tree had changes.
func BuildRevision() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "unknown", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty {
		rev += "+dirty"
	}
	return rev
}

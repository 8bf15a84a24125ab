package search

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/internal/promreg"
)

// Reasons an incoming query, frame or result is dropped (the "reason" label).
const (
	dropMalformed   = "malformed"     // does not decode or breaks a limit
	dropSpoofed     = "spoofed"       // asker is not the signer or the stream's peer
	dropNotMember   = "not_member"    // sender is not a member of the network
	dropRateLimited = "rate_limited"  // sender is over its query rate
	dropQueueFull   = "queue_full"    // too many queries waiting to be answered
	dropDuplicate   = "duplicate"     // query answered, or results from that peer taken, already
	dropExpired     = "expired"       // the query's deadline passed before the answer
	dropUnknown     = "unknown_query" // results for a query this node does not have open
)

type metrics struct {
	queries *prometheus.CounterVec // direction (in, out), via (gossip, stream, local)
	results *prometheus.CounterVec // direction (in: taken here, out: sent to askers)
	dropped *prometheus.CounterVec // reason
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "search", Name: "queries_total",
			Help: "Search queries, by direction (out: asked by this node's apps, in: asked by peers) and how they travel."},
			[]string{"direction", "via"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "search", Name: "results_total",
			Help: "Search result documents, by direction (in: taken for an open query, out: sent to askers)."},
			[]string{"direction"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "search", Name: "dropped_total",
			Help: "Incoming search queries, frames and results dropped, by reason."},
			[]string{"reason"}),
	}
	// Every series exists from the start at zero, so alerts see 0, not no data.
	for _, via := range []string{"gossip", "stream"} {
		m.queries.WithLabelValues("in", via)
	}
	for _, via := range []string{"local", "all", "known", "partner"} {
		m.queries.WithLabelValues("out", via)
	}
	m.results.WithLabelValues("in")
	m.results.WithLabelValues("out")
	for _, r := range []string{dropMalformed, dropSpoofed, dropNotMember, dropRateLimited, dropQueueFull, dropDuplicate, dropExpired, dropUnknown} {
		m.dropped.WithLabelValues(r)
	}
	if err := promreg.Register(reg, m.queries, m.results, m.dropped); err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	return m, nil
}

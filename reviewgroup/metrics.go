package reviewgroup

import (
	"errors"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/promreg"
	"github.com/ferrynet/ferry/protocols/pb"
)

// metrics are the group's Prometheus metrics. The gauges read raft when
// scraped.
type metrics struct {
	leaderChanges prometheus.Counter
	applies       *prometheus.CounterVec
	forwards      *prometheus.CounterVec
	all           []prometheus.Collector
}

func newMetrics(g *Group) *metrics {
	m := &metrics{
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_review_group_leader_changes_total",
			Help: "Times this member saw a leader take over the review group (a new one, or the same one after a time without).",
		}),
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_review_group_applies_total",
			Help: "Commands applied through this member: via leader (it led), forwarded (to the leader) or none (no leader reached); result ok, refused (by the state machine) or unavailable (no leader, or an outcome not known).",
		}, []string{"via", "result"}),
		forwards: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_review_group_forwards_served_total",
			Help: "Forwarded requests this member answered, by op and answer code (ok, not_leader, or a Ferry error code).",
		}, []string{"op", "code"}),
	}
	raftGauge := func(name, help string, f func(r *raft.Raft) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			if r := g.raft.Load(); r != nil {
				return f(r)
			}
			return 0
		})
	}
	m.all = []prometheus.Collector{
		m.leaderChanges, m.applies, m.forwards,
		raftGauge("ferry_review_group_has_leader", "1 while this member knows a leader of the review group, else 0.",
			func(r *raft.Raft) float64 { return b2f(g.hasLeader()) }),
		raftGauge("ferry_review_group_is_leader", "1 while this member leads the review group, else 0.",
			func(r *raft.Raft) float64 { return b2f(r.State() == raft.Leader) }),
		raftGauge("ferry_review_group_term", "This member's raft term.",
			func(r *raft.Raft) float64 { return float64(r.CurrentTerm()) }),
		raftGauge("ferry_review_group_last_log_index", "The last index of this member's raft log.",
			func(r *raft.Raft) float64 { return float64(r.LastIndex()) }),
		raftGauge("ferry_review_group_commit_index", "The last index this member knows committed.",
			func(r *raft.Raft) float64 { return float64(r.CommitIndex()) }),
		raftGauge("ferry_review_group_applied_index", "The last index this member's state machine applied (a command or a configuration).",
			func(*raft.Raft) float64 { return float64(g.fsm.last.Load()) }),
		raftGauge("ferry_review_group_leader_last_contact_seconds", "Seconds since this member, a follower, last heard from the leader (0 on the leader; -1: never since start).",
			func(r *raft.Raft) float64 {
				if r.State() == raft.Leader {
					return 0
				}
				if t := r.LastContact(); !t.IsZero() {
					return time.Since(t).Seconds()
				}
				return -1
			}),
		&peerHeard{g: g, desc: prometheus.NewDesc("ferry_review_group_peer_last_heard_seconds",
			"Seconds since this member last received raft traffic from a server of the group (on the leader: each follower's last contact).",
			[]string{"peer"}, nil)},
	}
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (g *Group) hasLeader() bool { _, ok := g.Leader(); return ok }

// register registers every metric, or none.
func (m *metrics) register(reg prometheus.Registerer) error {
	if err := promreg.Register(reg, m.all...); err != nil {
		m.unregister(reg)
		return err
	}
	return nil
}

func (m *metrics) unregister(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	for _, c := range m.all {
		reg.Unregister(c)
	}
}

// applied counts one Apply.
func (m *metrics) applied(via string, err error) {
	result := "ok"
	switch {
	case err == nil:
	case errors.Is(err, ferry.ErrUnavailable):
		result = "unavailable"
	default:
		result = "refused"
	}
	m.applies.WithLabelValues(via, result).Inc()
}

// served counts one forwarded request answered.
func (m *metrics) served(op pb.ForwardOp, code string) {
	if code == "" {
		code = "ok"
	}
	m.forwards.WithLabelValues(op.String(), code).Inc()
}

// peerHeard reports, at scrape time, how long ago each server of the
// configuration was last heard from.
type peerHeard struct {
	g    *Group
	desc *prometheus.Desc
}

func (p *peerHeard) Describe(ch chan<- *prometheus.Desc) { ch <- p.desc }

func (p *peerHeard) Collect(ch chan<- prometheus.Metric) {
	for _, id := range p.g.voters() {
		if id == p.g.cfg.Self {
			continue
		}
		at := p.g.layer.lastHeard(id)
		if at.IsZero() {
			continue
		}
		ch <- prometheus.MustNewConstMetric(p.desc, prometheus.GaugeValue, time.Since(at).Seconds(), id.String())
	}
}

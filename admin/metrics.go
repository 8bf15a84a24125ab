package admin

// metrics.go is the state gauges of /metrics: the delivery backlog per
// receiver, the review queue, decision lag per member, peers by role and
// state, store bytes on disk and the last catch-up. They are computed at
// scrape time from the node's own state (Deliveries(), the peer book, the
// store), so they are never stale and exist from the first scrape.

import (
	"io/fs"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// Peer roles and connection states (labels of ferry_peers).
var (
	peerRoles  = []string{"partner", "member", "reviewer", "stranger"}
	peerStates = []string{"connected", "disconnected"}
)

var (
	descPending = prometheus.NewDesc("ferry_delivery_pending",
		"Changes of this node not yet acknowledged by a receiver, per lane.", []string{"receiver", "receiver_id", "lane"}, nil)
	descOldest = prometheus.NewDesc("ferry_delivery_oldest_pending_age_seconds",
		"Age of the oldest change a receiver has not acknowledged, per lane (0: nothing pending).", []string{"receiver", "receiver_id", "lane"}, nil)
	descBacklog = prometheus.NewDesc("ferry_delivery_backlog",
		"Every change-receiver pair not yet acknowledged, all receivers together.", nil, nil)
	descQueue = prometheus.NewDesc("ferry_review_queue_depth",
		"Review requests waiting for a decision, as this node holds them (on the reviewer: the queue).", nil, nil)
	descApplied = prometheus.NewDesc("ferry_review_applied_sequence",
		"The last reviewer decision sequence applied on this node.", nil, nil)
	descLag = prometheus.NewDesc("ferry_review_member_lag",
		"On the reviewer: decisions a member has not acknowledged yet.", []string{"member", "member_id"}, nil)
	descPeers = prometheus.NewDesc("ferry_peers",
		"Peers this node knows, by role and connection state (a peer with two roles counts in both).", []string{"role", "state"}, nil)
	descDisk = prometheus.NewDesc("ferry_store_disk_bytes",
		"Bytes the store's files take on disk.", nil, nil)
	descFree = prometheus.NewDesc("ferry_store_disk_free_bytes",
		"Bytes free on the store's file system, as the store last read them (it refuses writes below ferry_store_disk_reserve_bytes); absent when no reserve is set.", nil, nil)
	descReserve = prometheus.NewDesc("ferry_store_disk_reserve_bytes",
		"The free-space reserve (limits.min_free_disk_mb): below it the store refuses writes.", nil, nil)
	descParts = prometheus.NewDesc("ferry_store_part_bytes",
		"Estimated bytes of the store by part: log (the change log's segment files, and changes and origin index entries in Pebble), ledger (delivery records, floors, refusals, positions), tables (resources, requests, decisions, shared rows), other.", []string{"part"}, nil)
	descCatchUp = prometheus.NewDesc("ferry_sync_last_catchup_timestamp_seconds",
		"Unix time catch-up last brought something from a peer (0: never since start).", nil, nil)
	descReviewer = prometheus.NewDesc("ferry_review_is_reviewer",
		"1 on the reviewer, 0 elsewhere.", nil, nil)
)

// stateCollector computes the state gauges at scrape time.
type stateCollector struct{ srv *Server }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPending, descOldest, descBacklog, descQueue, descApplied, descLag, descPeers,
		descDisk, descFree, descReserve, descParts, descCatchUp, descReviewer} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.srv
	now := time.Now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	isReviewer := n.review.IsReviewer()
	for _, s := range n.Deliveries() {
		gauge(descPending, float64(s.Pending), s.Receiver, s.ReceiverID, s.Lane)
		age := 0.0
		if s.Pending > 0 && !s.OldestPending.IsZero() {
			age = now.Sub(s.OldestPending).Seconds()
		}
		gauge(descOldest, age, s.Receiver, s.ReceiverID, s.Lane)
		if isReviewer && s.Lane == stream.LaneDecision.String() {
			gauge(descLag, float64(s.Pending), s.Receiver, s.ReceiverID)
		}
	}
	gauge(descBacklog, float64(n.pendingTotal()))
	waiting, _ := n.st.Requests("waiting")
	gauge(descQueue, float64(len(waiting)))
	gauge(descApplied, float64(n.review.Applied()))
	r := 0.0
	if isReviewer {
		r = 1
	}
	gauge(descReviewer, r)
	counts := map[[2]string]int{}
	for _, p := range n.PeerInfos() {
		st := "disconnected"
		if p.Connected {
			st = "connected"
		}
		for _, role := range p.Roles {
			counts[[2]string{role, st}]++
		}
	}
	for _, role := range peerRoles {
		for _, st := range peerStates {
			gauge(descPeers, float64(counts[[2]string{role, st}]), role, st)
		}
	}
	gauge(descDisk, float64(dirBytes(n.dataPath)))
	// The store reads the free space only while a reserve is set
	// (limits.min_free_disk_mb > 0, the default): no reserve, no figure.
	if h := n.st.Health(); h.MinFreeBytes > 0 && h.FreeBytes != ^uint64(0) {
		gauge(descFree, float64(h.FreeBytes))
		gauge(descReserve, float64(h.MinFreeBytes))
	}
	if parts, err := n.st.PartBytes(); err == nil {
		for _, p := range store.Parts {
			gauge(descParts, float64(parts[p]), p)
		}
	}
	last := 0.0
	if t := n.catchup.LastCatchUp(); !t.IsZero() {
		last = float64(t.UnixNano()) / 1e9
	}
	gauge(descCatchUp, last)
}

// dirBytes adds up the sizes of the files under dir.
func dirBytes(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			total += fi.Size()
		}
		return nil
	})
	return total
}

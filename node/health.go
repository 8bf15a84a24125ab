package node

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/ferrynet/ferry/natsbridge"
	"github.com/ferrynet/ferry/store"
)

// Health: what /healthz, /readyz and `ferry status` report, and when the
// node gives up.
//
//   - /healthz (liveness) is 503 when the node cannot take changes: the
//     store failed (a commit or fsync failed, the disk filled under Pebble),
//     stalled (work queued and no commit finished for store.StallAfter,
//     5 s), or refuses writes because the disk is below the free-space
//     reserve (limits.min_free_disk_mb), or is corrupt (a read met a block
//     failing its checksum: store/corrupt.go; the node stays up, and a
//     restart rebuilds the store). The reason is in the answer.
//   - /readyz (readiness) is /healthz and also 503 while the node starts or
//     drains, while its NATS connection is down, or while libp2p listens on
//     nothing.
//
// The node exits (ferry run returns the error: one line on stderr, exit
// status 1) when the store failed, or stalled for StallExit: a Pebble store
// whose fsync failed must be reopened (what it holds on disk is then known),
// and a supervisor's restart is the one way back. A low disk does not stop
// the node: writes resume by themselves once space is freed.

// Bounds of the watcher.
const (
	// DefaultStallExit is how long the store may stay stalled before the
	// node exits.
	DefaultStallExit = 30 * time.Second
	// healthEvery is how often the watcher looks at the store.
	healthEvery = 250 * time.Millisecond
)

// HealthReport is the answer of /healthz and /readyz, and Status.Health.
type HealthReport struct {
	// Live: the node can take changes (/healthz).
	Live bool `json:"live"`
	// Ready: live, started, not draining, NATS connected, libp2p listening (/readyz).
	Ready bool `json:"ready"`
	// Reason says why not (the first failing check); empty when ready.
	Reason string            `json:"reason,omitempty"`
	Store  store.Health      `json:"store"`
	NATS   natsbridge.Health `json:"nats"`
	Host   HostHealth        `json:"host"`
	// Draining: the node is stopping (SIGTERM): it answers what it took, takes nothing new.
	Draining bool `json:"draining,omitempty"`
}

// HostHealth is the libp2p host's state.
type HostHealth struct {
	OK        bool   `json:"ok"`
	Reason    string `json:"reason,omitempty"`
	Addrs     int    `json:"addrs"`
	Connected int    `json:"connected"`
}

// Health reports the store, the NATS bridge and the host.
func (n *Node) Health() HealthReport {
	r := HealthReport{Store: n.st.Health(), NATS: n.bridge.Health(), Draining: n.draining.Load()}
	r.Host.Addrs = len(n.host.Addrs())
	r.Host.Connected = len(n.host.Network().Peers())
	if r.Host.Addrs == 0 {
		r.Host.Reason = "libp2p listens on no address"
	}
	r.Host.OK = r.Host.Reason == ""
	r.Live = r.Store.OK
	var why []string
	if !r.Store.OK {
		why = append(why, r.Store.Reason)
	}
	switch {
	case !n.running.Load():
		why = append(why, "starting")
	case r.Draining:
		why = append(why, "draining: the node is stopping")
	}
	if !r.NATS.OK {
		why = append(why, "nats: "+r.NATS.Reason)
	}
	if !r.Host.OK {
		why = append(why, "libp2p: "+r.Host.Reason)
	}
	r.Ready = len(why) == 0
	r.Reason = strings.Join(why, "; ")
	return r
}

// Fatal delivers the error that stops the node: the store failed, or
// stalled for StallExit. `ferry run` closes the node and exits non-zero
// with it. It is sent once.
func (n *Node) Fatal() <-chan error { return n.fatal }

// die sends the node's fatal error, once.
func (n *Node) die(err error) {
	n.fatalOnce.Do(func() {
		n.log.Error("node cannot go on; stopping", "err", err.Error())
		n.fatal <- err
	})
}

// watchHealth turns a failed or long-stalled store into the node's fatal
// error, and logs changes of readiness.
func (n *Node) watchHealth() {
	stallExit := n.opts.StallExit
	if stallExit <= 0 {
		stallExit = DefaultStallExit
	}
	t := time.NewTicker(healthEvery)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		h := n.st.Health()
		switch {
		case h.Failed:
			n.die(fmt.Errorf("%s; exiting so that the store is reopened (nothing acknowledged is lost)", h.Reason))
		case h.Stalled && h.StalledFor >= stallExit:
			n.die(fmt.Errorf("%s; exiting so that the store is reopened (nothing acknowledged is lost)", h.Reason))
		}
		if h.Reason != last {
			if h.Reason != "" {
				n.log.Warn("not healthy", "reason", h.Reason)
			} else {
				n.log.Info("healthy again")
			}
			last = h.Reason
		}
	}
}

// serveHealth answers /healthz (ready=false) or /readyz (ready=true):
// 200 or 503, as text (first line "ok" or "unavailable: <reason>", then
// one line per component) or, with ?format=json or Accept:
// application/json, as the HealthReport.
func (n *Node) serveHealth(ready bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := n.Health()
		ok := h.Live
		if ready {
			ok = h.Ready
		}
		status := http.StatusOK
		if !ok {
			status = http.StatusServiceUnavailable
		}
		w.Header().Set("Cache-Control", "no-store")
		if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(h)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(status)
		reason := h.Store.Reason
		if ready {
			reason = h.Reason
		}
		if ok {
			fmt.Fprintln(w, "ok")
		} else {
			fmt.Fprintln(w, "unavailable: "+reason)
		}
		fmt.Fprint(w, healthLines(h))
	}
}

// healthLines is one line per component.
func healthLines(h HealthReport) string {
	var b strings.Builder
	st := h.Store
	line := func(name string, ok bool, reason, detail string) {
		if ok {
			fmt.Fprintf(&b, "%s: ok (%s)\n", name, detail)
		} else {
			fmt.Fprintf(&b, "%s: %s (%s)\n", name, reason, detail)
		}
	}
	line("store", st.OK, st.Reason, fmt.Sprintf("%d queued, %s free", st.Queued, mibs(st.FreeBytes)))
	nat := "external"
	if h.NATS.Embedded {
		nat = "embedded"
	}
	line("nats", h.NATS.OK, h.NATS.Reason, fmt.Sprintf("%s %s, %d in flight", nat, h.NATS.URL, h.NATS.InFlight))
	line("host", h.Host.OK, h.Host.Reason, fmt.Sprintf("%d addresses, %d peers connected", h.Host.Addrs, h.Host.Connected))
	return b.String()
}

func mibs(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/ferrynet/ferry/eventstream"
	"github.com/ferrynet/ferry/natsbridge"
	"github.com/ferrynet/ferry/store"
)

// Health answers: /healthz (live: the node can take changes) and /readyz
// (ready: live, started, not draining, NATS connected, libp2p listening).
// The node computes the report (Node.Health); see node/health.go for what
// each check means and when the node gives up.

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
	// Events is the JetStream events stream (nats.events), nil when off.
	Events *eventstream.Health `json:"events,omitempty"`
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

// serveHealth answers /healthz (ready=false) or /readyz (ready=true):
// 200 or 503, as text (first line "ok" or "unavailable: <reason>", then
// one line per component) or, with ?format=json or Accept:
// application/json, as the HealthReport.
func (srv *Server) serveHealth(ready bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := srv.node.Health()
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
	if e := h.Events; e != nil {
		state := "caught up"
		if !e.CaughtUp {
			state = fmt.Sprintf("changes up to version %d wait", e.Durable)
		}
		line("events", e.OK, e.Reason, fmt.Sprintf("stream %s through version %d, %s, last sequence %d", e.Stream, e.Through, state, e.LastSeq))
	}
	return b.String()
}

func mibs(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

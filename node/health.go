package node

import (
	"fmt"
	"strings"
	"time"

	"github.com/ferrynet/ferry/admin"
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
//     drains, while its NATS connection is down, while libp2p listens on
//     nothing, or while the events stream (nats.events) cannot store: the
//     disk under it is below the reserve, or its failures have lasted
//     eventstream.DefaultStuckAfter (5 s). The events wait in the change
//     log meanwhile and nothing is lost, so /healthz stays 200 for it (a
//     restart would not help); its line says why.
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
	// healthEvery is how often the watcher looks at the store while it is
	// not settled (store.Settled: work queued, an ENOSPC, compactions or
	// writes waiting for space, a failure).
	healthEvery = 250 * time.Millisecond
	// healthSettledEvery is how often it looks at a settled store that
	// committed something within healthQuiet: anything that unsettles it
	// wakes the watcher at once (store.Changed), and work queued since is
	// seen stalled within this of StallAfter.
	healthSettledEvery = 5 * time.Second
	// healthRestEvery is how often it looks at a store at rest (settled,
	// nothing committed for healthQuiet: store.Resting); the first work
	// queued then wakes it. At 5 s, 100 idle nodes' watchers woke 20 times
	// a second, each with a statfs.
	healthRestEvery = 15 * time.Second
	healthQuiet     = 5 * time.Second
)

// The answer of /healthz and /readyz, and Status.Health (package admin).
type (
	HealthReport = admin.HealthReport
	HostHealth   = admin.HostHealth
)

// Health reports the store, the NATS bridge and the host.
func (n *Node) Health() HealthReport {
	r := HealthReport{Store: n.st.Health(), NATS: n.bridge.Health(), Draining: n.draining.Load()}
	r.Host.Addrs = len(n.host.Addrs())
	r.Host.Connected = len(n.host.Network().Peers())
	if r.Host.Addrs == 0 {
		r.Host.Reason = "libp2p listens on no address"
	}
	r.Host.OK = r.Host.Reason == ""
	if n.events != nil {
		e := n.events.Health()
		r.Events = &e
	}
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
	if r.Events != nil && !r.Events.OK {
		why = append(why, "events: "+r.Events.Reason)
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
// error, and logs changes of readiness. /healthz and /readyz read the
// store's health themselves when asked: this watcher's pace only bounds how
// soon the node exits or logs.
func (n *Node) watchHealth() {
	stallExit := n.opts.StallExit
	if stallExit <= 0 {
		stallExit = DefaultStallExit
	}
	t := time.NewTimer(healthEvery)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-n.st.Changed():
			t.Stop()
		}
		h := n.st.Health()
		// One timer, reset each look: often while the store is busy or
		// unwell, rarely at rest (100 idle nodes looked 400 times a second).
		switch {
		case n.st.Resting(healthQuiet):
			t.Reset(healthRestEvery)
		case n.st.Settled():
			t.Reset(healthSettledEvery)
		default:
			t.Reset(healthEvery)
		}
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

// StartedAt is when Start ran (zero before).
func (n *Node) StartedAt() time.Time { return n.startedAt }

package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/node"
)

// Monitoring-plugin states and exit codes (Nagios, Icinga, Sensu, a
// container's HEALTHCHECK: anything non-zero is unhealthy there).
const (
	checkOK       = 0
	checkWarning  = 1
	checkCritical = 2
)

var stateNames = [...]string{"OK", "WARNING", "CRITICAL"}

// checkLimits are the thresholds of ferry check.
type checkLimits struct {
	backlogWarning, backlogCritical time.Duration
}

// checkResult is one line of ferry check.
type checkResult struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Detail string `json:"detail"`
	code   int
}

// checkInput is what the node reports, read through its admin API.
type checkInput struct {
	status     node.Status
	deliveries []node.DeliveryState
	// reviewerUp: the configured reviewer is connected (nil: no reviewer,
	// or this node is the reviewer).
	reviewerUp *bool
	now        time.Time
}

// evaluate judges a node's report: pure, so every state is a table test.
func evaluate(in checkInput, lim checkLimits) []checkResult {
	res := func(name string, code int, format string, args ...any) checkResult {
		return checkResult{Name: name, State: strings.ToLower(stateNames[code]), Detail: fmt.Sprintf(format, args...), code: code}
	}
	var out []checkResult
	h := in.status.Health
	switch {
	case !h.Live:
		out = append(out, res("health", checkCritical, "%s", h.Reason))
	case !h.Ready:
		out = append(out, res("health", checkWarning, "not ready: %s", h.Reason))
	default:
		out = append(out, res("health", checkOK, "live and ready"))
	}

	// The oldest change a receiver has not acknowledged.
	var oldest node.DeliveryState
	for _, d := range in.deliveries {
		if d.Pending > 0 && !d.OldestPending.IsZero() && !d.Held && (oldest.OldestPending.IsZero() || d.OldestPending.Before(oldest.OldestPending)) {
			oldest = d
		}
	}
	if oldest.OldestPending.IsZero() {
		out = append(out, res("backlog", checkOK, "every receiver acknowledged everything (%d pending)", in.status.PendingAcks))
	} else {
		age := in.now.Sub(oldest.OldestPending).Round(time.Second)
		code := checkOK
		switch {
		case age >= lim.backlogCritical:
			code = checkCritical
		case age >= lim.backlogWarning:
			code = checkWarning
		}
		detail := fmt.Sprintf("%d pending; the oldest, for %s (%s lane), waits %s", in.status.PendingAcks, oldest.Receiver, oldest.Lane, age)
		if oldest.LastError != "" {
			detail += ": " + oneLine(oldest.LastError, 120)
		}
		out = append(out, res("backlog", code, "%s", detail))
	}

	switch {
	case in.status.IsReviewer:
		out = append(out, res("review", checkOK, "this node is the reviewer (%d requests waiting)", in.status.WaitingRequests))
	case in.reviewerUp == nil:
		out = append(out, res("review", checkOK, "no reviewer configured"))
	case *in.reviewerUp:
		out = append(out, res("review", checkOK, "the reviewer is connected"))
	default:
		out = append(out, res("review", checkWarning, "the reviewer %s is not connected: submitted requests and decisions wait", in.status.Reviewer))
	}

	free, reserve := h.Store.FreeBytes, h.Store.MinFreeBytes
	mib := func(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
	switch {
	case h.Store.DiskLow:
		out = append(out, res("disk", checkCritical, "%s free, below the reserve of %s: writes are refused", mib(free), mib(reserve)))
	case reserve > 0 && free < 2*reserve:
		out = append(out, res("disk", checkWarning, "%s free, less than twice the reserve of %s", mib(free), mib(reserve)))
	default:
		out = append(out, res("disk", checkOK, "%s free (reserve %s)", mib(free), mib(reserve)))
	}
	return out
}

// containerCode is the exit code of a container HEALTHCHECK (Docker: 0
// healthy, 1 unhealthy, 2 reserved): unhealthy only when this node itself
// is in trouble (not answering, not live, disk below the reserve). A
// backlog to an away partner, or an away reviewer, is no reason to restart
// this node.
func containerCode(rs []checkResult) int {
	for _, r := range rs {
		if r.code == checkCritical && (r.Name == "node" || r.Name == "health" || r.Name == "disk") {
			return 1
		}
	}
	return 0
}

// worst is the exit code of a set of results.
func worst(rs []checkResult) int {
	code := checkOK
	for _, r := range rs {
		code = max(code, r.code)
	}
	return code
}

func checkCmd(g *globals) *cobra.Command {
	lim := checkLimits{}
	containerHealth := false
	c := &cobra.Command{Use: "check", Args: cobra.NoArgs,
		Short: "Check the local node as a monitoring plugin does: exit 0 ok, 1 warning, 2 critical",
		Long: "Checks the local node's health (/healthz, /readyz), the age of its oldest unacknowledged delivery,\n" +
			"whether its reviewer is connected, and its free disk against the reserve. Prints one summary line,\n" +
			"then a line per check, and exits with the worst state: 0 OK, 1 WARNING, 2 CRITICAL (a node that\n" +
			"does not answer is CRITICAL). The container image's HEALTHCHECK runs it with --container.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs := runChecks(g, lim)
			if err := printChecks(cmd.OutOrStdout(), g, rs); err != nil {
				return err
			}
			code := worst(rs)
			if containerHealth {
				code = containerCode(rs)
			}
			if code != checkOK {
				return exitError{code}
			}
			return nil
		}}
	c.Flags().BoolVar(&containerHealth, "container", false, "exit as a container HEALTHCHECK expects: 1 (unhealthy) when the node does not answer, is not live or is below its disk reserve, else 0")
	c.Flags().DurationVar(&lim.backlogWarning, "backlog-warning", 5*time.Minute, "a delivery unacknowledged this long is a warning")
	c.Flags().DurationVar(&lim.backlogCritical, "backlog-critical", time.Hour, "a delivery unacknowledged this long is critical")
	return c
}

// runChecks reads the node's report; a node that cannot be read is one
// critical result.
func runChecks(g *globals, lim checkLimits) []checkResult {
	unreachable := func(err error) []checkResult {
		return []checkResult{{Name: "node", State: "critical", Detail: err.Error(), code: checkCritical}}
	}
	c, err := g.client()
	if err != nil {
		return unreachable(err)
	}
	in := checkInput{now: time.Now()}
	var st struct{ Status node.Status }
	if err := c.call("GET", "/api/v1/status", nil, &st); err != nil {
		return unreachable(err)
	}
	in.status = st.Status
	var ds struct{ Deliveries []node.DeliveryState }
	if err := c.call("GET", "/api/v1/deliveries", nil, &ds); err != nil {
		return unreachable(err)
	}
	in.deliveries = ds.Deliveries
	if r := in.status.Reviewer; r != "" && !in.status.IsReviewer {
		peers, err := listAll[node.PeerInfo](c, "/api/v1/peers", nil, "peers")
		if err != nil {
			return unreachable(err)
		}
		up := false
		for _, p := range peers {
			if p.PeerID == r {
				up = p.Connected
			}
		}
		in.reviewerUp = &up
	}
	return evaluate(in, lim)
}

func printChecks(w io.Writer, g *globals, rs []checkResult) error {
	code := worst(rs)
	if g.json {
		return g.emit(w, map[string]any{"state": strings.ToLower(stateNames[code]), "checks": rs}, nil)
	}
	var bad []string
	for _, r := range rs {
		if r.code == code && code != checkOK {
			bad = append(bad, r.Name+": "+r.Detail)
		}
	}
	summary := "every check passed"
	if len(bad) > 0 {
		summary = strings.Join(bad, "; ")
	}
	fmt.Fprintf(w, "FERRY %s - %s\n", stateNames[code], summary)
	for _, r := range rs {
		fmt.Fprintf(w, "%-8s %-8s %s\n", r.State, r.Name, r.Detail)
	}
	return nil
}

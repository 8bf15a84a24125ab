package faults

import (
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// TestQuietStreamCloseIsNoFailure (issue 21, point 1), as an operator saw
// it: two `ferry run` processes, one create, then the quiet delivery stream
// is closed 10 s after the last delivery. Nothing about it reaches the
// operator: ferry_delivery_stream_failures_total stays 0, no INFO
// "delivery to peer failed" line, no last error on B's row. Before, the
// counter went 0 -> 1 and the reset was shown as B's last error.
func TestQuietStreamCloseIsNoFailure(t *testing.T) {
	a := proc.New(t, proc.Options{Name: "A"})
	b := proc.New(t, proc.Options{Name: "B"})
	proc.Partners(a, b)
	a.Configure(func(c *node.Config) { c.Log.Level = "debug" }) // the quiet close is said at DEBUG
	a.Start()
	b.Start()
	app := connect(t, a.NATSURL())
	if o, r := request(app, createMsg("vm1", 16, "k1"), 10*time.Second); o != okReply {
		t.Fatalf("create: %v %+v", o, r.Error)
	}
	testnet.WaitFor(t, 20*time.Second, "B holds vm1", func() bool { return resources(t, b)["vm1"] })
	testnet.WaitFor(t, 40*time.Second, "A closes its quiet stream to B", func() bool {
		return strings.Contains(a.StderrAll(), "nothing owed: closing the quiet delivery streams")
	})
	// The far end answers the close (EOF, or a reset of the closed stream)
	// and A's reader ends.
	testnet.WaitFor(t, 10*time.Second, "A's stream to B is down", func() bool {
		return strings.Contains(a.StderrAll(), "closed a quiet delivery stream")
	})
	if n := metric(t, a, "ferry_delivery_stream_failures_total"); n != 0 {
		t.Fatalf("ferry_delivery_stream_failures_total is %d after a quiet close", n)
	}
	for _, l := range strings.Split(a.StderrAll(), "\n") {
		if strings.Contains(l, "delivery to peer failed") && !strings.Contains(l, "level=DEBUG") {
			t.Fatalf("A logged a failure for a quiet close: %s", l)
		}
	}
	code, body, err := a.Get("/api/v1/deliveries")
	if err != nil || code != 200 || strings.Contains(string(body), `"last_error"`) {
		t.Fatalf("A's deliveries after a quiet close: %d %v %s", code, err, body)
	}
}

package faults

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/wait"
)

// Apps' delivery status (ferry.delivery.status, ferry.delivery.wait) on two
// `ferry run` processes, A and its partner B: a wait completes on B's
// acknowledgement; with B SIGKILLed, a wait answers at its timeout, not
// complete, and the status says pending with the attempts A made; once B is
// back, the waits complete. And ten thousand open waits cost the node no
// CPU while nothing moves.

type deliveryAnswer struct {
	OK        bool  `json:"ok"`
	Complete  *bool `json:"complete"`
	Receivers []struct {
		ID        string `json:"id"`
		Name      string `json:"name"`
		State     string `json:"state"`
		Attempts  int    `json:"attempts"`
		LastError string `json:"last_error"`
	} `json:"receivers"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func deliveryAsk(t *testing.T, nc *nats.Conn, subject string, body string, timeout time.Duration) deliveryAnswer {
	t.Helper()
	m, err := nc.Request(subject, []byte(body), timeout)
	if err != nil {
		t.Fatalf("%s %s: %v", subject, body, err)
	}
	var a deliveryAnswer
	if err := json.Unmarshal(m.Data, &a); err != nil {
		t.Fatalf("%s: %v: %s", subject, err, m.Data)
	}
	if !a.OK {
		t.Fatalf("%s %s: %s", subject, body, m.Data)
	}
	return a
}

// only is the state of the single receiver of an answer.
func (a deliveryAnswer) only(t *testing.T) (state string, attempts int, lastErr string) {
	t.Helper()
	if len(a.Receivers) != 1 {
		t.Fatalf("answer names %d receivers, want B alone: %+v", len(a.Receivers), a)
	}
	r := a.Receivers[0]
	return r.State, r.Attempts, r.LastError
}

func create(t *testing.T, nc *nats.Conn, id string) uint64 {
	t.Helper()
	o, r := request(nc, createMsg(id, 32, ""), 10*time.Second)
	if o != okReply {
		t.Fatalf("create %s: %v %+v", id, o, r.Error)
	}
	return r.Version
}

// partnersAB makes A and B each other's partners, B bootstrapping from A.
func partnersAB(t *testing.T) (a, b *proc.Node) {
	t.Helper()
	a = proc.New(t, proc.Options{Name: "A"})
	b = proc.New(t, proc.Options{Name: "B"})
	proc.Partners(a, b)
	b.SetBootstrap(a)
	return a, b
}

func TestDeliveryWaitAcrossPartnerCrash(t *testing.T) {
	a, b := partnersAB(t)
	a.Start()
	b.Start()
	app := connect(t, a.NATSURL())
	v1 := create(t, app, "d1")
	w := deliveryAsk(t, app, "ferry.delivery.wait", fmt.Sprintf(`{"version":%d,"timeout_ms":30000}`, v1), 35*time.Second)
	if st, _, _ := w.only(t); !*w.Complete || st != "acked" || w.Receivers[0].ID != b.PeerID().String() || w.Receivers[0].Name != "B" {
		t.Fatalf("wait with B up: %+v", w)
	}

	b.Kill()
	v2 := create(t, app, "d2")
	start := time.Now()
	w = deliveryAsk(t, app, "ferry.delivery.wait", fmt.Sprintf(`{"version":%d,"timeout_ms":1500}`, v2), 10*time.Second)
	took := time.Since(start)
	if st, _, _ := w.only(t); *w.Complete || st != "pending" {
		t.Fatalf("wait with B killed: %+v", w)
	}
	if took < 1500*time.Millisecond {
		t.Fatalf("a wait of 1500 ms answered not complete after %v", took)
	}
	// The status says pending, with the attempts A made to reach B and why
	// the last one failed.
	var attempts int
	var lastErr string
	wait.Until(t, 30*time.Second, "status shows A's attempts to reach B", func() error {
		s := deliveryAsk(t, app, "ferry.delivery.status", fmt.Sprintf(`{"version":%d}`, v2), 5*time.Second)
		var st string
		st, attempts, lastErr = s.only(t)
		if st != "pending" || attempts < 1 || lastErr == "" {
			return fmt.Errorf("B %s, %d attempts, last error %q", st, attempts, lastErr)
		}
		return nil
	})
	t.Logf("B killed: pending, %d attempts, last error %q", attempts, lastErr)

	// A wait opened while B is away completes once B is back, and so does
	// a new one.
	inbox := nats.NewInbox()
	open, err := app.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := app.PublishRequest("ferry.delivery.wait", inbox, fmt.Appendf(nil, `{"version":%d,"timeout_ms":120000}`, v2)); err != nil {
		t.Fatal(err)
	}
	_ = app.Flush()
	b.Start()
	m, err := open.NextMsg(60 * time.Second)
	if err != nil {
		t.Fatalf("the wait opened while B was away: %v", err)
	}
	var back deliveryAnswer
	if err := json.Unmarshal(m.Data, &back); err != nil || !back.OK || !*back.Complete {
		t.Fatalf("the wait opened while B was away: %s", m.Data)
	}
	w = deliveryAsk(t, app, "ferry.delivery.wait", fmt.Sprintf(`{"version":%d,"timeout_ms":30000}`, v2), 35*time.Second)
	if st, _, _ := w.only(t); !*w.Complete || st != "acked" {
		t.Fatalf("wait after B came back: %+v", w)
	}
}

// metricOf reads one unlabelled sample of a node's /metrics (-1: absent).
func metricOf(t *testing.T, n *proc.Node, name string) float64 {
	t.Helper()
	code, body, err := n.Get("/metrics")
	if err != nil || code != 200 {
		return -1
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// cpuOf is a process's user+system CPU time so far (/proc/<pid>/stat).
func cpuOf(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:] // the command name may hold spaces
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // sysconf(_SC_CLK_TCK) on Linux
	return time.Duration(utime+stime) * time.Second / clkTck
}

// idleCPU is the node's CPU time over d, as a share of d.
func idleCPU(t *testing.T, n *proc.Node, d time.Duration) (time.Duration, float64) {
	t.Helper()
	c0, w0 := cpuOf(t, n.Pid()), time.Now()
	<-time.After(d) // the measurement window itself: nothing to wait for
	used, wall := cpuOf(t, n.Pid())-c0, time.Since(w0)
	return used, float64(used) / float64(wall)
}

// Ten thousand open waits on a change whose partner is down cost the node
// no CPU while nothing moves (no goroutine, no timer and no poll per wait);
// when the partner comes back, one floor move answers them all.
func TestDeliveryWaitsCostNothingWhileIdle(t *testing.T) {
	const waits = 10_000
	a, b := partnersAB(t)
	a.Start() // B stays down
	app := connect(t, a.NATSURL())
	v := create(t, app, "idle")

	// Replies come to one subscription; each wait its own reply subject.
	inbox := nats.NewInbox()
	var complete, other atomic.Int64
	sub, err := app.Subscribe(inbox+".*", func(m *nats.Msg) {
		var ans deliveryAnswer
		if json.Unmarshal(m.Data, &ans) == nil && ans.OK && ans.Complete != nil && *ans.Complete {
			complete.Add(1)
		} else {
			other.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)

	base, baseShare := idleCPU(t, a, 3*time.Second)
	body := fmt.Appendf(nil, `{"version":%d,"timeout_ms":300000}`, v)
	for i := range waits {
		if err := app.PublishRequest("ferry.delivery.wait", inbox+"."+strconv.Itoa(i), body); err != nil {
			t.Fatal(err)
		}
	}
	_ = app.Flush()
	wait.Until(t, 60*time.Second, "A holds every wait", func() error {
		if n := metricOf(t, a, "ferry_delivery_waiters"); n != waits {
			return fmt.Errorf("ferry_delivery_waiters %v", n)
		}
		return nil
	})
	if n := other.Load() + complete.Load(); n != 0 {
		t.Fatalf("%d waits answered while B is down", n)
	}
	used, share := idleCPU(t, a, 5*time.Second)
	t.Logf("A's CPU while idle: %v in 3 s with no wait open (%.2f%% of one core), %v in 5 s with %d waits open (%.2f%%)",
		base, 100*baseShare, used, waits, 100*share)
	if share > 0.20 {
		t.Fatalf("A used %v of CPU in 5 s of idle with %d waits open", used, waits)
	}

	b.Start()
	wait.Until(t, 60*time.Second, "every wait completes once B is back", func() error {
		if c, o := complete.Load(), other.Load(); c != waits || o != 0 {
			return fmt.Errorf("%d complete, %d other answers", c, o)
		}
		return nil
	})
	if n := metricOf(t, a, "ferry_delivery_waiters"); n != 0 {
		t.Fatalf("ferry_delivery_waiters %v after every wait was answered", n)
	}
}

package bench

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
)

// catchUpResult is a returning partner or a new member catching up.
type catchUpResult struct {
	N, Rows  int
	Build    time.Duration // making the backlog at the origin or reviewer
	Elapsed  time.Duration // from the receiver's process start until it holds everything
	Startup  time.Duration // of which: until its process was ready
	Check    string
	Failed   bool
	Snapshot bool // the member took the tables from a snapshot
}

// status reads a node's status through its admin API.
func nodeStatus(t testing.TB, n *proc.Node) node.Status {
	t.Helper()
	code, body, err := n.Get("/api/v1/status")
	if err != nil || code != 200 {
		t.Fatalf("%s status: %d %v %s", n.Name(), code, err, body)
	}
	var out struct{ Status node.Status }
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	return out.Status
}

// pendingFor is what sender still owes receiver in a lane (its admin API).
func pendingFor(t testing.TB, sender *proc.Node, receiver, lane string) int {
	t.Helper()
	code, body, err := sender.Get("/api/v1/deliveries")
	if err != nil || code != 200 {
		t.Fatalf("%s deliveries: %d %v", sender.Name(), code, err)
	}
	var out struct{ Deliveries []node.DeliveryState }
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	for _, d := range out.Deliveries {
		if d.Receiver == receiver && d.Lane == lane {
			return d.Pending
		}
	}
	return -1
}

// pipelineNATS sends n requests built by body(i) on subject with up to
// inflight outstanding and fails the test on any refusal.
func pipelineNATS(t testing.TB, nc *nats.Conn, subject string, n, inflight int, body func(i int) []byte) {
	t.Helper()
	sem := make(chan struct{}, inflight)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr string
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			m, err := nc.Request(subject, body(i), time.Minute)
			if err == nil && strings.Contains(string(m.Data), `"ok":true`) {
				return
			}
			mu.Lock()
			if firstErr == "" {
				firstErr = fmt.Sprintf("%s %d: %v %s", subject, i, err, msgData(m))
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != "" {
		t.Fatal(firstErr)
	}
}

// partnerBack: partner B is stopped while A takes n creates; the clock runs
// from B's process start until A's floor for B covers them all (B applied
// and acknowledged every one).
func partnerBack(t testing.TB, n, inflight int) catchUpResult {
	a, bs, nc, _ := procNet(t, 1, 1, 0)
	b := bs[0]
	if code := b.Term(30 * time.Second); code != 0 {
		t.Fatalf("B exited %d", code)
	}
	begin := now()
	pipelineNATS(t, nc, propagateSub, n, inflight, func(i int) []byte { return propagateBody(nil, "e"+strconv.Itoa(i)) })
	r := catchUpResult{N: n, Build: now() - begin}
	if p := pendingFor(t, a, "B1", "resource"); p != n {
		t.Fatalf("A owes B %d changes, want %d", p, n)
	}
	if os.Getenv("FERRY_BENCH_CATCHUP_RESTART") != "" {
		// For profiles: A starts again, so that its profile holds the
		// catch-up alone (its sender then starts from its stored floors).
		if code := a.Term(30 * time.Second); code != 0 {
			t.Fatalf("A exited %d", code)
		}
		a.Start()
	}
	cpuA := cpuOf(a.Pid())
	start := now()
	b.Start()
	r.Startup = now() - start
	deadline := time.Now().Add(5 * time.Minute)
	var firstAck time.Duration // when B applied its first
	var curve []string         // under FERRY_BENCH_LOG: seconds since B's start and what B applied
	// Look at B's count of changes applied (durable: counted once
	// committed) until it covers the n, then ask A what it still owes B.
	// Not A at every look: its count of what it owes scans its log, and
	// done every 10 ms that took A more CPU than the catch-up itself.
	for {
		acked, bySync := appliedAt(t, b)
		if acked >= n && pendingFor(t, a, "B1", "resource") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("B still misses %d changes (B applied %d of %d, %d of them through catch-up)",
				pendingFor(t, a, "B1", "resource"), acked, n, bySync)
		}
		if firstAck == 0 && acked > 0 {
			firstAck = now() - start
		}
		if os.Getenv("FERRY_BENCH_LOG") != "" {
			curve = append(curve, fmt.Sprintf("%.3f:%d", (now()-start).Seconds(), acked))
		}
		// Not wait.For's growing pause: the end of this loop is the
		// measured time. A look costs B a scrape of its metrics (about a
		// millisecond of its CPU), so it looks again in half the time
		// the rest needs at the rate so far, every 10 ms near the end.
		pause := 10 * time.Millisecond
		if el := now() - start; acked > 0 && acked < n {
			pause = max(pause, min(200*time.Millisecond, time.Duration(float64(el)*float64(n-acked)/float64(acked)/2)))
		}
		time.Sleep(pause)
	}
	r.Elapsed = now() - start
	if _, k := appliedAt(t, b); k > 0 {
		t.Logf("B took %d of the %d changes through catch-up, the rest by the stream", k, n)
	}
	cpuB, cpuA := cpuOf(b.Pid()), cpuOf(a.Pid())-cpuA
	if firstAck == 0 {
		firstAck = r.Elapsed
	}
	st := nodeStatus(t, b)
	r.Check = fmt.Sprintf("A owes B nothing; B's store at version %d; B applied its first at %.2fs; CPU in that time: A %.2fs, B %.2fs",
		st.StoreVersion, firstAck.Seconds(), cpuA.Seconds(), cpuB.Seconds())
	if os.Getenv("FERRY_BENCH_EVENTS") != "off" {
		// B's events stream (issue 20) stores them after: when it holds them all.
		for metricAt(t, b, "ferry_events_stream_caught_up") != 1 {
			if time.Now().After(deadline) {
				t.Fatal("B's events stream did not catch up")
			}
			time.Sleep(10 * time.Millisecond)
		}
		r.Check += fmt.Sprintf("; B's events stream held them all at %.2fs (B's CPU then %.2fs)", (now() - start).Seconds(), cpuOf(b.Pid()).Seconds())
	}
	if os.Getenv("FERRY_BENCH_LOG") != "" {
		t.Logf("acknowledged by B over time: %s\nB's log:\n%s\nA's log:\n%s", strings.Join(curve, " "), b.StderrAll(), a.StderrAll())
	}
	return r
}

// appliedAt is what n applied of the resource changes it received since
// its process started, by the stream (ferry_delivery_received_total) and by
// catch-up (ferry_sync_changes_total: a partner that starts before its
// partner is connected asks for that partner's chain in catch-up's partner
// round, and when the connection comes up in between, the changes come
// that way): all, and through catch-up. One scrape of n's metrics.
func appliedAt(t testing.TB, n *proc.Node) (all int, bySync int) {
	v := metricsAt(t, n, `ferry_delivery_received_total{outcome="applied"}`, `ferry_sync_changes_total{outcome="applied",what="resources"}`)
	return int(v[0] + v[1]), int(v[1])
}

// metricAt is the value of n's metric named (with its labels) name.
func metricAt(t testing.TB, n *proc.Node, name string) float64 {
	t.Helper()
	return metricsAt(t, n, name)[0]
}

// metricsAt reads the values of n's metrics named (with their labels) names
// from one scrape.
func metricsAt(t testing.TB, n *proc.Node, names ...string) []float64 {
	t.Helper()
	// Not compressed: the look should cost the node little.
	code, body, err := n.Do("GET", "/metrics", nil, http.Header{"Accept-Encoding": {"identity"}})
	if err != nil || code != 200 {
		t.Fatalf("%s metrics: %d %v", n.Name(), code, err)
	}
	out, found := make([]float64, len(names)), make([]bool, len(names))
	for line := range strings.Lines(string(body)) {
		for i, name := range names {
			v, ok := strings.CutPrefix(line, name+" ")
			if !ok {
				continue
			}
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s metrics: %q: %v", n.Name(), line, err)
			}
			out[i], found[i] = f, true
		}
	}
	for i, ok := range found {
		if !ok {
			t.Fatalf("%s metrics: no %s", n.Name(), names[i])
		}
	}
	return out
}

// newMember: reviewer R makes rows decisions (each a request it submits and
// accepts over NATS) and resources creates; N, a member and R's partner
// that R has never met, starts fresh. The clock runs from N's process start
// until N applied every decision and R owes it no resource.
func newMember(t testing.TB, rows, resources, inflight int) catchUpResult {
	quiet := func(o proc.Options) proc.Options { o.LogLevel = "warn"; return o }
	r := proc.New(t, quiet(proc.Options{Name: "R"}))
	m := proc.New(t, quiet(proc.Options{Name: "N"}))
	r.SetPartners(m)
	m.SetPartners(r)
	r.SetReviewer(r)
	m.SetReviewer(r)
	m.SetBootstrap(r)
	r.Configure(func(c *node.Config) { c.Review.NATSDecide = true })
	r.Start()
	nc, err := nats.Connect(r.NATSURL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	// A reviewer whose members are all away decides once it waited for
	// one of them for its grace period (it compares decisions with a member
	// first): wait for that.
	wait.Until(t, time.Minute, "R decides", func() error {
		msg, err := nc.Request("ferry.review.decide", []byte(`{"request_id":999999999,"decision":"accept"}`), 10*time.Second)
		if err != nil || strings.Contains(string(msg.Data), "unavailable") {
			return fmt.Errorf("%v %s", err, msgData(msg))
		}
		return nil
	})
	begin := now()
	pad := strings.Repeat("x", 32)
	// Submit and decide in waves: a request's local id comes back in its reply.
	const wave = 10_000
	for from := 0; from < rows; from += wave {
		k := min(wave, rows-from)
		ids := make([]uint64, k)
		var mu sync.Mutex
		sem := make(chan struct{}, inflight)
		var wg sync.WaitGroup
		var firstErr string
		for i := range k {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				id := from + i + 1
				msg, err := nc.Request("ferry.review.submit", []byte(fmt.Sprintf(
					`{"type":"insert","table_name":"big","table_id":%d,"data":{"n":%d,"pad":%q}}`, id, id, pad)), time.Minute)
				var rep struct {
					OK      bool
					Request struct{ ID uint64 }
				}
				if err == nil {
					_ = json.Unmarshal(msg.Data, &rep)
				}
				mu.Lock()
				defer mu.Unlock()
				if !rep.OK && firstErr == "" {
					firstErr = fmt.Sprintf("submit %d: %v %s", id, err, msgData(msg))
				}
				ids[i] = rep.Request.ID
			}()
		}
		wg.Wait()
		if firstErr != "" {
			t.Fatal(firstErr)
		}
		pipelineNATS(t, nc, "ferry.review.decide", k, inflight, func(i int) []byte {
			return []byte(fmt.Sprintf(`{"request_id":%d,"decision":"accept"}`, ids[i]))
		})
	}
	pipelineNATS(t, nc, propagateSub, resources, inflight, func(i int) []byte { return propagateBody(nil, "r"+strconv.Itoa(i)) })
	res := catchUpResult{Rows: rows, N: resources, Build: now() - begin}
	if st := nodeStatus(t, r); st.DecisionApplied != uint64(rows) {
		t.Fatalf("R applied %d decisions, want %d", st.DecisionApplied, rows)
	}
	start := now()
	m.Start()
	res.Startup = now() - start
	deadline := time.Now().Add(10 * time.Minute)
	for {
		st := nodeStatus(t, m)
		if st.DecisionApplied == uint64(rows) && pendingFor(t, r, "N", "resource") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("N applied %d of %d decisions; R owes it %d resources", st.DecisionApplied, rows, pendingFor(t, r, "N", "resource"))
		}
		// A fixed 10 ms look: the end of this loop is the measured time.
		time.Sleep(10 * time.Millisecond)
	}
	res.Elapsed = now() - start
	code, body, err := m.Get("/metrics")
	if err != nil || code != 200 {
		t.Fatal(err)
	}
	res.Snapshot = strings.Contains(string(body), `ferry_sync_changes_total{outcome="applied",what="snapshot"}`) &&
		!strings.Contains(string(body), `ferry_sync_changes_total{outcome="applied",what="snapshot"} 0`)
	res.Check = fmt.Sprintf("N applied %d decisions; R owes N no resource; snapshot %v", rows, res.Snapshot)
	return res
}

package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
)

// TestScaleProcs is the process row of the scale report (issue 22,
// docs/BENCHMARKS.md "Scale"): N separate `ferry run` processes on this
// machine, node 0 the reviewer and everyone's bootstrap, connections.max
// 40. It reports full membership after the first start, one decision on
// every node after its accept, a burst of decisions (time until every node
// applied them and every acknowledgement row at the reviewer is sended),
// and the most connections any process held, the reviewer's apart,
// sampled every half second on every process: during the start (until
// every process is within connections.max) and while the decisions flow. `make scale` runs it with FERRY_SCALE_PROCS=60:
//
//	FERRY_SCALE_PROCS=60 go test ./bench/ -run '^TestScaleProcs$' -v -count=1 -timeout 30m
//
// FERRY_SCALE_PROCS_BURST sets the burst (default 1000).
func TestScaleProcs(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("FERRY_SCALE_PROCS"))
	if n < 2 {
		t.Skip("FERRY_SCALE_PROCS=N runs the scale report on N ferry run processes (make scale)")
	}
	burst := 1000
	if s := os.Getenv("FERRY_SCALE_PROCS_BURST"); s != "" {
		burst, _ = strconv.Atoi(s)
	}
	const maxConns = 40
	var nodes []*proc.Node
	for i := range n {
		nodes = append(nodes, proc.New(t, proc.Options{Name: fmt.Sprintf("p%02d", i), LogLevel: "warn"}))
	}
	rev := nodes[0]
	for _, x := range nodes {
		x.Configure(func(c *node.Config) {
			c.Reviewer = rev.PeerID().String()
			c.Connections.Max = maxConns
		})
		if x != rev {
			x.SetBootstrap(rev)
		}
	}

	// Connections of every process, sampled from the first start on, the
	// most of each phase kept apart: the start (until every process is
	// within connections.max: each joining one dials the bootstrap, which
	// lets them go after its trim grace) and the decisions.
	var mu sync.Mutex
	const phaseStart, phaseBurst = 0, 1
	phase := phaseStart
	most := [2][]int{make([]int, n), make([]int, n)}
	samples := [2]int{}
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			var wg sync.WaitGroup
			for i, x := range nodes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if c := procMetric(x, "ferry_connections"); c >= 0 {
						mu.Lock()
						most[phase][i] = max(most[phase][i], c)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			mu.Lock()
			samples[phase]++
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		sampler.Wait()
	}()

	start := time.Now()
	rev.Start()
	var starts sync.WaitGroup
	errs := make(chan error, n)
	for _, x := range nodes[1:] {
		starts.Add(1)
		go func() {
			defer starts.Done()
			if err := x.StartErr(); err != nil {
				errs <- err
			}
		}()
	}
	starts.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	started := time.Since(start)
	statuses := func() []admin {
		out := make([]admin, n)
		var wg sync.WaitGroup
		for i, x := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out[i] = procStatus(x)
			}()
		}
		wg.Wait()
		return out
	}
	wait.Until(t, 5*time.Minute, "every process knows every member", func() error {
		for _, x := range nodes {
			if k := procMetric(x, "ferry_members_known"); k != n {
				return fmt.Errorf("%s knows %d members of %d", x.Name(), k, n)
			}
		}
		return nil
	})
	membership := time.Since(start)
	wait.Until(t, 5*time.Minute, "every process within connections.max", func() error {
		for _, x := range nodes {
			if c := procMetric(x, "ferry_connections"); c > maxConns || c < 0 {
				return fmt.Errorf("%s holds %d connections", x.Name(), c)
			}
		}
		return nil
	})
	settled := time.Since(start)

	nc, err := nats.Connect(rev.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	decide := func(i int) {
		var r struct {
			OK      bool
			Request review.Row
		}
		m, err := nc.Request("ferry.review.submit", fmt.Appendf(nil, `{"type":"insert","table_name":"places","table_id":%d,"data":{"name":"p%d"}}`, i, i), 10*time.Second)
		if err != nil || json.Unmarshal(m.Data, &r) != nil || !r.OK {
			t.Fatalf("submit %d: %v", i, err)
		}
		code, body, err := rev.Do(http.MethodPost, fmt.Sprintf("/api/v1/requests/%d/accept", r.Request.ID), nil, nil)
		if err != nil || code != http.StatusOK {
			t.Fatalf("accept %d: %d %s %v", r.Request.ID, code, body, err)
		}
	}
	allApplied := func(seq uint64) func() error {
		return func() error {
			for i, s := range statuses() {
				if s.DecisionApplied < seq {
					return fmt.Errorf("%s applied %d of %d", nodes[i].Name(), s.DecisionApplied, seq)
				}
			}
			return nil
		}
	}
	mu.Lock()
	phase = phaseBurst
	mu.Unlock()
	one := time.Now()
	decide(1)
	wait.Until(t, 2*time.Minute, "one decision on every process", allApplied(1))
	oneAll := time.Since(one)

	b := time.Now()
	for i := range burst {
		decide(i + 2)
	}
	made := time.Since(b)
	wait.Until(t, 10*time.Minute, "the burst on every process", allApplied(uint64(burst+1)))
	burstAll := time.Since(b)
	wait.Until(t, 10*time.Minute, "every decision row sended at the reviewer", func() error {
		if first, err := rev.PendingDecisionAck(); err != nil || first != "" {
			return fmt.Errorf("decision rows pending (first: %s) %v", first, err)
		}
		return nil
	})
	sended := time.Since(b)
	close(stop)
	sampler.Wait()

	mu.Lock()
	peak := func(ph int) (rev, others, over int) {
		for i, c := range most[ph][1:] {
			others = max(others, c)
			if c > maxConns {
				over++
				if ph == phaseBurst {
					t.Logf("%s held %d connections at most while decisions flowed", nodes[i+1].Name(), c)
				}
			}
		}
		return most[ph][0], others, over
	}
	revStart, othersStart, _ := peak(phaseStart)
	revBurst, othersBurst, over := peak(phaseBurst)
	ns := samples
	mu.Unlock()
	row := fmt.Sprintf("| %d processes | %v | %v | %v (reviewer %d, others %d at most) | %v | %d in %v: on every process %v, every row sended %v | %d | %d | %d samples; %d processes above %d |",
		n, started.Round(10*time.Millisecond), membership.Round(10*time.Millisecond), settled.Round(10*time.Millisecond), revStart, othersStart,
		oneAll.Round(10*time.Millisecond), burst, made.Round(10*time.Millisecond), burstAll.Round(10*time.Millisecond), sended.Round(10*time.Millisecond),
		revBurst, othersBurst, ns[phaseBurst], over, maxConns)
	t.Log("| network | all started | full membership (after the first start) | every process within connections.max (the start's most) | one decision on all | burst | reviewer's most connections during the decisions | any other's most | samples during the decisions |")
	t.Log(row)
	if dir := filepath.Join("results"); os.MkdirAll(dir, 0o755) == nil {
		_ = os.WriteFile(filepath.Join(dir, "scale-procs.md"), []byte(row+"\n"), 0o644)
	}
}

// admin is what TestScaleProcs reads of a process's /api/v1/status.
type admin struct {
	DecisionApplied uint64 `json:"decision_applied"`
}

// procStatus is x's status (zero when it does not answer).
func procStatus(x *proc.Node) admin {
	code, body, err := x.Get("/api/v1/status")
	var s struct {
		Status admin `json:"status"`
	}
	if err != nil || code != http.StatusOK || json.Unmarshal(body, &s) != nil {
		return admin{}
	}
	return s.Status
}

// procMetric is the value of x's gauge name (ferry_connections,
// ferry_members_known), -1 when it does not answer.
func procMetric(x *proc.Node, name string) int {
	code, body, err := x.Get("/metrics")
	if err != nil || code != http.StatusOK {
		return -1
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return int(f)
			}
		}
	}
	return -1
}

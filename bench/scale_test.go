package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"runtime/trace"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
	"github.com/ferrynet/ferry/stream"
)

// The scale report of issue 10 (docs/BENCHMARKS.md, "Scale"): N nodes in
// this process, real ones (libp2p TCP on 127.0.0.1) and simulated ones
// (every node complete, its libp2p on one mocknet), all at production
// timing. `make scale` runs it:
//
//	FERRY_SCALE=1 go test ./bench/ -run '^TestScale$' -v -count=1 -timeout 60m
//
// Knobs (environment):
//
//	FERRY_SCALE=1              run TestScale (otherwise it is skipped)
//	FERRY_SCALE_N=10,100,300   real network sizes (default 10,100,300)
//	FERRY_SCALE_SIM=1000       simulated (mocknet) sizes (default 1000; "" or 0: none)
//	FERRY_SCALE_WAN=300        simulated sizes on internet-like links (testnet.Internet: 20-200 ms
//	                           one way per pair, up to 20 ms jitter, 1% of writes retransmitted;
//	                           default none, make scale passes 300)
//	FERRY_SCALE_WAN_SEED=1     the seed of those links' latencies, jitter and losses (default 1)
//	FERRY_SCALE_IDLE=10s       the idle window CPU is measured over (default 10s)
//	FERRY_SCALE_JOIN=5m        how long to wait for full membership; a network short of
//	                           it is measured as it stands, and the table says how far it got
//	FERRY_SCALE_PAR=16         nodes started at once (default 16)
//	FERRY_SCALE_MAX_RSS=8      GB of process RSS at which a run stops and reports where it stood
//	                           (make scale passes 12, a 200 s rest and a 12 min membership wait)
//	FERRY_SCALE_TIMING=test    testnet's timing instead of production's (discovery every second)
//	FERRY_SCALE_REST=5s        rest between full membership and the idle window (default half of it)
//	FERRY_SCALE_SIM_BURST=1    run the 1,000-decision burst on simulated networks above 300 nodes too
//	FERRY_SCALE_PROFILE=dir    write CPU profiles of the start (until full membership) and of
//	                           the idle window and the decisions, with a goroutine and heap profile
//	                           at the end of each, into dir
//	                           (scale-N[-sim]-{start,idle,decisions}.{cpu,goroutine,heap}.pprof)
//	FERRY_SCALE_TRACE=dir      write an execution trace of 20 s at rest, after the rest and before
//	                           the idle window, into dir (scale-N[-sim]-rest.trace)
//
// Without FERRY_SCALE, TestScaleSmoke runs the same measurement on 4 real
// and 4 simulated nodes with a one-second idle window (skipped with -short).

// scaleRow is one network size's measurement.
type scaleRow struct {
	N           int
	Sim         bool
	WAN         *testnet.WAN  // the simulated links are internet-like (nil: mocknet's, no delay)
	Startup     time.Duration // starting nodes 1..N-1 (node 0, the bootstrap, up) until every node counts every other a member
	Started     time.Duration // starting nodes 1..N-1 until the last one started
	Members     string        // how far membership got (pairs (i, j) where i counts j a member)
	Full        bool          // every pair
	RSS         int64         // process RSS at idle, bytes
	Base        int64         // process RSS before the network started
	Gor         int           // goroutines at idle
	ConnMax     int
	ConnMean    float64
	IdleCPU     float64       // of one core, all nodes together
	One         time.Duration // one decision: the accept until every member applied it
	Hundred     time.Duration // 100 decisions: the first accept until every member applied all
	DecideFor   time.Duration // 100 decisions: the first accept until the reviewer decided the last
	Thousand    time.Duration // 1,000 decisions: the first accept until the reviewer decided the last
	ThousandAll time.Duration // 1,000 decisions: the first accept until every member applied the last
	Acks        string        // the reviewer's decision ack rows: all sended, or what is left
	Burst       string        // why the 1,000 decisions did not run ("" if they did)
	Failed      string        // why the run stopped early
	Rest        time.Duration // rest between full membership and the idle window
	// The most connections at any instant (connPeaks): of any node and of
	// the reviewer, during the start (until full membership) and after it
	// (rest, idle and decisions); AfterWho is the node that held AfterMost.
	StartMost, StartRev           int
	AfterMost, AfterWho, AfterRev int
}

// production is node timing as `ferry run` has it (testnet shortens it);
// FERRY_SCALE_TIMING=test keeps testnet's (discovery every second, quick
// sender retries) instead.
func production() node.Options {
	if os.Getenv("FERRY_SCALE_TIMING") == "test" {
		return node.Options{}
	}
	return node.Options{
		DiscoveryPeriod: node.DefaultDiscoveryPeriod,
		Sender: stream.SenderOptions{AckTimeout: stream.DefaultAckTimeout, DialTimeout: stream.DefaultDialTimeout,
			BackoffMin: stream.DefaultBackoffMin, BackoffMax: stream.DefaultBackoffMax, RetryScan: stream.DefaultRetryScan},
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// members tracks, per node, the nodes it does not yet count as members, so
// a poll of a big network looks only at what is missing.
type members struct {
	net     *testnet.Net
	missing [][]int
	left    int
	total   int
}

func newMembers(net *testnet.Net, n int) *members {
	m := &members{net: net, missing: make([][]int, n)}
	for i := range n {
		for j := range n {
			if i != j {
				m.missing[i] = append(m.missing[i], j)
			}
		}
	}
	m.total = n * (n - 1)
	m.left = m.total
	return m
}

// poll drops what is now known and reports whether nothing is missing.
func (m *members) poll() bool {
	for i, miss := range m.missing {
		nd := m.net.Node(i)
		if nd == nil || len(miss) == 0 {
			continue
		}
		keep := miss[:0]
		for _, j := range miss {
			if !nd.IsMember(m.net.IDs[j]) {
				keep = append(keep, j)
			}
		}
		m.left -= len(miss) - len(keep)
		m.missing[i] = keep
	}
	return m.left == 0
}

// unknown names the nodes that most others do not count a member, and
// how many nodes each of those knows.
func (m *members) unknown() string {
	missedBy := map[int]int{}
	for _, miss := range m.missing {
		for _, j := range miss {
			missedBy[j]++
		}
	}
	type row struct{ j, by int }
	var rows []row
	for j, by := range missedBy {
		rows = append(rows, row{j, by})
	}
	sort.Slice(rows, func(a, b int) bool { return rows[a].by > rows[b].by })
	var b strings.Builder
	fmt.Fprintf(&b, "%d nodes are missed by someone; most missed:", len(rows))
	for _, r := range rows[:min(len(rows), 12)] {
		fmt.Fprintf(&b, " %d (by %d; it misses %d)", r.j, r.by, len(m.missing[r.j]))
	}
	return b.String()
}

func (m *members) share() string {
	return strconv.FormatFloat(100*float64(m.total-m.left)/float64(max(m.total, 1)), 'f', 1, 64) + "%"
}

// waitApplied waits until every node has applied decision seq, at most
// wait; late says why it stopped short ("" when all applied it), most is
// when 99% of the nodes had (0 if they never did). It stops early when the
// process passes FERRY_SCALE_MAX_RSS.
func waitApplied(net *testnet.Net, n int, seq uint64, start time.Time, wait time.Duration) (late string, most time.Duration) {
	for time.Since(start) < wait {
		have := 0
		for i := range n {
			if nd := net.Node(i); nd == nil || nd.Review().Applied() >= seq {
				have++
			}
		}
		if most == 0 && have*100 >= n*99 {
			most = time.Since(start)
		}
		if have == n {
			return "", most
		}
		if rss := rssOf(os.Getpid()); rss > scaleMaxRSS() {
			return fmt.Sprintf("stopped waiting: process RSS %.1f GB over FERRY_SCALE_MAX_RSS", float64(rss)/1e9), most
		}
		// Each look reads every node's counter from its store: not
		// too often (a thousand reads a look).
		time.Sleep(20 * time.Millisecond)
	}
	return "not applied by all within " + wait.String(), most
}

// acksLeft reports how the reviewer's acknowledgement rows of decisions
// stand: "" when every one is sended, else what is pending or rejected.
func acksLeft(rev *node.Node) string {
	var out []string
	for _, st := range []string{node.AckPending, node.AckRejected} {
		page, err := rev.Acks(node.AckQuery{Kind: "decision", State: st, Limit: node.MaxAckPage})
		if err != nil {
			return err.Error()
		}
		if k := len(page.Rows); k > 0 {
			more := ""
			if page.Next != "" {
				more = "+"
			}
			out = append(out, fmt.Sprintf("%d%s %s", k, more, st))
		}
	}
	return strings.Join(out, ", ")
}

// submitAt submits k review requests at the reviewer itself (no delivery)
// and returns their ids.
func submitAt(t testing.TB, rev *node.Node, base, k int) []uint64 {
	t.Helper()
	ids := make([]uint64, k)
	errs := make(chan error, k)
	var wg sync.WaitGroup
	for i := range k {
		wg.Add(1)
		rev.Submit(review.SubmitRequest{Type: "insert", TableName: "scale", TableID: uint64(base + i + 1),
			Data: json.RawMessage(`{"office":"x"}`), Description: "scale"}, func(row review.Row, err error) {
			ids[i] = row.ID
			if err != nil {
				errs <- err
			}
			wg.Done()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("submit at the reviewer: %v", err)
	}
	return ids
}

// decideAll accepts every request at once and returns when the reviewer
// has decided the last one.
func decideAll(t testing.TB, rev *node.Node, ids []uint64) {
	t.Helper()
	errs := make(chan error, len(ids))
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		rev.Decide(review.DecideRequest{RequestID: id, Decision: "accept"}, func(_ review.Row, err error) {
			if err != nil {
				errs <- err
			}
			wg.Done()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("accept at the reviewer: %v", err)
	}
}

// scaleRun starts n nodes (node 0 is the bootstrap peer and the reviewer),
// measures, and stops them.
func scaleRun(t *testing.T, n int, sim bool, wan *testnet.WAN, idle, join time.Duration, par int) (r scaleRow) {
	r = scaleRow{N: n, Sim: sim, WAN: wan}
	// Each node's store preallocates its write-ahead logs (Pebble: 110% of
	// the 16 MB memtable, and a second log after the first flush), about
	// 36 MB of disk a node however little it holds: 1,000 nodes take 36 GB
	// of the temp dir. A disk that fills mid-run kills the run mid-line
	// (its own output cannot be written), so check first.
	if free, need := freeBytes(t, os.TempDir()), uint64(n)*40<<20; free < need {
		r.Failed = fmt.Sprintf("not started: %s has %.1f GB free, %d nodes need about %.1f GB (40 MB each: the stores' preallocated logs)",
			os.TempDir(), float64(free)/1e9, n, float64(need)/1e9)
		return r
	}
	runtime.GC()
	debug.FreeOSMemory()
	r.Base = rssOf(os.Getpid())
	later := make([]int, 0, n-1)
	for i := 1; i < n; i++ {
		later = append(later, i)
	}
	// One NATS server for all: apps do not take part here, and a server
	// per node costs a listener, connections and goroutines each.
	net := testnet.Start(t, testnet.Options{N: n, Reviewer: testnet.At(0), Later: later, Mocknet: sim, SharedNATS: true,
		WAN: wan, Node: production()})
	m := newMembers(net, n)
	// Connections are counted from each node's start (the reviewer's
	// before the others start), and logged every 10 s from the first start.
	peaks := newConnPeaks(n)
	peaks.over = func(s string) { t.Logf("N=%d sim=%v: the reviewer above the bound: %s", n, sim, s) }
	peaks.watch(net, 0, 1)
	begin := time.Now()
	var share atomic.Value
	share.Store("0.0% (starting)")
	stopLine := connTimeline(t, net, begin, &share, peaks)
	defer stopLine()
	// The most connections at any instant, of any node and of the
	// reviewer, after full membership until the run ends (the start's
	// are taken at full membership, below).
	defer func() {
		r.AfterMost, r.AfterWho, r.AfterRev = most(peaks.run)
		t.Logf("N=%d sim=%v: most connections at any instant after full membership: the reviewer %d, any node %d (node %d)",
			n, sim, r.AfterRev, r.AfterMost, r.AfterWho)
	}()
	stopStart := scaleProfile(t, n, sim, "start")
	defer stopStart()
	// Nodes start in rounds, so a network too big for this machine's
	// memory stops at the cap (scaleMaxRSS) instead of at the OOM killer.
	step := max(4*par, 16)
	for from := 1; from < n; from += step {
		if rss := rssOf(os.Getpid()); rss > scaleMaxRSS() {
			m.poll()
			r.Members = m.share()
			r.Failed = fmt.Sprintf("stopped with %d of %d nodes started: process RSS %.1f GB over FERRY_SCALE_MAX_RSS (membership then %s)",
				from, n, float64(rss)/1e9, r.Members)
			return r
		}
		err := net.StartAll(from, min(from+step, n), par)
		peaks.watch(net, from, min(from+step, n))
		share.Store(fmt.Sprintf("- (%d of %d started)", min(from+step, n), n))
		if err != nil {
			r.Failed = "start: " + err.Error()
			m.poll()
			r.Members = m.share()
			return r
		}
	}
	r.Started = time.Since(begin)
	t.Logf("N=%d sim=%v: %d nodes started in %s s", n, sim, n-1, secs(r.Started))
	m.poll()
	share.Store(m.share())
	// Membership: a network stuck short of it is measured as it stands.
	deadline := begin.Add(join)
	wait := 5 * time.Minute
	for !m.poll() {
		share.Store(m.share())
		if time.Now().After(deadline) {
			break // measured, not failed: the report says how far membership got
		}
		if rss := rssOf(os.Getpid()); rss > scaleMaxRSS() {
			r.Members = m.share()
			r.Failed = fmt.Sprintf("stopped %s s after the start: process RSS %.1f GB over FERRY_SCALE_MAX_RSS, membership at %s",
				secs(time.Since(begin)), float64(rss)/1e9, r.Members)
			return r
		}
		// A look every 100 ms (each reads every node's membership); the
		// start-up time it measures is good to that.
		time.Sleep(100 * time.Millisecond)
	}
	r.Startup = time.Since(begin)
	stopStart()
	r.StartMost, _, r.StartRev = most(peaks.run)
	peaks.reset(net, peaks.run)
	r.Members, r.Full = m.share(), m.left == 0
	share.Store(r.Members)
	if m.left > 0 {
		t.Logf("N=%d sim=%v: membership at %s after %s s; measuring the rest as it stands", n, sim, r.Members, secs(r.Startup))
		t.Logf("N=%d sim=%v: %s", n, sim, m.unknown())
		wait = 2 * time.Minute
	} else {
		t.Logf("N=%d sim=%v: full membership in %s s (%s s after the last start)", n, sim, secs(r.Startup), secs(r.Startup-r.Started))
	}

	// Idle: let the start-up's tail settle, then measure.
	rest := scaleDuration(t, "FERRY_SCALE_REST", idle/2)
	r.Rest = rest
	time.Sleep(rest) // a set rest before the idle window, not an event to wait for
	scaleTrace(t, n, sim)
	stopProf := scaleProfile(t, n, sim, "idle")
	g0 := gcCycles()
	c0, w0 := cpuTime(), time.Now()
	time.Sleep(idle) // the idle window whose CPU is measured
	r.IdleCPU = float64(cpuTime()-c0) / float64(time.Since(w0))
	gcs := gcCycles() - g0
	stopProf()
	t.Logf("N=%d sim=%v: connections %s", n, sim, connBreakdown(net))
	r.RSS = rssOf(os.Getpid())
	r.Gor = runtime.NumGoroutine()
	r.ConnMax, r.ConnMean = testnet.ConnStats(net.ConnsPerNode())
	// The collector runs at least every two minutes (the runtime forces
	// one) and marks every node's heap: a window holds one or none.
	t.Logf("N=%d sim=%v: idle CPU %.1f%% (%d garbage collections in the window), RSS %d MiB, %d goroutines, connections max %d mean %.1f", n, sim,
		100*r.IdleCPU, gcs, r.RSS>>20, r.Gor, r.ConnMax, r.ConnMean)

	rev := net.Node(0)
	// round submits k requests at the reviewer, accepts them all at once
	// and returns how long the reviewer took to decide them and every
	// member to apply them (false: not applied by all within wait).
	round := func(base, k int) (decided, applied time.Duration, late string) {
		ids := submitAt(t, rev, base, k)
		start := time.Now()
		decideAll(t, rev, ids)
		decided = time.Since(start)
		late, most := waitApplied(net, n, rev.Review().Applied(), start, wait)
		applied = time.Since(start)
		t.Logf("N=%d sim=%v: %d decisions: decided in %s s, 99%% of the nodes applied them in %s s, all in %s s", n, sim, k,
			secs(decided), secs(most), secs(applied))
		return decided, applied, late
	}
	stopDec := scaleProfile(t, n, sim, "decisions")
	defer stopDec()
	var late string
	if _, r.One, late = round(0, 1); late != "" {
		r.Failed = "one decision " + late
		return r
	}
	if r.DecideFor, r.Hundred, late = round(1, 100); late != "" {
		r.Failed = "100 decisions " + late
		return r
	}
	t.Logf("N=%d sim=%v: one decision %s s, 100 decisions %s s (decided in %s s)", n, sim, secs(r.One), secs(r.Hundred), secs(r.DecideFor))
	// The rows of the targets (one and 100 decisions) first: the
	// thousand's burst may stop the run (FERRY_SCALE_MAX_RSS).
	r.Acks = ackRows(rev, n, 101, max(time.Minute, idle))
	t.Logf("N=%d sim=%v: ack rows of 101 decisions sended: %s", n, sim, r.Acks)
	if wan != nil {
		st := net.WANStats()
		t.Logf("N=%d: links carried %d writes, %d lost and retransmitted, %d held behind an earlier one; %d dials paid a handshake",
			n, st.Writes, st.Lost, st.Delayed, st.Dials)
	}
	// A thousand: long enough to give the reviewer's rate. Every node holds
	// the burst in memory at once (news, held decisions, a memtable's
	// worth of writes: about 14 MB a node at 300 simulated nodes), which a
	// thousand simulated nodes in one process cannot (past 24 GB here).
	if sim && n > 300 && os.Getenv("FERRY_SCALE_SIM_BURST") == "" {
		r.Burst = "not run (memory: FERRY_SCALE_SIM_BURST=1 runs it)"
		t.Logf("N=%d sim=%v: 1,000 decisions %s", n, sim, r.Burst)
		return r
	}
	if r.Thousand, r.ThousandAll, late = round(101, 1000); late != "" {
		r.Failed = "1,000 decisions " + late
		return r
	}
	t.Logf("N=%d sim=%v: 1,000 decisions decided in %s s (%s/s), applied by all in %s s; RSS then %d MiB", n, sim, secs(r.Thousand),
		rate(1000, r.Thousand), secs(r.ThousandAll), rssOf(os.Getpid())>>20)
	r.Acks = ackRows(rev, n, 1101, max(time.Minute, idle))
	return r
}

// ackRows waits up to wait for the reviewer's acknowledgement rows of its
// decisions (decided of them) to turn sended (every member reports what it
// applied), and says how they stand.
func ackRows(rev *node.Node, n, decided int, wait time.Duration) string {
	by := time.Now().Add(wait)
	for {
		left := acksLeft(rev)
		if left == "" {
			return fmt.Sprintf("yes (%d members × %s)", n-1, thousands(float64(decided)))
		}
		if time.Now().After(by) {
			return "no: " + left // reported, not failed
		}
		time.Sleep(200 * time.Millisecond) // each look reads every acknowledgement row of the reviewer
	}
}

func scaleTable(rows []scaleRow, idle time.Duration, load string) string {
	var b strings.Builder
	timing := "production timing"
	if os.Getenv("FERRY_SCALE_TIMING") == "test" {
		timing = "test timing (discovery every second)"
	}
	fmt.Fprintf(&b, "Scale (issue 10): all nodes in one process, %s; %s, %d CPUs, load average %s before the run.\n\n",
		timing, runtime.Version(), runtime.NumCPU(), load)
	b.WriteString("| N | start-up to full membership | RSS per node | goroutines per node | connections per node (max / mean) | most connections at any instant after full membership: the reviewer's; any node's (before it, from the first start) | idle CPU (of one core) | one decision applied by all | 100 decisions applied by all | 1,000 decisions: decisions/s at the reviewer; applied by all | reviewer's ack rows all sended |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	dash := func(d time.Duration) string {
		if d == 0 {
			return "-"
		}
		return secs(d) + " s"
	}
	for _, r := range rows {
		name := strconv.Itoa(r.N)
		if r.Sim {
			name += " simulated (mocknet)"
		}
		if w := r.WAN; w != nil {
			name = fmt.Sprintf("%d simulated, internet-like links (%d-%d ms one way per pair, jitter < %d ms, %.0f%% of writes retransmitted; seed %d)",
				r.N, w.MinLatency.Milliseconds(), w.MaxLatency.Milliseconds(), w.Jitter.Milliseconds(), 100*w.Loss, w.Seed)
		}
		if r.Failed != "" && r.RSS == 0 {
			fmt.Fprintf(&b, "| %s | fails: %s | | | | | | | | | |\n", name, r.Failed)
			continue
		}
		thousand := "-"
		if r.Burst != "" {
			thousand = r.Burst
		}
		if r.ThousandAll > 0 {
			thousand = fmt.Sprintf("%s/s; %s s", rate(1000, r.Thousand), secs(r.ThousandAll))
		}
		acks := r.Acks
		if acks == "" {
			acks = "-"
		}
		if r.Failed != "" {
			acks += "; fails: " + r.Failed
		}
		startup := dash(r.Startup)
		if r.Startup > 0 {
			startup = fmt.Sprintf("%s s (%s s after the last start)", secs(r.Startup), secs(r.Startup-r.Started))
		}
		if !r.Full {
			startup = fmt.Sprintf("not reached: %s of member pairs after %s", r.Members, startup)
		}
		peaks := fmt.Sprintf("%d; %d (%d, the reviewer %d)", r.AfterRev, r.AfterMost, r.StartMost, r.StartRev)
		fmt.Fprintf(&b, "| %s | %s | %.1f MB (%.1f) | %d | %d / %.1f | %s | %.1f%% | %s | %s | %s | %s |\n", name, startup,
			float64(r.RSS)/float64(r.N)/1e6, float64(r.RSS-r.Base)/float64(r.N)/1e6, r.Gor/r.N, r.ConnMax, r.ConnMean, peaks, 100*r.IdleCPU,
			dash(r.One), dash(r.Hundred), thousand, acks)
	}
	fmt.Fprintf(&b, "\nStart-up: from starting nodes 1..N-1 (node 0, the bootstrap peer and the reviewer, already up; up to %d started at once) "+
		"until every node counts every other a member. RSS per node: process RSS at idle / N, in parentheses (RSS at idle - RSS before the network started) / N (RSS before: ", scalePar())
	var rest time.Duration
	for i, r := range rows {
		rest = r.Rest
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d MB at N=%d", r.Base>>20, r.N)
	}
	fmt.Fprintf(&b, "). Idle CPU: process CPU time (getrusage) over %s, after %s of rest following full membership. "+
		"Decisions: review requests submitted at the reviewer, then accepted all at once (1, then 100, then 1,000); the clock runs from the first accept "+
		"until every member's applied sequence reaches the last, and for the reviewer's rate until it decided the last. Every node has its own store and embedded services; "+
		"the apps' NATS is one shared embedded server.\n", idle, rest)
	return b.String()
}

func scaleDuration(t *testing.T, env string, def time.Duration) time.Duration {
	s := os.Getenv(env)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a duration", env, s)
	}
	return d
}

// freeBytes is the space free to an unprivileged writer on dir's file system.
func freeBytes(t *testing.T, dir string) uint64 {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatalf("free space of %s: %v", dir, err)
	}
	return fs.Bavail * uint64(fs.Bsize)
}

// scaleMaxRSS is the process RSS (FERRY_SCALE_MAX_RSS, GB; default 8) at
// which a run stops starting nodes or waiting for membership, and reports
// where it stood. The machine is shared: the OOM killer must not choose.
func scaleMaxRSS() int64 {
	gb := 8.0
	if s := os.Getenv("FERRY_SCALE_MAX_RSS"); s != "" {
		if f, err := strconv.ParseFloat(s, 64); err == nil && f > 0 {
			gb = f
		}
	}
	return int64(gb * 1e9)
}

// scaleSeed is FERRY_SCALE_WAN_SEED (default 1).
func scaleSeed(t *testing.T) uint64 {
	s := os.Getenv("FERRY_SCALE_WAN_SEED")
	if s == "" {
		return 1
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("FERRY_SCALE_WAN_SEED=%q: want a number", s)
	}
	return v
}

func scalePar() int {
	if s := os.Getenv("FERRY_SCALE_PAR"); s != "" {
		if p, err := strconv.Atoi(s); err == nil && p > 0 {
			return p
		}
	}
	return 16
}

func scaleSizes(t *testing.T, env, def string) []int {
	s, ok := os.LookupEnv(env)
	if !ok {
		s = def
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" || f == "0" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 2 {
			t.Fatalf("%s=%q: want sizes of at least 2, comma-separated", env, s)
		}
		out = append(out, n)
	}
	return out
}

func runScale(t *testing.T, real, sim, wan []int, idle, join time.Duration) []scaleRow {
	var rows []scaleRow
	each := func(n int, s bool, w *testnet.WAN) {
		name := fmt.Sprintf("N=%d", n)
		if s {
			name += "-sim"
		}
		if w != nil {
			name += "-wan"
		}
		var r scaleRow
		t.Run(name, func(t *testing.T) { r = scaleRun(t, n, s, w, idle, join, scalePar()) })
		if r.Failed != "" {
			t.Logf("%s: %s", name, r.Failed)
		}
		rows = append(rows, r)
	}
	for _, n := range real {
		each(n, false, nil)
	}
	for _, n := range sim {
		each(n, true, nil)
	}
	for _, n := range wan {
		each(n, true, testnet.Internet(scaleSeed(t)))
	}
	return rows
}

// TestScale measures the scale table (see the knobs above) and writes it
// to bench/results/scale.md.
func TestScale(t *testing.T) {
	if os.Getenv("FERRY_SCALE") == "" {
		t.Skip("set FERRY_SCALE=1 to run the scale report (make scale)")
	}
	idle, join := scaleDuration(t, "FERRY_SCALE_IDLE", 10*time.Second), scaleDuration(t, "FERRY_SCALE_JOIN", 5*time.Minute)
	load := loadavg()
	rows := runScale(t, scaleSizes(t, "FERRY_SCALE_N", "10,100,300"), scaleSizes(t, "FERRY_SCALE_SIM", "1000"),
		scaleSizes(t, "FERRY_SCALE_WAN", ""), idle, join)
	table := scaleTable(rows, idle, load)
	fmt.Print(table)
	if err := os.MkdirAll("results", 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join("results", "scale.md")
	if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("written to bench/%s", out)
}

// TestScaleSmoke keeps the scale harness working: 4 real and 4 simulated
// nodes, a one-second idle window. It fails only if a run does.
func TestScaleSmoke(t *testing.T) {
	if os.Getenv("FERRY_SCALE") != "" {
		t.Skip("TestScale runs instead")
	}
	if testing.Short() {
		t.Skip("starts two small networks (a few seconds)")
	}
	rows := runScale(t, []int{4}, []int{4}, nil, time.Second, time.Minute)
	for _, r := range rows {
		if r.Failed != "" {
			t.Errorf("N=%d sim=%v: %s", r.N, r.Sim, r.Failed)
		}
	}
	if testing.Verbose() {
		fmt.Print(scaleTable(rows, time.Second, loadavg()))
	}
}

// scaleTrace writes an execution trace of traceWindow at rest into
// FERRY_SCALE_TRACE (a directory; nothing when it is unset), before the
// idle window and outside it: the trace's own cost stays out of the idle
// CPU. `go tool trace` shows each wake-up and what it was for.
func scaleTrace(t *testing.T, n int, sim bool) {
	dir := envDir(t, "FERRY_SCALE_TRACE")
	if dir == "" {
		return
	}
	f, err := os.Create(filepath.Join(dir, scaleName(n, sim)+"-rest.trace"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := trace.Start(f); err != nil {
		t.Fatal(err)
	}
	time.Sleep(traceWindow) // the window traced, not an event to wait for
	trace.Stop()
}

// scaleName names the files of a scale row: scale-N, scale-N-sim.
func scaleName(n int, sim bool) string {
	if sim {
		return fmt.Sprintf("scale-%d-sim", n)
	}
	return fmt.Sprintf("scale-%d", n)
}

// traceWindow is how long scaleTrace traces.
const traceWindow = 20 * time.Second

// scaleProfile starts the profiles of FERRY_SCALE_PROFILE (none when it is
// unset) and returns what ends them (once; later calls do nothing).
func scaleProfile(t *testing.T, n int, sim bool, phase string) func() {
	dir := envDir(t, "FERRY_SCALE_PROFILE")
	if dir == "" {
		return func() {}
	}
	name := scaleName(n, sim) + "-" + phase
	cpu, err := os.Create(filepath.Join(dir, name+".cpu.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			pprof.StopCPUProfile()
			_ = cpu.Close()
			for _, p := range []string{"goroutine", "heap"} {
				f, err := os.Create(filepath.Join(dir, name+"."+p+".pprof"))
				if err != nil {
					t.Error(err)
					return
				}
				if err := pprof.Lookup(p).WriteTo(f, 0); err != nil {
					t.Error(err)
				}
				_ = f.Close()
			}
		})
	}
}

// connBreakdown sorts the network's connections by what the far end is
// to the near one: a member (neighbour or other), or not a member, and
// counts duplicates (a second connection to the same peer).
func connBreakdown(net *testnet.Net) string {
	var member, other, dup, in, out int
	for i := range net.IDs {
		nd := net.Node(i)
		if nd == nil {
			continue
		}
		nw := nd.Host().Network()
		for _, p := range nw.Peers() {
			cs := nw.ConnsToPeer(p)
			dup += max(len(cs)-1, 0)
			for _, c := range cs {
				if c.Stat().Direction == network.DirInbound {
					in++
				} else {
					out++
				}
				if nd.IsMember(p) {
					member++
				} else {
					other++
				}
			}
		}
	}
	return fmt.Sprintf("to members %d, to others %d, duplicates %d, inbound %d, outbound %d", member, other, dup, in, out)
}

// counters reads nd's unlabelled counters of these names, "name=value"
// each (a name nd does not have is left out).
func counters(nd *node.Node, names ...string) string {
	mfs, err := nd.Registry().Gather()
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, name := range names {
		for _, mf := range mfs {
			if mf.GetName() == name && len(mf.GetMetric()) > 0 && mf.GetMetric()[0].GetCounter() != nil {
				out = append(out, fmt.Sprintf("%s=%v", strings.TrimPrefix(name, "ferry_"), mf.GetMetric()[0].GetCounter().GetValue()))
			}
		}
	}
	return strings.Join(out, " ")
}

// gcCycles is how many garbage collections this process completed.
func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// heldBy says what nd holds as connection nc opens: where in nd's code an
// outbound one was dialed (a mocknet's), and each connection's direction,
// age (where the transport knows it), whether its peer is a member and its
// streams.
func heldBy(net *testnet.Net, nd *node.Node, nc network.Conn) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d connections as one %s from %s opened", len(nd.Host().Network().Conns()), nc.Stat().Direction, nc.RemotePeer().ShortString())
	if nc.Stat().Direction == network.DirOutbound {
		if at := net.DialSite(nd.ID(), nc.RemotePeer()); at != "" {
			fmt.Fprintf(&b, " (dialed by %s)", at)
		}
	}
	fmt.Fprintf(&b, "; its counters: %s", counters(nd, "ferry_delivery_room_waits_total", "ferry_delivery_room_forced_total",
		"ferry_connections_closed_for_room_total", "ferry_connections_refused_total"))
	b.WriteString(":")
	for _, c := range nd.Host().Network().Conns() {
		var ps []string
		for _, st := range c.GetStreams() {
			ps = append(ps, string(st.Protocol()))
		}
		// A mocknet connection has no open time (Stat().Opened is zero).
		age := "age unknown"
		if at := c.Stat().Opened; !at.IsZero() {
			age = time.Since(at).Round(time.Millisecond).String()
		}
		closing := ""
		if c.IsClosed() {
			closing = " closed, still listed"
		}
		fmt.Fprintf(&b, " [%s %s member=%v %s%s %v]", c.RemotePeer().ShortString(), c.Stat().Direction,
			nd.IsMember(c.RemotePeer()), age, closing, ps)
	}
	return b.String()
}

// connPeaks tracks, exactly, the most connections each node held at any
// instant: it counts the node's connections in its network's notifiee as
// each one opens (a connection the node closes at once is counted too);
// and it counts the connections opened and closed in the network.
type connPeaks struct {
	peak           []atomic.Int64 // since the last reset (the 10-s line)
	run            []atomic.Int64 // since the last mark (full membership)
	opened, closed atomic.Int64
	// over, if set, is told what the reviewer (node 0) held each time a
	// connection took it above node.DefaultMaxConnections, the first
	// overMax times.
	over   func(string)
	overed atomic.Int64
}

// overMax bounds the reviewer's connections over the bound that are logged.
const overMax = 20

func newConnPeaks(n int) *connPeaks {
	return &connPeaks{peak: make([]atomic.Int64, n), run: make([]atomic.Int64, n)}
}

// watch starts counting nodes from..to-1 (a node not started yet is left
// out), and raises their peaks to what they hold now.
func (c *connPeaks) watch(net *testnet.Net, from, to int) {
	for i := from; i < to; i++ {
		nd := net.Node(i)
		if nd == nil {
			continue
		}
		nw := nd.Host().Network()
		nw.Notify(&network.NotifyBundle{
			ConnectedF: func(_ network.Network, nc network.Conn) {
				c.opened.Add(1)
				n := len(nw.Conns())
				c.raise(i, int64(n))
				if i == 0 && n > node.DefaultMaxConnections && c.over != nil && c.overed.Add(1) <= overMax {
					c.over(heldBy(net, nd, nc))
				}
			},
			DisconnectedF: func(network.Network, network.Conn) { c.closed.Add(1) },
		})
		c.raise(i, int64(len(nw.Conns())))
	}
}

// raise lifts node i's peaks to n.
func (c *connPeaks) raise(i int, n int64) {
	raiseTo(&c.peak[i], n)
	raiseTo(&c.run[i], n)
}

// raiseTo lifts a to n unless it holds more already.
func raiseTo(a *atomic.Int64, n int64) {
	for o := a.Load(); n > o && !a.CompareAndSwap(o, n); o = a.Load() {
	}
}

// reset zeroes the counters of a (peak or run) and raises them again to
// what each node holds now (a notifiee may raise them meanwhile).
func (c *connPeaks) reset(net *testnet.Net, a []atomic.Int64) {
	for i := range a {
		a[i].Store(0)
		if nd := net.Node(i); nd != nil {
			raiseTo(&a[i], int64(len(nd.Host().Network().Conns())))
		}
	}
}

// most is the most connections any node held (and which node), and the
// reviewer's (node 0), in the counters of a (peak or run).
func most(a []atomic.Int64) (anyMost, who int, rev int) {
	for i := range a {
		v := int(a[i].Load())
		if v > anyMost {
			anyMost, who = v, i
		}
		if i == 0 {
			rev = v
		}
	}
	return anyMost, who, rev
}

// connTimeline logs, every 10 s until the returned func runs, membership
// (share), the network's connections now (mean, max), the most any node
// and the reviewer held at any instant since the last line (peaks, which
// watches each node from its start), and the connections opened and
// closed since the last line: churn shows there.
func connTimeline(t *testing.T, net *testnet.Net, begin time.Time, share *atomic.Value, peaks *connPeaks) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(10 * time.Second)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
			}
			now, mean := testnet.ConnStats(net.ConnsPerNode())
			top, who, rev := most(peaks.peak)
			peaks.reset(net, peaks.peak)
			t.Logf("t=%s s: membership %s; connections now max %d mean %.1f; most at any instant %d (node %d), the reviewer's %d; opened %d, closed %d in 10 s",
				secs(time.Since(begin)), share.Load(), now, mean, top, who, rev, peaks.opened.Swap(0), peaks.closed.Swap(0))
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// Over internet-like links made worse (testnet.Internet with 5% of writes
// retransmitted instead of 1%), 20 simulated nodes at test timing reach
// full membership, every node applies every decision and the reviewer's
// acknowledgement rows all turn sended: the link model of the scale
// report, exercised in CI.
func TestDecisionsOverInternetLikeLinks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 20 nodes on slow links (about 20 s)")
	}
	const n = 20
	links := testnet.Internet(3)
	links.Loss = 0.05
	net := testnet.Start(t, testnet.Options{N: n, Reviewer: testnet.At(0), Mocknet: true, SharedNATS: true, WAN: links})
	// Membership as the scale report counts it (every node counts every
	// other a member); with bounded connections not every pair meets.
	m, begin := newMembers(net, n), time.Now()
	wait.For(t, 90*time.Second, "every node counts every other a member", m.poll)
	t.Logf("full membership %s s after the last start", secs(time.Since(begin)))
	rev := net.Node(0)
	for _, k := range []int{1, 50} {
		ids := submitAt(t, rev, int(rev.Review().Applied()), k)
		start := time.Now()
		decideAll(t, rev, ids)
		if late, _ := waitApplied(net, n, rev.Review().Applied(), start, 90*time.Second); late != "" {
			t.Fatalf("%d decisions: %s", k, late)
		}
		t.Logf("%d decisions applied by all in %s s", k, secs(time.Since(start)))
	}
	wait.For(t, 90*time.Second, "every ack row of the reviewer's decisions sended", func() bool { return acksLeft(rev) == "" })
	st := net.WANStats()
	if st.Lost == 0 || st.Dials == 0 || st.Writes == 0 {
		t.Fatalf("the links carried nothing through the model: %+v", st)
	}
	t.Logf("links: %d writes, %d lost and retransmitted, %d held behind an earlier one, %d dials", st.Writes, st.Lost, st.Delayed, st.Dials)
}

package bench

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
)

// Ferry as it runs in production: each node its own `ferry run` process
// (built without the race detector), the app in this test process. The
// processes share the machine's cores with the app, so a node's CPU time is
// read from /proc, per process.

// cpuOf is a process's user+system CPU time so far.
func cpuOf(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields count from after it.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // sysconf(_SC_CLK_TCK) on Linux
	return time.Duration(utime+stime) * time.Second / clkTck
}

// selfCPU is this test process's CPU time (the app and the baselines).
func selfCPU() time.Duration { return cpuOf(os.Getpid()) }

// profileName is the file a node's CPU profile goes to under
// FERRY_BENCH_PROFILES: <name>.cpu for part 1 (ferry) and the single runs,
// <part>-<name>.cpu for the report's other parts (fanout-A.cpu,
// latency-1000-B1.cpu), so a later part does not overwrite part 1's. When
// part 1 runs again for the rule (ferry/longer), the reported run's profile
// replaces the first one's.
func profileName(t testing.TB, name string) string {
	parts := strings.Split(t.Name(), "/")
	if len(parts) < 2 || parts[1] == "ferry" {
		return name + ".cpu"
	}
	if parts[1] == "fanout" {
		return "fanout-" + name + ".cpu"
	}
	return strings.Join(parts[1:], "-") + "-" + name + ".cpu"
}

// procNet starts A and its partners as processes, each partner of A and A
// of each, warms every path with one event and returns A's app connection
// and a counter on every partner; every > 0: the counters record the
// arrival of every every-th event.
func procNet(t testing.TB, partners, n, every int) (*proc.Node, []*proc.Node, *nats.Conn, []*counter) {
	t.Helper()
	quiet := func(o proc.Options) proc.Options {
		o.LogLevel = "warn"
		if lv := os.Getenv("FERRY_BENCH_LOG"); lv != "" {
			o.LogLevel = lv // the processes' logs, printed by the parts that use them (catchup)
		}
		if os.Getenv("FERRY_BENCH_EVENTS") == "off" {
			// Without the JetStream events stream (nats.events), to
			// measure what it costs; users run with it on.
			o.Env = append(o.Env, "FERRY_NATS_EVENTS_ENABLED=false")
		}
		if dir := envDir(t, "FERRY_BENCH_PROFILES"); dir != "" {
			// Each node writes a CPU profile of its run, flushed when it
			// stops, and a heap profile at its stop: alloc_space shows what
			// the run allocated, where.
			base := strings.TrimSuffix(filepath.Join(dir, profileName(t, o.Name)), ".cpu")
			o.Env = append(o.Env, "FERRY_CPUPROFILE="+base+".cpu", "FERRY_MEMPROFILE="+base+".heap")
		}
		if dir := envDir(t, "FERRY_BENCH_TRACES"); dir != "" {
			// Each node writes an execution trace of its run (go tool trace).
			o.Env = append(o.Env, "FERRY_TRACE="+strings.TrimSuffix(filepath.Join(dir, profileName(t, o.Name)), ".cpu")+".trace")
		}
		return o
	}
	a := proc.New(t, quiet(proc.Options{Name: "A"}))
	var bs []*proc.Node
	for i := range partners {
		bs = append(bs, proc.New(t, quiet(proc.Options{Name: "B" + strconv.Itoa(i+1)})))
	}
	a.SetPartners(bs...)
	for _, b := range bs {
		b.SetPartners(a)
		b.SetBootstrap(a)
	}
	a.Start()
	for _, b := range bs {
		b.Start()
	}
	var cs []*counter
	for _, b := range bs {
		nc, err := nats.Connect(b.NATSURL(), nats.MaxReconnects(-1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		cs = append(cs, newCounter(t, nc, n, every))
	}
	nc, err := nats.Connect(a.NATSURL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	warm(t, nc, cs)
	return a, bs, nc, cs
}

// warm sends one create and waits until every counter saw it.
func warm(t testing.TB, nc *nats.Conn, cs []*counter) {
	t.Helper()
	msg, err := nc.Request(propagateSub, propagateBody(nil, "w0"), 30*time.Second)
	if err != nil || !strings.Contains(string(msg.Data), `"ok":true`) {
		t.Fatalf("warm-up create: %v %s", err, msgData(msg))
	}
	for i, c := range cs {
		select {
		case <-c.warm:
		case <-time.After(60 * time.Second):
			t.Fatalf("warm-up event did not reach partner %d", i+1)
		}
	}
}

func msgData(m *nats.Msg) string {
	if m == nil {
		return ""
	}
	return string(m.Data)
}

// procResult adds per-process CPU and disk to a throughput run.
type procResult struct {
	ferryResult
	CPUA   time.Duration   // A's CPU during the run
	CPUB   []time.Duration // each partner's
	CPUApp time.Duration   // this process (the app)
	// Disk is each node's data directory (A, then each partner) after the
	// run and a clean stop (SIGTERM, then its exit).
	Disk []diskUse
	// tail says when the slowest samples were sent (ferryProcsLatency).
	tail string
}

// diskUse is what one node's data directory holds after a clean stop.
type diskUse struct {
	Node    string
	Dir     string // the data directory: <home>/data
	Total   int64  // bytes: the sizes of every regular file under Dir
	Changes int64  // of Total, under Dir/changes/ (the change log's own directory)
	// HasChanges: Dir/changes/ exists (the segment log of issue 18).
	HasChanges bool
	// JetStream is, of Total, under Dir/jetstream/: the events stream's
	// JetStream store (nats.events), a second copy of every event.
	JetStream int64
	Err       string // the stop failed or a file could not be read
}

// PerEvent is the data directory's bytes per event of the run.
func (d diskUse) PerEvent(n int) float64 { return float64(d.Total) / float64(max(n, 1)) }

// StorePerEvent is PerEvent without the events stream's JetStream store:
// what the store (change log and Pebble) holds per event.
func (d diskUse) StorePerEvent(n int) float64 {
	return float64(d.Total-d.JetStream) / float64(max(n, 1))
}

// dirBytes sums the sizes (st_size, what `du --apparent-size -b` counts) of
// the regular files under dir, of those under dir/changes/ and of those
// under dir/jetstream/.
func dirBytes(dir string) (total, changes, jetstream int64, hasChanges bool, err error) {
	log := filepath.Join(dir, "changes")
	js := filepath.Join(dir, "jetstream") + string(filepath.Separator)
	if fi, e := os.Stat(log); e == nil && fi.IsDir() {
		hasChanges = true
	}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		total += fi.Size()
		if strings.HasPrefix(path, log+string(filepath.Separator)) {
			changes += fi.Size()
		}
		if strings.HasPrefix(path, js) {
			jetstream += fi.Size()
		}
		return nil
	})
	return total, changes, jetstream, hasChanges, err
}

// stopAndMeasure stops each node cleanly (SIGTERM, waiting up to a minute
// for its exit; a node's CPU profile is written then) and sums its data
// directory.
func stopAndMeasure(ns []*proc.Node) []diskUse {
	var out []diskUse
	for _, p := range ns {
		d := diskUse{Node: p.Name(), Dir: p.Home().DataPath()}
		if code, err := p.TermErr(time.Minute); err != nil {
			d.Err = err.Error()
		} else if code != 0 {
			d.Err = fmt.Sprintf("exit code %d after SIGTERM", code)
		}
		var err error
		d.Total, d.Changes, d.JetStream, d.HasChanges, err = dirBytes(d.Dir)
		if err != nil && d.Err == "" {
			d.Err = err.Error()
		}
		out = append(out, d)
	}
	return out
}

// saturationEvery is the stride of the saturation run's latency sample:
// every 100th event at full size, every event in a small run (at least
// about 2,000 samples when there are that many events).
func saturationEvery(n int) int { return min(max(n/2000, 1), 100) }

// UsPerEvent is A's CPU per event in microseconds.
func (r procResult) UsPerEvent() float64 {
	return float64(r.CPUA.Microseconds()) / float64(r.N)
}

func (r procResult) partnersUs() string {
	var parts []string
	for _, c := range r.CPUB {
		parts = append(parts, fmt.Sprintf("%.1f", float64(c.Microseconds())/float64(r.N)))
	}
	return strings.Join(parts, "/")
}

// ferryProcs runs the pipelined load from A to its partners, as processes.
// The app records the send of every saturationEvery(n)-th event and the
// first partner its arrival: the latency at saturation. After the checks
// every node is stopped cleanly and its data directory summed.
func ferryProcs(t testing.TB, partners, n, inflight int, wait time.Duration) procResult {
	every := saturationEvery(n)
	a, bs, nc, cs := procNet(t, partners, n, every)
	app := newApp(t, nc, n, inflight, every)
	runtime.GC()
	r := procResult{ferryResult: ferryResult{Partners: partners, N: n}}
	cpuA0, cpuApp0 := cpuOf(a.Pid()), selfCPU()
	cpuB0 := make([]time.Duration, len(bs))
	for i, b := range bs {
		cpuB0[i] = cpuOf(b.Pid())
	}
	app.start = now()
	app.send(t, 0)
	waitAll(t, app, cs, 10*time.Minute)
	r.AckedAt = app.doneAt - app.start
	for _, c := range cs {
		r.Elapsed = max(r.Elapsed, c.doneAt-app.start)
	}
	r.CPUA, r.CPUApp = cpuOf(a.Pid())-cpuA0, selfCPU()-cpuApp0
	for i, b := range bs {
		r.CPUB = append(r.CPUB, cpuOf(b.Pid())-cpuB0[i])
	}
	r.Check, r.Failed = settle(t, app, cs, wait)
	latencies(&r.ferryResult, app, cs[0])
	if os.Getenv("FERRY_BENCH_METRICS") != "" {
		for _, p := range append([]*proc.Node{a}, bs...) {
			_, body, _ := p.Get("/metrics")
			for _, l := range strings.Split(string(body), "\n") {
				if strings.HasPrefix(l, "ferry_store_") && !strings.Contains(l, "_bucket") {
					t.Logf("%s %s", p.Name(), l)
				}
			}
		}
	}
	r.Disk = stopAndMeasure(append([]*proc.Node{a}, bs...))
	for _, d := range r.Disk {
		if d.Err != "" {
			t.Errorf("node %s: %s", d.Node, d.Err)
			r.Failed = true
		}
	}
	return r
}

// envDir is the directory the environment variable env names, made if it
// is not there; "" when env is unset.
func envDir(t testing.TB, env string) string {
	t.Helper()
	dir := os.Getenv(env)
	if dir == "" {
		return ""
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("%s: %v", env, err)
	}
	return dir
}

// ferryProcsLatency paces rate events/s for d at A (a process) with one partner.
func ferryProcsLatency(t testing.TB, rate int, d time.Duration, inflight int, wait time.Duration) procResult {
	n := max(int(float64(rate)*d.Seconds()), 1)
	pa, pbs, nc, cs := procNet(t, 1, n, 1)
	a := newApp(t, nc, n, inflight, 1)
	runtime.GC()
	// What earlier runs wrote goes to the disk now, not during this one:
	// the kernel writes dirty pages back 30 s after they were written (a
	// report's throughput parts leave a few hundred MB), and that
	// writeback shares the disk with the nodes' syncs, which a p99 at
	// 1,000/s would count as Ferry's.
	syscall.Sync()
	cpuA0, cpuB0 := cpuOf(pa.Pid()), cpuOf(pbs[0].Pid())
	a.start = now()
	a.send(t, time.Second/time.Duration(rate))
	waitAll(t, a, cs, 5*time.Minute)
	r := procResult{ferryResult: ferryResult{Partners: 1, N: n, Elapsed: cs[0].doneAt - a.start, AckedAt: a.doneAt - a.start, Rate: float64(rate)}}
	r.CPUA, r.CPUB = cpuOf(pa.Pid())-cpuA0, []time.Duration{cpuOf(pbs[0].Pid()) - cpuB0}
	r.Check, r.Failed = settle(t, a, cs, wait)
	latencies(&r.ferryResult, a, cs[0])
	r.tail = tailTimes(a, cs[0], r.P99)
	return r
}

// tailTimes says when (seconds from the first send) the samples above p99
// were sent, and how slow each was (the reply at A, the event on B):
// whether a paced run's tail is spread or comes in a few stalls.
func tailTimes(a *app, c *counter, p99 time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "samples above p99 (%v), by send time: reply/event", p99)
	t0 := a.sendNs[0]
	for i := range a.sendNs {
		if d := time.Duration(c.recvNs[i] - a.sendNs[i]); d > p99 {
			fmt.Fprintf(&b, " %.2fs:%.1f/%.1fms", float64(a.sendNs[i]-t0)/1e9, float64(a.ackNs[i]-a.sendNs[i])/1e6, float64(d)/1e6)
		}
	}
	return b.String()
}

// TestProcsQuick runs the process throughput alone and prints it:
//
//	FERRY_BENCH_PROCS=200000 go test ./bench/ -run TestProcsQuick -v -count=1
func TestProcsQuick(t *testing.T) {
	s := os.Getenv("FERRY_BENCH_PROCS")
	if s == "" {
		t.Skip("set FERRY_BENCH_PROCS=<events>")
	}
	n, _ := strconv.Atoi(s)
	partners := 1
	if p := os.Getenv("FERRY_BENCH_PARTNERS"); p != "" {
		partners, _ = strconv.Atoi(p)
	}
	r := ferryProcs(t, partners, n, 2048, 300*time.Millisecond)
	t.Logf("%d events to %d partner(s): %.2fs, %.0f events/s, acked at %.2fs; A %.1f µs/event, partners %s µs/event, app %.1f µs/event; %s",
		n, partners, r.Elapsed.Seconds(), r.EventsPerSec(), r.AckedAt.Seconds(), r.UsPerEvent(), r.partnersUs(),
		float64(r.CPUApp.Microseconds())/float64(n), r.Check)
	t.Logf("send at A → event on B1 (every %d event(s), %d samples): p50 %v, p99 %v, p99/p50 %s, max %v; on disk after a clean stop: %s",
		r.SampleEvery, r.Samples, r.P50, r.P99, ratio(float64(r.P99), float64(r.P50)), r.Max, diskLine(r.Disk, n))
}

func TestMain(m *testing.M) { os.Exit(proc.Main(m)) }

// TestProcsLatencyQuick paces the process run and prints the latency:
//
//	FERRY_BENCH_RATE=1000 go test ./bench/ -run TestProcsLatencyQuick -v -count=1
func TestProcsLatencyQuick(t *testing.T) {
	s := os.Getenv("FERRY_BENCH_RATE")
	if s == "" {
		t.Skip("set FERRY_BENCH_RATE=<events/s>")
	}
	rate, _ := strconv.Atoi(s)
	r := ferryProcsLatency(t, rate, 5*time.Second, 2048, 300*time.Millisecond)
	t.Logf("%d events/s for 5s: send at A to event on B p50 %v, p99 %v, max %v; fsynced reply p50 %v, p99 %v; CPU per event A %.1f µs, B %s µs; %s",
		rate, r.P50, r.P99, r.Max, r.AckP50, r.AckP99, r.UsPerEvent(), r.partnersUs(), r.Check)
	if os.Getenv("FERRY_BENCH_TAIL") != "" {
		t.Log(r.tail)
	}
}

package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// The soak (make soak): A and its partner B as `ferry run` processes, A
// taking FERRY_SOAK_RATE changes a second (default 5,000) for
// FERRY_SOAK_MINUTES (default 10): creates of a fixed set of resources,
// then updates of them round and round, so the resources' current states
// stay the same size and every older delivery record falls out of a short
// retention window (one minute). Every 15 s it samples each process's RSS,
// its store's size and A's store by part (log, ledger, tables). It fails
// when, after a warm-up of a fifth of the run, either RSS moves more than
// 10% or A's ledger grows past what a retention window holds; it reports
// the store's bytes per change. The samples go to bench/results/soak.csv.

// soakIDs is how many resources the soak keeps updating.
const soakIDs = 20_000

// rssOf is a process's resident set size in bytes.
func rssOf(pid int) int64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// scrape reads the value of each named series (name{labels} as written
// by Prometheus) from a node's /metrics.
func scrape(t testing.TB, n *proc.Node, series ...string) map[string]float64 {
	t.Helper()
	_, body, err := n.Get("/metrics")
	if err != nil {
		t.Fatalf("%s /metrics: %v", n.Name(), err)
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(body), "\n") {
		for _, s := range series {
			if rest, ok := strings.CutPrefix(l, s+" "); ok {
				out[s], _ = strconv.ParseFloat(rest, 64)
			}
		}
	}
	return out
}

type soakSample struct {
	at                 time.Duration
	sent, ok, failed   int64
	rssA, rssB         int64
	diskA, diskB       float64
	log, ledger, table float64
	pending            float64
}

func TestSoak(t *testing.T) {
	minutes, _ := strconv.ParseFloat(os.Getenv("FERRY_SOAK_MINUTES"), 64)
	if minutes <= 0 {
		t.Skip("set FERRY_SOAK_MINUTES (make soak runs 10 minutes at 5,000 changes a second)")
	}
	rate := 5000
	if s := os.Getenv("FERRY_SOAK_RATE"); s != "" {
		rate, _ = strconv.Atoi(s)
	}
	d := time.Duration(minutes * float64(time.Minute))
	const window = time.Minute
	retention := func(c *node.Config) { c.Limits.AckRetentionHours = window.Hours() }
	profiles := func(name string) []string {
		dir := os.Getenv("FERRY_BENCH_PROFILES")
		if dir == "" {
			return nil
		}
		return []string{"FERRY_CPUPROFILE=" + dir + "/soak-" + name + ".cpu", "FERRY_MEMPROFILE=" + dir + "/soak-" + name + ".heap"}
	}
	a := proc.New(t, proc.Options{Name: "A", LogLevel: "warn", Configure: retention, Env: profiles("A")})
	b := proc.New(t, proc.Options{Name: "B", LogLevel: "warn", Configure: retention, Env: profiles("B")})
	proc.Partners(a, b)
	a.Start()
	b.Start()
	nc, err := nats.Connect(a.NATSURL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	var sent, ok, failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, 512)
	inbox := nats.NewInbox()
	sub, err := nc.Subscribe(inbox, func(m *nats.Msg) {
		<-sem
		if bytes.Contains(m.Data, []byte(`"ok":true`)) {
			ok.Add(1)
		} else {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, string(m.Data))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	sending := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(sending)
		buf := make([]byte, 0, 512)
		for i := 0; ; i++ {
			if at := start.Add(time.Duration(i) * time.Second / time.Duration(rate)); time.Until(at) > 0 {
				select {
				case <-stop:
					return
				case <-time.After(time.Until(at)):
				}
			}
			select {
			case <-stop:
				return
			case sem <- struct{}{}:
			}
			buf = propagateBody(buf[:0], "s"+strconv.Itoa(i%soakIDs))
			if i >= soakIDs {
				buf = bytes.Replace(buf, []byte(`"create"`), []byte(`"update"`), 1)
			}
			if err := nc.PublishRequest(propagateSub, inbox, buf); err != nil {
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			sent.Add(1)
		}
	}()

	var samples []soakSample
	sample := func() soakSample {
		m := scrape(t, a, `ferry_store_part_bytes{part="log"}`, `ferry_store_part_bytes{part="ledger"}`,
			`ferry_store_part_bytes{part="tables"}`, "ferry_store_disk_bytes", "ferry_delivery_backlog")
		mb := scrape(t, b, "ferry_store_disk_bytes")
		s := soakSample{at: time.Since(start).Round(time.Second), sent: sent.Load(), ok: ok.Load(), failed: failed.Load(),
			rssA: rssOf(a.Pid()), rssB: rssOf(b.Pid()), diskA: m["ferry_store_disk_bytes"], diskB: mb["ferry_store_disk_bytes"],
			log: m[`ferry_store_part_bytes{part="log"}`], ledger: m[`ferry_store_part_bytes{part="ledger"}`],
			table: m[`ferry_store_part_bytes{part="tables"}`], pending: m["ferry_delivery_backlog"]}
		samples = append(samples, s)
		t.Logf("%7v sent %9d ok %9d failed %d | RSS A %5.0f MiB B %5.0f MiB | disk A %6.0f MiB B %6.0f MiB | A log %6.0f ledger %5.1f tables %5.1f MiB | backlog %.0f",
			s.at, s.sent, s.ok, s.failed, float64(s.rssA)/(1<<20), float64(s.rssB)/(1<<20), s.diskA/(1<<20), s.diskB/(1<<20),
			s.log/(1<<20), s.ledger/(1<<20), s.table/(1<<20), s.pending)
		return s
	}
	tick := time.NewTicker(15 * time.Second)
	for time.Since(start) < d {
		<-tick.C
		sample()
		if failed.Load() > 0 {
			break
		}
	}
	tick.Stop()
	close(stop)
	<-sending
	testnet.WaitFor(t, 2*time.Minute, "every request answered", func() bool { return ok.Load()+failed.Load() == sent.Load() })
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed, first: %v", failed.Load(), firstErr.Load())
	}
	testnet.WaitFor(t, 5*time.Minute, "B acknowledged everything", func() bool {
		return scrape(t, a, "ferry_delivery_backlog")["ferry_delivery_backlog"] == 0
	})
	last := sample()
	writeSoakCSV(t, samples)
	if os.Getenv("FERRY_BENCH_PROFILES") != "" {
		a.Term(time.Minute)
		b.Term(time.Minute)
	}

	// After the warm-up: RSS within 10% of its mean.
	warm := samples[len(samples)/5:]
	for _, who := range []string{"A", "B"} {
		lo, hi, sum := int64(1<<62), int64(0), int64(0)
		for _, s := range warm {
			r := s.rssA
			if who == "B" {
				r = s.rssB
			}
			lo, hi, sum = min(lo, r), max(hi, r), sum+r
		}
		mean := float64(sum) / float64(len(warm))
		t.Logf("RSS of %s after the warm-up: %.0f-%.0f MiB, mean %.0f MiB (%+.1f%% / %+.1f%%)", who, float64(lo)/(1<<20), float64(hi)/(1<<20),
			mean/(1<<20), (float64(lo)/mean-1)*100, (float64(hi)/mean-1)*100)
		if float64(hi) > mean*1.10 || float64(lo) < mean*0.90 {
			t.Errorf("RSS of %s is not flat within 10%% after the warm-up", who)
		}
	}
	// The ledger holds at most a few retention windows of records (the
	// window, the sweep's period, compaction's lag), whatever the run's length.
	var maxLedger float64
	for _, s := range warm {
		maxLedger = max(maxLedger, s.ledger)
	}
	perWindow := float64(rate) * window.Seconds() * 64 // generous bytes per record of the ledger
	t.Logf("A's ledger after the warm-up: at most %.1f MiB (a window of %v at %d/s is %.0f records); its log %.0f MiB for %d changes",
		maxLedger/(1<<20), window, rate, float64(rate)*window.Seconds(), last.log/(1<<20), last.ok)
	if maxLedger > 4*perWindow {
		t.Errorf("A's ledger reached %.1f MiB, more than four retention windows' worth (%.1f MiB)", maxLedger/(1<<20), 4*perWindow/(1<<20))
	}
	t.Logf("store bytes per change: A %.0f, B %.0f (files on disk / changes, %d changes of %d resources)",
		last.diskA/float64(last.ok), last.diskB/float64(last.ok), last.ok, soakIDs)
}

func writeSoakCSV(t *testing.T, samples []soakSample) {
	dir := filepath.Join("results")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("soak csv: %v", err)
		return
	}
	var b strings.Builder
	b.WriteString("seconds,sent,ok,failed,rss_a,rss_b,disk_a,disk_b,log_a,ledger_a,tables_a,backlog_a\n")
	for _, s := range samples {
		fmt.Fprintf(&b, "%.0f,%d,%d,%d,%d,%d,%.0f,%.0f,%.0f,%.0f,%.0f,%.0f\n", s.at.Seconds(), s.sent, s.ok, s.failed, s.rssA, s.rssB,
			s.diskA, s.diskB, s.log, s.ledger, s.table, s.pending)
	}
	if err := os.WriteFile(filepath.Join(dir, "soak.csv"), []byte(b.String()), 0o644); err != nil {
		t.Logf("soak csv: %v", err)
	}
}

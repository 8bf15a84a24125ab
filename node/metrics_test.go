package node_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
)

// scrape reads a node's /metrics and returns the sample lines by metric name.
func scrape(t *testing.T, addr string) map[string][]string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	out := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name := line[:strings.IndexAny(line, "{ ")]
		out[name] = append(out[name], line)
	}
	return out
}

// TestMetricsOnAFreshNode: every metric an operator alerts on has a value
// from the first scrape, before anything happened.
func TestMetricsOnAFreshNode(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Reviewer: testnet.At(0), Partners: map[int][]int{0: {1}, 1: {0}}})
	net.WaitMembers(20 * time.Second)
	knowsB(t, net)
	got := scrape(t, net.Node(0).AdminAddr())
	want := map[string][]string{ // metric -> label sets that must be there
		"ferry_delivery_pending":                    {`lane="resource"`, `lane="decision"`, `receiver="B"`},
		"ferry_delivery_oldest_pending_age_seconds": {`lane="resource"`},
		"ferry_delivery_backlog":                    nil,
		"ferry_review_queue_depth":                  nil,
		"ferry_review_decisions_total":              {`outcome="accepted"`, `outcome="edited"`, `outcome="rejected"`, `outcome="refused"`},
		"ferry_review_applied_sequence":             nil,
		"ferry_review_member_lag":                   {`member="B"`},
		"ferry_review_is_reviewer":                  nil,
		"ferry_peers":                               {`role="partner",state="connected"`, `role="reviewer",state="disconnected"`, `role="member",state="connected"`},
		"ferry_nats_requests_total":                 {`subject="ferry.propagate"`, `code="ok"`, `code="not_owner"`, `subject="ferry.review.submit"`},
		"ferry_nats_request_duration_seconds_count": {`subject="ferry.changes"`},
		"ferry_store_disk_bytes":                    nil,
		"ferry_store_disk_free_bytes":               nil,
		"ferry_store_disk_reserve_bytes":            nil,
		"ferry_sync_last_catchup_timestamp_seconds": nil,
		"ferry_build_info":                          {`version="`, `goversion="go`},
		"ferry_search_queries_total":                {`direction="in"`, `direction="out"`},
		"ferry_search_dropped_total":                {`reason="rate_limited"`},
		"ferry_members_pulls_served_total":          {`answer="same"`, `answer="records"`},
		"ferry_members_expired_total":               nil,
		"ferry_connections":                         nil,
	}
	for name, labels := range want {
		lines := got[name]
		if len(lines) == 0 {
			t.Errorf("%s has no value on a fresh node", name)
			continue
		}
		all := strings.Join(lines, "\n")
		for _, l := range labels {
			if !strings.Contains(all, l) {
				t.Errorf("%s has no series with %s:\n%s", name, l, all)
			}
		}
	}
	if v := got["ferry_review_is_reviewer"]; len(v) == 0 || !strings.HasSuffix(v[0], " 1") {
		t.Errorf("the reviewer says ferry_review_is_reviewer %v", v)
	}
	if v := got["ferry_store_disk_bytes"]; len(v) == 0 || strings.HasSuffix(v[0], " 0") {
		t.Errorf("store bytes on disk: %v", v)
	}
	if v := got["ferry_store_disk_free_bytes"]; len(v) == 0 || strings.HasSuffix(v[0], " 0") {
		t.Errorf("free bytes on disk: %v", v)
	}
	// The member: its request lane to the reviewer has a zero series too.
	m := scrape(t, net.Node(1).AdminAddr())
	if all := strings.Join(m["ferry_delivery_pending"], "\n"); !strings.Contains(all, `lane="request"`) {
		t.Errorf("the member has no request-lane series:\n%s", all)
	}
	if len(m["ferry_review_member_lag"]) != 0 {
		t.Errorf("a member exports member lag: %v", m["ferry_review_member_lag"])
	}
}

// TestMetricsFollowTheBacklog: a stopped partner's backlog and its age show
// per receiver; a request counts by subject and code.
func TestMetricsFollowTheBacklog(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Partners: map[int][]int{0: {1}, 1: {0}}})
	net.WaitMembers(20 * time.Second)
	knowsB(t, net)
	net.Stop(1)
	nc := net.NATS(0)
	for _, body := range []string{`{"action":"create","data_type":"vm","payload":{"id":"a"}}`, `{"action":"create","data_type":"vm","payload":{"id":"b"}}`,
		`{"action":"create","data_type":"vm","payload":{"id":"c","creator_id":"someone-else"}}`} {
		if _, err := nc.Request("ferry.propagate", []byte(body), 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	var got map[string][]string
	defer func() {
		if t.Failed() {
			for _, k := range []string{"ferry_delivery_pending", "ferry_delivery_oldest_pending_age_seconds", "ferry_nats_requests_total", "ferry_delivery_backlog"} {
				t.Logf("%s", strings.Join(got[k], "\n"))
			}
		}
	}()
	testnet.WaitFor(t, 10*time.Second, "the backlog shows", func() bool {
		got = scrape(t, net.Node(0).AdminAddr())
		pending := strings.Join(got["ferry_delivery_pending"], "\n")
		age := strings.Join(got["ferry_delivery_oldest_pending_age_seconds"], "\n")
		reqs := strings.Join(got["ferry_nats_requests_total"], "\n")
		return strings.Contains(pending, `lane="resource",receiver="B",receiver_id="`+net.IDs[1].String()+`"} 2`) &&
			!strings.Contains(age, `lane="resource",receiver="B",receiver_id="`+net.IDs[1].String()+`"} 0`) &&
			strings.Contains(reqs, `ferry_nats_requests_total{code="ok",subject="ferry.propagate"} 2`) &&
			strings.Contains(reqs, `ferry_nats_requests_total{code="not_owner",subject="ferry.propagate"} 1`) &&
			strings.Contains(strings.Join(got["ferry_delivery_backlog"], ""), " 2")
	})
}

// knowsB waits until node A has B's name from hello (rows and labels use it).
func knowsB(t *testing.T, net *testnet.Net) {
	t.Helper()
	testnet.WaitFor(t, 20*time.Second, "A knows B's name", func() bool {
		ps := net.Node(0).PeerInfos()
		return len(ps) == 1 && ps[0].Name == "B"
	})
}

// TestOpsDocsNameRealMetrics: every metric the alert rules and the Grafana
// dashboard use is one a fresh node exports (the review group's, one a
// fresh reviewer of a group exports: only those have them).
func TestOpsDocsNameRealMetrics(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Reviewer: testnet.At(0), Partners: map[int][]int{0: {1}, 1: {0}}})
	net.WaitMembers(20 * time.Second)
	got := scrape(t, net.Node(0).AdminAddr())
	group := testnet.Start(t, testnet.Options{N: 3, Reviewers: []int{0, 1, 2}})
	testnet.WaitFor(t, 30*time.Second, "the review group's metrics", func() bool {
		return len(scrape(t, group.Node(0).AdminAddr())["ferry_review_group_has_leader"]) > 0
	})
	for name, lines := range scrape(t, group.Node(0).AdminAddr()) {
		if strings.HasPrefix(name, "ferry_review_group_") {
			got[name] = lines
		}
	}
	if len(scrape(t, net.Node(0).AdminAddr())["ferry_review_group_has_leader"]) != 0 {
		t.Error("a lone reviewer exports the review group's metrics")
	}
	re := regexp.MustCompile(`ferry_[a-z_]+`)
	for _, f := range []string{"../docs/ops/alerts.yml", "../docs/ops/grafana-dashboard.json"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range re.FindAllString(string(b), -1) {
			if len(got[name]) == 0 {
				t.Errorf("%s uses %s, which a fresh node does not export", f, name)
			}
		}
	}
}

// TestDashboardShape: the Grafana dashboard is valid JSON with a node-up
// panel, a job variable used by every query (the alerts group by job),
// thresholds where a bad value exists, and links to the console.
func TestDashboardShape(t *testing.T) {
	b, err := os.ReadFile("../docs/ops/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	type target struct{ Expr string }
	type panel struct {
		Title       string
		Targets     []target
		FieldConfig struct {
			Defaults struct {
				Thresholds *struct{ Steps []struct{ Color string } }
				Links      []struct{ URL string }
			}
		}
	}
	var d struct {
		Panels     []panel
		Templating struct{ List []struct{ Name, Type string } }
		Links      []struct{ URL string }
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("the dashboard is not valid JSON: %v", err)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["job"] != "query" || vars["admin"] == "" {
		t.Errorf("variables %v: want a job query and an admin address", vars)
	}
	up := false
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if !strings.Contains(tg.Expr, `job=~"$job"`) {
				t.Errorf("panel %q: %s does not use $job", p.Title, tg.Expr)
			}
			up = up || strings.HasPrefix(tg.Expr, "up{")
		}
		title := strings.ToLower(p.Title)
		for _, bad := range []string{"backlog", "oldest pending", "disk free", "failures", "node up"} {
			if strings.Contains(title, bad) && (p.FieldConfig.Defaults.Thresholds == nil || len(p.FieldConfig.Defaults.Thresholds.Steps) < 2) {
				t.Errorf("panel %q has no thresholds", p.Title)
			}
		}
	}
	if !up {
		t.Error("no node-up panel (up of the job)")
	}
	console := false
	for _, l := range d.Links {
		console = console || strings.HasPrefix(l.URL, "http://${admin}/")
	}
	if !console {
		t.Errorf("no dashboard link to the console: %+v", d.Links)
	}
}

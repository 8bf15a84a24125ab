package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/store"
)

func TestEvaluate(t *testing.T) {
	now := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	lim := checkLimits{backlogWarning: 5 * time.Minute, backlogCritical: time.Hour}
	healthy := node.HealthReport{Live: true, Ready: true, Store: store.Health{OK: true, FreeBytes: 10 << 30, MinFreeBytes: 256 << 20}}
	yes, no := true, false
	pending := func(age time.Duration) []node.DeliveryState {
		return []node.DeliveryState{{Receiver: "B", Lane: "resource", Pending: 3, OldestPending: now.Add(-age), LastError: "dial backoff"}}
	}
	for _, c := range []struct {
		name  string
		in    checkInput
		want  map[string]string // check -> state
		code  int
		words string
	}{
		{"all well", checkInput{status: node.Status{Health: healthy}}, map[string]string{"health": "ok", "backlog": "ok", "review": "ok", "disk": "ok"}, 0, "no reviewer configured"},
		{"not live", checkInput{status: node.Status{Health: node.HealthReport{Reason: "store stalled for 6s", Store: healthy.Store}}},
			map[string]string{"health": "critical"}, 2, "store stalled"},
		{"draining", checkInput{status: node.Status{Health: node.HealthReport{Live: true, Reason: "draining", Store: healthy.Store}}},
			map[string]string{"health": "warning"}, 1, "not ready: draining"},
		{"young backlog", checkInput{status: node.Status{Health: healthy, PendingAcks: 3}, deliveries: pending(time.Minute)},
			map[string]string{"backlog": "ok"}, 0, "waits 1m0s"},
		{"old backlog", checkInput{status: node.Status{Health: healthy, PendingAcks: 3}, deliveries: pending(10 * time.Minute)},
			map[string]string{"backlog": "warning"}, 1, "for B (resource lane), waits 10m0s: dial backoff"},
		{"stuck backlog", checkInput{status: node.Status{Health: healthy, PendingAcks: 3}, deliveries: pending(2 * time.Hour)},
			map[string]string{"backlog": "critical"}, 2, "waits 2h0m0s"},
		{"held planner lane", checkInput{status: node.Status{Health: healthy}, deliveries: []node.DeliveryState{{Receiver: "B", Pending: 1, OldestPending: now.Add(-2 * time.Hour), Held: true}}},
			map[string]string{"backlog": "ok"}, 0, ""},
		{"reviewer away", checkInput{status: node.Status{Health: healthy, Reviewer: "12D3KooWC"}, reviewerUp: &no},
			map[string]string{"review": "warning"}, 1, "the reviewer 12D3KooWC is not connected"},
		{"reviewer here", checkInput{status: node.Status{Health: healthy, Reviewer: "12D3KooWC"}, reviewerUp: &yes},
			map[string]string{"review": "ok"}, 0, ""},
		{"disk near the reserve", checkInput{status: node.Status{Health: node.HealthReport{Live: true, Ready: true, Store: store.Health{OK: true, FreeBytes: 300 << 20, MinFreeBytes: 256 << 20}}}},
			map[string]string{"disk": "warning"}, 1, "300 MiB free, less than twice the reserve of 256 MiB"},
		{"disk below the reserve", checkInput{status: node.Status{Health: node.HealthReport{Reason: "disk almost full", Store: store.Health{DiskLow: true, FreeBytes: 100 << 20, MinFreeBytes: 256 << 20}}}},
			map[string]string{"disk": "critical", "health": "critical"}, 2, "writes are refused"},
	} {
		c.in.now = now
		rs := evaluate(c.in, lim)
		got := map[string]string{}
		var text strings.Builder
		for _, r := range rs {
			got[r.Name] = r.State
			fmt.Fprintln(&text, r.State, r.Name, r.Detail)
		}
		for k, v := range c.want {
			if got[k] != v {
				t.Errorf("%s: %s is %s, want %s\n%s", c.name, k, got[k], v, text.String())
			}
		}
		if wantC := map[bool]int{true: 1, false: 0}[c.want["health"] == "critical" || c.want["disk"] == "critical"]; containerCode(rs) != wantC {
			t.Errorf("%s: --container exit %d, want %d", c.name, containerCode(rs), wantC)
		}
		if worst(rs) != c.code || !strings.Contains(text.String(), c.words) {
			t.Errorf("%s: exit %d (want %d), lacks %q:\n%s", c.name, worst(rs), c.code, c.words, text.String())
		}
	}
}

// TestCheckCommand runs ferry check against real nodes: ok while all is
// well, warning while a partner is down and a delivery to it waits longer
// than --backlog-warning, critical when the node does not answer.
func TestCheckCommand(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Names: []string{"A", "B"}, Partners: map[int][]int{0: {1}, 1: {0}}})
	net.WaitMembers(20 * time.Second)
	home := net.Homes[0].Dir
	exit := func(err error) int {
		var ee exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		if err != nil {
			t.Fatalf("check: %v", err)
		}
		return 0
	}
	out, err := ferry(t, "--home", home, "check")
	if exit(err) != 0 || !strings.HasPrefix(out, "FERRY OK - every check passed") || !strings.Contains(out, "ok       backlog") {
		t.Fatalf("check on a healthy node: exit %d\n%s", exit(err), out)
	}
	net.Stop(1)
	r, err := net.NATS(0).Request("ferry.propagate", []byte(`{"action":"create","data_type":"vm","payload":{"id":"vm1"}}`), 10*time.Second)
	if err != nil || !strings.Contains(string(r.Data), `"ok":true`) {
		t.Fatalf("create: %v %s", err, r.Data)
	}
	testnet.WaitFor(t, 20*time.Second, "check warns of the delivery to B", func() bool {
		out, err = ferry(t, "--home", home, "check", "--backlog-warning", "1ms", "--json")
		return exit(err) == 1
	})
	var js struct {
		State  string `json:"state"`
		Checks []struct{ Name, State, Detail string }
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil || js.State != "warning" {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	if out, err := ferry(t, "--home", home, "check", "--backlog-warning", "1ms", "--container"); exit(err) != 0 {
		t.Fatalf("check --container with a warning: exit %d (want 0: healthy)\n%s", exit(err), out)
	}
	net.Stop(0)
	out, err = ferry(t, "--home", home, "check")
	if exit(err) != 2 || !strings.HasPrefix(out, "FERRY CRITICAL - node: ") {
		t.Fatalf("check on a stopped node: exit %d\n%s", exit(err), out)
	}
	if out, err := ferry(t, "--home", home, "check", "--container"); exit(err) != 1 {
		t.Fatalf("check --container on a stopped node: exit %d (want 1: unhealthy)\n%s", exit(err), out)
	}
}

// TestBuildStampsTheRevision: a binary built with go build from a git
// checkout (as the Dockerfile's build stage does, .git in its context)
// reports the checkout's revision in ferry version and ferry_build_info.
func TestBuildStampsTheRevision(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout (or no git): %v", err)
	}
	rev := strings.TrimSpace(string(head))
	bin := buildFerry(t)
	r := runBin(t, bin, 30*time.Second, "version", "--json")
	var v struct{ Version, Revision string }
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || r.code != 0 {
		t.Fatalf("ferry version --json: exit %d %v\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	if strings.TrimSuffix(v.Revision, "+dirty") != rev || v.Version != node.Version {
		t.Fatalf("ferry version: %+v, want revision %s (maybe +dirty) and version %s", v, rev, node.Version)
	}
	home := t.TempDir()
	cmd := exec.Command(bin, append([]string{"run", "--home", home}, localFlags...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var metrics string
	testnet.WaitFor(t, 30*time.Second, "the node serves /metrics", func() bool {
		b, err := os.ReadFile(filepath.Join(home, node.AdminAddrFile))
		if err != nil {
			return false
		}
		code, body := httpGet(t, "http://"+strings.TrimSpace(string(b))+"/metrics")
		metrics = body
		return code == 200
	})
	want := fmt.Sprintf(`ferry_build_info{goversion="%s",revision="%s",version="%s"} 1`, runtime.Version(), v.Revision, node.Version)
	if !strings.Contains(metrics, want) {
		t.Fatalf("/metrics lacks %s:\n%s", want, grepLine(metrics, "ferry_build_info"))
	}
}

// TestDockerfile reads the Dockerfile as the image build would use it
// (images cannot be built here): the home directory exists in the image
// owned by the user the node runs as, the health check is ferry check
// --container, and .git reaches the build stage for the revision stamp.
func TestDockerfile(t *testing.T) {
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	ignore, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	d := string(df)
	for _, want := range []string{
		"COPY --from=build --chown=65532:65532 /out/home /var/lib/ferry",
		"USER 65532:65532",
		`HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["/usr/local/bin/ferry", "check", "--container"]`,
		"ENV FERRY_HOME=/var/lib/ferry",
		`VOLUME ["/var/lib/ferry"]`,
	} {
		if !strings.Contains(d, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if strings.Index(d, "COPY --from=build --chown=65532:65532 /out/home /var/lib/ferry") > strings.Index(d, "VOLUME") {
		t.Error("the home must be in the image before VOLUME declares it (a new volume copies its owner)")
	}
	for _, l := range strings.Split(string(ignore), "\n") {
		if strings.TrimSpace(l) == ".git/" || strings.TrimSpace(l) == ".git" {
			t.Error(".dockerignore drops .git: go build cannot stamp the revision")
		}
	}
	// The health check's command line parses.
	if out, err := ferry(t, "check", "--container", "--help"); err != nil {
		t.Fatalf("ferry check --container: %v\n%s", err, out)
	}
}

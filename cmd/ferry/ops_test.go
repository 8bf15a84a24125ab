package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

func TestRelativeTimes(t *testing.T) {
	ref := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "just now"}, {-400 * time.Millisecond, "just now"}, {3 * time.Second, "3s ago"}, {-8 * time.Second, "in 8s"},
		{90 * time.Second, "1m30s ago"}, {12 * time.Minute, "12m ago"}, {3*time.Hour + 20*time.Minute, "3h20m ago"},
		{26 * time.Hour, "26h ago"}, {72 * time.Hour, "3d ago"},
	} {
		if got := relative(ref.Add(-tc.d), ref); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.d, got, tc.want)
		}
	}
	g := &globals{absolute: true}
	if got := g.when(ref); got != "2026-01-02T15:04:05Z" {
		t.Errorf("--absolute: %q", got)
	}
	if got := (&globals{}).when(time.Time{}); got != "-" {
		t.Errorf("no time: %q", got)
	}
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// watching runs `ferry watch` against a home until the test ends.
func watching(t *testing.T, home string) (*lockedBuffer, chan error, context.CancelFunc) {
	t.Helper()
	g := &globals{home: home}
	c, err := g.client()
	if err != nil {
		t.Fatal(err)
	}
	out := &lockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.watch(ctx, c, out, nil, true) }()
	t.Cleanup(func() { cancel(); <-done })
	return out, done, cancel
}

// TestOperatorCommands drives the CLI against a running network: times,
// the request detail view, not-found exits, acks with kinds, filters,
// pages and the last error, version, watch and trace.
func TestOperatorCommands(t *testing.T) {
	const nA, nB, nC = 0, 1, 2
	net := testnet.Start(t, testnet.Options{N: 3, Reviewer: testnet.At(nC), Partners: map[int][]int{nA: {nB}, nB: {nA}}})
	net.WaitMembers(30 * time.Second)
	testnet.WaitFor(t, 20*time.Second, "C knows A's and B's names", func() bool {
		n := 0
		for _, p := range net.Node(nC).PeerInfos() {
			if p.Name == "A" || p.Name == "B" {
				n++
			}
		}
		return n == 2
	})
	home := func(i int) string { return net.Homes[i].Dir }
	watchA, _, _ := watching(t, home(nA))
	watchB, _, _ := watching(t, home(nB))

	// Bad JSON names the argument and the problem, in the operator's words.
	_, err := ferry(t, "--home", home(nA), "submit", "insert", "tb", "1", "notjson")
	if err == nil || !strings.Contains(err.Error(), `the data "notjson" is not valid JSON (invalid character 'o' in literal null (expecting 'u') at byte 2)`) {
		t.Fatalf("submit notjson: %v", err)
	}
	checkWords(t, "submit notjson", err.Error())
	if _, err = ferry(t, "--home", home(nA), "submit", "insert", "tb", "1", "[1]"); err == nil || !strings.Contains(err.Error(), "must be a JSON object") {
		t.Fatalf("submit [1]: %v", err)
	}
	checkWords(t, "submit [1]", err.Error())
	// A refusal of the node reaches the operator as the node said it.
	_, err = ferry(t, "--home", home(nA), "publish", "considers", "vm", `{"peer_ids":"B"}`)
	if err == nil || !strings.Contains(err.Error(), `payload.peer_ids must be an array of peer ids (strings), got "B"`) {
		t.Fatalf("publish considers with a bad peer_ids: %v", err)
	}
	checkWords(t, "publish considers", err.Error())
	out := mustFerry(t, "--home", home(nA), "submit", "update", "tb", "1", `{"name":"new"}`, "--description", "rename")
	// CREATED_AT is relative: "just now", or a few seconds on a loaded
	// machine (the age is not what is tested).
	if !strings.Contains(out, "waiting") || !regexp.MustCompile(`just now|\b\d+s ago`).MatchString(out) {
		t.Fatalf("submit printed:\n%s", out)
	}
	var id uint64
	testnet.WaitFor(t, 20*time.Second, "C holds the request", func() bool {
		rs, _ := net.Node(nC).Review().Requests("waiting")
		if len(rs) == 1 {
			id = rs[0].ID
		}
		return id != 0
	})
	ids := strconv.FormatUint(id, 10)
	// Times: relative by default, absolute on request.
	if out := mustFerry(t, "--home", home(nC), "requests", "list"); !strings.Contains(out, "ago") && !strings.Contains(out, "just now") {
		t.Fatalf("requests list times:\n%s", out)
	}
	if out := mustFerry(t, "--home", home(nC), "requests", "list", "--absolute"); !strings.Contains(out, time.Now().UTC().Format("2006-01-02T")) {
		t.Fatalf("requests list --absolute:\n%s", out)
	}
	// The detail view: the row it changes (missing here: the update is a conflict), the diff, the receivers.
	out = mustFerry(t, "--home", home(nC), "requests", "show", ids)
	for _, want := range []string{"change          update tb row 1", "current row", "(none: the row does not exist here)", "conflict",
		"accept goes to  A, B", "reject goes to  A", "FIELD", "name   added   -        \"new\""} {
		if !strings.Contains(out, want) {
			t.Fatalf("requests show lacks %q:\n%s", want, out)
		}
	}
	var detail node.RequestDetail
	if err := json.Unmarshal([]byte(mustFerry(t, "--home", home(nC), "requests", "show", ids, "--json")), &detail); err != nil ||
		detail.Request.ID != id || len(detail.Diff) != 1 || detail.Diff[0].Field != "name" {
		t.Fatalf("requests show --json: %+v %v", detail, err)
	}
	// Not found exits non-zero.
	for _, args := range [][]string{{"requests", "show", "999"}, {"rows", "nosuch"}, {"trace", "A/999"}, {"trace", "nobody/1"}} {
		if out, err := ferry(t, append([]string{"--home", home(nC)}, args...)...); err == nil || !strings.Contains(err.Error(), "not") {
			t.Errorf("ferry %v: %v\n%s", args, err, out)
		}
	}
	// Reject it, then a request that is accepted.
	mustFerry(t, "--home", home(nC), "requests", "reject", ids, "--note", "no row 1")
	mustFerry(t, "--home", home(nA), "submit", "insert", "tb", "1", `{"name":"one"}`)
	testnet.WaitFor(t, 20*time.Second, "C holds the insert", func() bool {
		rs, _ := net.Node(nC).Review().Requests("waiting")
		if len(rs) == 1 {
			id = rs[0].ID
		}
		return len(rs) == 1
	})
	mustFerry(t, "--home", home(nC), "requests", "accept", strconv.FormatUint(id, 10))
	testnet.WaitFor(t, 20*time.Second, "A and B applied the decision", func() bool {
		for _, i := range []int{nA, nB} {
			if rows, _ := net.Node(i).Rows("tb"); len(rows) != 1 {
				return false
			}
		}
		return true
	})
	// Acks: KIND column, filters, pages.
	testnet.WaitFor(t, 20*time.Second, "C's decision rows are sended", func() bool {
		p, _ := net.Node(nC).Acks(node.AckQuery{State: "pending"})
		return len(p.Rows) == 0
	})
	out = mustFerry(t, "--home", home(nC), "acks", "list")
	if !strings.Contains(out, "KIND") || !strings.Contains(out, "LAST ERROR") || !strings.Contains(out, "decision") {
		t.Fatalf("acks list:\n%s", out)
	}
	out = mustFerry(t, "--home", home(nC), "acks", "list", "--receiver", "A", "--kind", "decision", "--state", "sended")
	if strings.Contains(out, " B ") || strings.Count(out, "\n") != 3 { // header, the rejection, the acceptance
		t.Fatalf("acks list --receiver A --kind decision:\n%s", out)
	}
	out = mustFerry(t, "--home", home(nC), "acks", "list", "--limit", "1")
	if !strings.Contains(out, "more: ferry acks list --before ") {
		t.Fatalf("acks list --limit 1:\n%s", out)
	}
	next := strings.TrimSuffix(strings.Fields(out[strings.Index(out, "--before "):])[1], "\n")
	if out2 := mustFerry(t, "--home", home(nC), "acks", "list", "--limit", "1", "--before", next); strings.Split(out2, "\n")[1] == strings.Split(out, "\n")[1] {
		t.Fatalf("the second page repeats the first:\n%s\n%s", out, out2)
	}
	for _, args := range [][]string{{"--state", "lost"}, {"--kind", "mail"}, {"--pending", "--state", "sended"}} {
		if _, err := ferry(t, append([]string{"--home", home(nC), "acks", "list"}, args...)...); err == nil {
			t.Errorf("acks list %v accepted", args)
		}
	}
	// A stuck delivery shows its last error.
	net.Stop(nB)
	out = mustFerry(t, "--home", home(nA), "publish", "create", "vm", `{"id":"vm1"}`)
	ver := strings.Fields(out[strings.Index(out, "version"):])[1]
	defer func() {
		if t.Failed() {
			t.Log(out)
		}
	}()
	testnet.WaitFor(t, 30*time.Second, "A's row for B carries an error", func() bool {
		out = mustFerry(t, "--home", home(nA), "acks", "list", "--state", "pending", "--kind", "resource")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		return len(lines) == 2 && strings.Contains(lines[1], "pending") && !strings.HasSuffix(lines[1], " -") && strings.Contains(lines[1], "open /ferry/resource/create")
	})
	// Trace prints a table: the origin, and the pending receiver with its error.
	out = mustFerry(t, "--home", home(nA), "trace", "A/"+ver)
	if !strings.HasPrefix(out, "resource vm A/"+ver+", committed ") || !strings.Contains(out, "NODE") ||
		!regexp.MustCompile(`(?m)^A +origin +yes +`+ver).MatchString(out) || !regexp.MustCompile(`(?m)^B +receiver .* pending`).MatchString(out) {
		t.Fatalf("trace:\n%s", out)
	}
	// The same change named by its resource on its origin; --puml draws it.
	if by := mustFerry(t, "--home", home(nA), "trace", "vm/vm1"); by != out && !strings.HasPrefix(by, "resource vm A/"+ver+",") {
		t.Fatalf("trace vm/vm1:\n%s", by)
	}
	puml := mustFerry(t, "--home", home(nA), "trace", "vm/vm1", "--puml")
	if !strings.HasPrefix(puml, "@startuml") || !strings.Contains(puml, "committed as version "+ver) || !strings.Contains(puml, "->x") {
		t.Fatalf("trace --puml:\n%s", puml)
	}
	// A request by its id (A's row of it): the change that carried it, from A.
	rows, err := net.Node(nA).Review().Requests("accepted")
	if err != nil || len(rows) != 1 {
		t.Fatalf("A's accepted requests: %v %v", rows, err)
	}
	if req := mustFerry(t, "--home", home(nA), "trace", strconv.FormatUint(rows[0].ID, 10)); !strings.Contains(req, "NODE") || !regexp.MustCompile(`(?m)^A +origin +yes`).MatchString(req) {
		t.Fatalf("trace of request %d:\n%s", rows[0].ID, req)
	}
	// Watch saw A commit, C's decision applied and B applying it.
	testnet.WaitFor(t, 10*time.Second, "watch lines", func() bool {
		a, b := watchA.String(), watchB.String()
		return strings.Contains(a, "committed  create vm vm1, version "+ver+" -> B") && strings.Contains(a, "submitted") &&
			regexp.MustCompile(`applied    decision \(request \d+\) .* from C: accepted insert tb row 1 \(sequence \d+\)`).MatchString(a) &&
			strings.Contains(a, "published  ferry.review.decided.tb") && strings.Contains(b, "applied    decision (request ")
	})
	if !strings.Contains(watchA.String(), "acked      request version") {
		t.Fatalf("watch on A shows no ack of its request:\n%s", watchA.String())
	}
	// Version.
	if out := mustFerry(t, "version"); !strings.HasPrefix(out, "ferry "+node.Version+" (revision ") {
		t.Fatalf("version: %q", out)
	}
	var v map[string]string
	if err := json.Unmarshal([]byte(mustFerry(t, "version", "--json")), &v); err != nil || v["version"] != node.Version || v["go"] == "" {
		t.Fatalf("version --json: %v %v", v, err)
	}
}

// TestWatchEndsWhenTheNodeStops: watch says the node went away and fails.
func TestWatchEndsWhenTheNodeStops(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1})
	_, done, _ := watching(t, net.Homes[0].Dir)
	net.Stop(0)
	select {
	case err := <-done:
		if err == nil || !(strings.Contains(err.Error(), "node stopped") || errors.Is(err, errNotRunning)) {
			t.Fatalf("watch ended with %v", err)
		}
		done <- err // for the cleanup
	case <-time.After(15 * time.Second):
		t.Fatal("watch still runs 15 s after the node stopped")
	}
}

// TestStoppedNodeHome: the commands of a stopped node's home say it is not
// running, and never show another node's answer: not the one that took its
// old address, not one on the default admin port.
func TestStoppedNodeHome(t *testing.T) {
	stopped := t.TempDir()
	mustFerry(t, "init", "--home", stopped, "--name", "S")
	if _, err := ferry(t, "--home", stopped, "status"); err == nil || !strings.Contains(err.Error(), "node is not running") {
		t.Fatalf("status of a home that never ran: %v", err)
	}

	t.Run("another node took the address", func(t *testing.T) {
		net := testnet.Start(t, testnet.Options{N: 1})
		other := net.Node(0).AdminAddr()
		if err := os.WriteFile(filepath.Join(stopped, node.AdminAddrFile), []byte(other+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(filepath.Join(stopped, node.AdminAddrFile))
		out, err := ferry(t, "--home", stopped, "status")
		if err == nil || !strings.Contains(err.Error(), "node is not running") || !strings.Contains(err.Error(), "another node") ||
			strings.Contains(out, net.IDs[0].String()) {
			t.Fatalf("status with a stale admin.addr: %v\n%s", err, out)
		}
	})

	t.Run("nothing at the old address", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if err := os.WriteFile(filepath.Join(stopped, node.AdminAddrFile), []byte(addr+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(filepath.Join(stopped, node.AdminAddrFile))
		if _, err := ferry(t, "--home", stopped, "peers"); err == nil || !strings.Contains(err.Error(), "node is not running") {
			t.Fatalf("peers with a dead admin.addr: %v", err)
		}
	})

	t.Run("another node on the default admin port", func(t *testing.T) {
		// The stopped home's ferry.yaml names 127.0.0.1:7480, the default.
		// Something that answers like a Ferry node listens there, when the
		// port is free; the CLI must not ask it.
		l, err := net.Listen("tcp", "127.0.0.1:7480")
		if err != nil {
			t.Skipf("127.0.0.1:7480 is taken (%v): the case where another node holds the default admin port is not run here", err)
		}
		asked := make(chan struct{}, 16)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			asked <- struct{}{}
			w.Header().Set(node.PeerHeader, "12D3KooWSomebodyElse")
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"ok":true,"status":{"name":"OTHER"},"peers":[]}`))
		}), ReadHeaderTimeout: time.Second}
		go func() { _ = srv.Serve(l) }()
		defer srv.Close()
		for _, cmd := range []string{"status", "peers"} {
			out, err := ferry(t, "--home", stopped, cmd)
			if err == nil || !strings.Contains(err.Error(), "node is not running") || strings.Contains(out, "OTHER") {
				t.Fatalf("%s of a stopped home while another answers on 7480: %v\n%s", cmd, err, out)
			}
		}
		if len(asked) != 0 {
			t.Fatal("the CLI asked whatever listens on the default admin port")
		}
	})
}

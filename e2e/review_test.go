package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
)

const (
	nA, nB, nC, nD = 0, 1, 2, 3 // C is the reviewer
)

func reviewNet(t *testing.T) *testnet.Net {
	net := testnet.Start(t, testnet.Options{N: 4, Reviewer: testnet.At(nC)})
	net.WaitMembers(30 * time.Second)
	return net
}

// admin calls a node's admin API as the CLI does.
func admin(t *testing.T, net *testnet.Net, i int, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+net.Node(i).AdminAddr()+path, rd)
	tok, err := net.Homes[i].Token()
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func errCode(out map[string]any) string {
	e, _ := out["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

// decideAt has the reviewer's operator decide through the admin API.
func decideAt(t *testing.T, net *testnet.Net, id uint64, decision string, body map[string]any) {
	t.Helper()
	status, out := admin(t, net, nC, "POST", fmt.Sprintf("/api/v1/requests/%d/%s", id, decision), body)
	if status != 200 {
		t.Fatalf("%s %d: %d %v", decision, id, status, out)
	}
}

// settled waits until every node shows the request of origin with status,
// and every ack row of it at the applicant and the reviewer is sended.
func settled(t *testing.T, net *testnet.Net, origin, status string, holders []int) {
	t.Helper()
	testnet.WaitFor(t, 30*time.Second, origin+" "+status+" where expected and acked", func() bool {
		for _, i := range holders {
			r, err := net.Node(i).Review().RequestByOrigin(origin)
			if err != nil || r.Status != status {
				return false
			}
		}
		for _, i := range []int{nA, nB, nC, nD} {
			r, err := net.Node(i).Review().RequestByOrigin(origin)
			if err != nil {
				continue
			}
			acks, err := net.Node(i).Acks(node.AckQuery{RequestID: r.ID, State: node.AckPending})
			if err != nil || len(acks.Rows) > 0 {
				return false
			}
		}
		return true
	})
}

// ackRows returns the acknowledgement rows of origin's request at node i as
// "receiver:ack" strings.
func ackRows(t *testing.T, net *testnet.Net, i int, origin string) []string {
	t.Helper()
	r, err := net.Node(i).Review().RequestByOrigin(origin)
	if err != nil {
		return nil
	}
	acks, err := net.Node(i).Acks(node.AckQuery{RequestID: r.ID})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range acks.Rows {
		out = append(out, a.Receiver+":"+a.Ack)
	}
	return out
}

func rowsOf(t *testing.T, n *node.Node, table string) string {
	t.Helper()
	rs, err := n.Rows(table)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(rs)
	return string(b)
}

// TestReviewCases plays every case of source 000 through NATS (apps) and the
// admin API (the reviewer's operator), asserting every node's request,
// acknowledgement and table rows.
func TestReviewCases(t *testing.T) {
	net := reviewNet(t)
	apps := []*nats.Conn{net.NATS(nA), net.NATS(nB), net.NATS(nC), net.NATS(nD)}
	all := []int{nA, nB, nC, nD}
	cases := []struct {
		name     string
		typ      string
		seed     string // a row 5 accepted first, or ""
		data     string
		decision string
		edit     map[string]any
		status   string
		want     string // tb rows after, on every node
	}{
		{"insert/accepted", "insert", "", `{"unique_num":40123,"name":"name3"}`, "accept", nil, "accepted",
			`[{"id":5,"name":"name3","unique_num":40123}]`},
		{"insert/rejected", "insert", "", `{"unique_num":40123,"name":"name3"}`, "reject", nil, "rejected", `[]`},
		{"insert/edited", "insert", "", `{"unique_num":40123,"name":"name3"}`, "edit", map[string]any{"set": map[string]string{"name": "fixed"}},
			"edited", `[{"id":5,"name":"fixed","unique_num":40123}]`},
		{"update/accepted", "update", `{"unique_num":1,"name":"old"}`, `{"name":"new"}`, "accept", nil, "accepted",
			`[{"id":5,"name":"new","unique_num":1}]`},
		{"update/rejected", "update", `{"unique_num":1,"name":"old"}`, `{"name":"new"}`, "reject", nil, "rejected",
			`[{"id":5,"name":"old","unique_num":1}]`},
		{"update/edited", "update", `{"unique_num":1,"name":"old"}`, `{"name":"new"}`, "edit", map[string]any{"data": map[string]any{"name": "newer", "unique_num": 2}},
			"edited", `[{"id":5,"name":"newer","unique_num":2}]`},
		{"delete/accepted", "delete", `{"unique_num":1,"name":"old"}`, `{}`, "accept", nil, "accepted", `[]`},
		{"delete/rejected", "delete", `{"unique_num":1,"name":"old"}`, `{}`, "reject", nil, "rejected",
			`[{"id":5,"name":"old","unique_num":1}]`},
	}
	for k, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			table := fmt.Sprintf("tb%d", k)
			if tc.seed != "" {
				seed := submit(t, apps[nB], "insert", table, 5, tc.seed)
				decideAt(t, net, waitingAt(t, net.Node(nC), seed.Origin).ID, "accept", nil)
				settled(t, net, seed.Origin, "accepted", all)
			}
			req := submit(t, apps[nA], tc.typ, table, 5, tc.data)
			if req.Status != "waiting" || req.Applicant != "A" || req.Reviewer != "C" || req.Description.Sender != "test" {
				t.Fatalf("submitted row %+v", req)
			}
			atC := waitingAt(t, net.Node(nC), req.Origin)
			if atC.Conflict != "" {
				t.Fatalf("reviewer sees a conflict: %s", atC.Conflict)
			}
			decideAt(t, net, atC.ID, tc.decision, tc.edit)
			holders := all
			if tc.status == "rejected" {
				holders = []int{nA, nC}
			}
			settled(t, net, req.Origin, tc.status, holders)
			for _, i := range all {
				r, err := net.Node(i).Review().RequestByOrigin(req.Origin)
				switch {
				case tc.status == "rejected" && (i == nB || i == nD):
					if err == nil {
						t.Errorf("node %d holds a rejection meant for A: %+v", i, r)
					}
				case err != nil:
					t.Errorf("node %d: %v", i, err)
				default:
					if r.Type != tc.typ || r.TableName != table || r.TableID != 5 || r.Applicant != "A" || r.Reviewer != "C" {
						t.Errorf("node %d row %+v", i, r)
					}
					if tc.status != "rejected" && r.Sequence == 0 {
						t.Errorf("node %d: applied row without a sequence", i)
					}
					if r.Description.Receiver == "" {
						t.Errorf("node %d: no description.receiver", i)
					}
				}
				if got := rowsOf(t, net.Node(i), table); got != tc.want {
					t.Errorf("node %d %s = %s, want %s", i, table, got, tc.want)
				}
			}
			// The source's acknowledgement tables.
			if got := fmt.Sprint(ackRows(t, net, nA, req.Origin)); got != "[C:sended]" {
				t.Errorf("A's acks %s", got)
			}
			wantC := "[A:sended B:sended D:sended]"
			if tc.status == "rejected" {
				wantC = "[A:sended]"
			}
			if got := fmt.Sprint(ackRows(t, net, nC, req.Origin)); got != wantC {
				t.Errorf("C's acks %s, want %s", got, wantC)
			}
			for _, i := range []int{nB, nD} {
				if got := ackRows(t, net, i, req.Origin); len(got) != 0 {
					t.Errorf("node %d has ack rows %v", i, got)
				}
			}
		})
	}
}

// TestReviewBadInput: every refusal leaves the ledger unchanged.
func TestReviewBadInput(t *testing.T) {
	net := reviewNet(t)
	a := net.NATS(nA)
	before := func() string {
		return fmt.Sprint(must2(net.Node(nA).Review().Requests(""))) + fmt.Sprint(must2(net.Node(nA).Acks(node.AckQuery{})))
	}
	b0 := before()
	w := &words{t: t}
	for _, tc := range []struct{ body, code string }{
		{`{"type":"upsert","table_name":"tb","table_id":1,"data":{}}`, "bad_request"},
		{`{"type":"insert","table_id":1,"data":{}}`, "bad_request"},
		{`{"type":"insert","table_name":"tb","data":{}}`, "bad_request"},
		{`{"type":"insert","table_name":"tb","table_id":1,"data":[1,2]}`, "bad_request"},
		{`{"type":"insert","table_name":"tb","table_id":1,"data":"x"}`, "bad_request"},
		{`{"type":"insert","table_name":"t.b","table_id":1,"data":{}}`, "bad_request"},
		{`{"type":"insert","table_name":"tb","table_id":-1,"data":{}}`, "bad_request"},
		{`not json`, "bad_request"},
	} {
		var r reply
		testnet.Request(t, a, "ferry.review.submit", tc.body, &r)
		if r.OK || r.Error == nil || r.Error.Code != tc.code {
			t.Errorf("%s: %+v, want %s", tc.body, r.Error, tc.code)
			continue
		}
		w.check(tc.body, r.Error.Message, tc.body)
	}
	if before() != b0 {
		t.Fatal("a refused submit changed the ledger")
	}
	// Decisions: unknown request, not on the reviewer, edit of a delete, twice.
	if s, out := admin(t, net, nC, "POST", "/api/v1/requests/999/accept", nil); s != 404 || errCode(out) != "not_found" {
		t.Errorf("unknown request: %d %v", s, out)
	} else {
		w.check("accept of an unknown request", errMessage(out), "")
	}
	del := submit(t, a, "delete", "tb", 1, `{}`)
	atC := waitingAt(t, net.Node(nC), del.Origin)
	if s, out := admin(t, net, nA, "POST", fmt.Sprintf("/api/v1/requests/%d/accept", del.ID), nil); s != 403 || errCode(out) != "forbidden" {
		t.Errorf("decision on a non-reviewer: %d %v", s, out)
	}
	if atC.Conflict == "" {
		t.Error("the reviewer does not see that the row to delete is missing")
	}
	if s, out := admin(t, net, nC, "POST", fmt.Sprintf("/api/v1/requests/%d/edit", atC.ID), map[string]any{"data": map[string]any{"x": 1}}); s != 400 || errCode(out) != "bad_request" {
		t.Errorf("edit of a delete: %d %v", s, out)
	} else {
		w.check("edit of a delete", errMessage(out), "")
	}
	if s, out := admin(t, net, nC, "POST", fmt.Sprintf("/api/v1/requests/%d/accept", atC.ID), nil); s != 409 || errCode(out) != "conflict" {
		t.Errorf("accepting a delete of a missing row: %d %v", s, out)
	} else {
		w.check("accepting a delete of a missing row", errMessage(out), "")
	}
	decideAt(t, net, atC.ID, "reject", nil)
	if s, out := admin(t, net, nC, "POST", fmt.Sprintf("/api/v1/requests/%d/accept", atC.ID), nil); s != 409 || errCode(out) != "conflict" {
		t.Errorf("deciding twice: %d %v", s, out)
	}
	if got := must2(net.Node(nC).Review().RequestByOrigin(del.Origin)); got.Status != "rejected" {
		t.Errorf("the refused decisions changed the row: %+v", got)
	}
	// NATS decide is off unless configured.
	var r reply
	testnet.Request(t, net.NATS(nC), "ferry.review.decide", fmt.Sprintf(`{"request_id":%d,"decision":"accept"}`, atC.ID), &r)
	if r.OK || r.Error.Code != "forbidden" {
		t.Errorf("NATS decide without review.nats_decide: %+v", r.Error)
	}
}

func must2[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestConsoleServed: the review console is served at / without a token
// (it asks for one and sends it with every API call).
func TestConsoleServed(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1})
	resp, err := http.Get("http://" + net.Node(0).AdminAddr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !bytes.Contains(b, []byte("Ferry console")) || !bytes.Contains(b, []byte("/console/console.js")) {
		t.Fatalf("GET /: %d %.200s", resp.StatusCode, b)
	}
	js, err := http.Get("http://" + net.Node(0).AdminAddr() + "/console/console.js")
	if err != nil {
		t.Fatal(err)
	}
	defer js.Body.Close()
	b, _ = io.ReadAll(js.Body)
	if js.StatusCode != 200 || !bytes.Contains(b, []byte("/api/v1/")) {
		t.Fatalf("GET /console/console.js: %d %.200s", js.StatusCode, b)
	}
}

// TestSubmitWithoutReviewer is refused as unavailable.
func TestSubmitWithoutReviewer(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1})
	var r reply
	testnet.Request(t, net.NATS(0), "ferry.review.submit", `{"type":"insert","table_name":"tb","table_id":1,"data":{}}`, &r)
	if r.OK || r.Error.Code != "unavailable" {
		t.Fatalf("%+v", r.Error)
	}
}

// TestReviewFaults: the reviewer is down when A submits; D is down during
// the broadcast; the reviewer restarts between deciding and sending.
func TestReviewFaults(t *testing.T) {
	net := reviewNet(t)
	a := net.NATS(nA)
	all := []int{nA, nB, nC, nD}

	// 1. The reviewer is down: A's ack stays pending, the request arrives later.
	net.Stop(nC)
	req := submit(t, a, "insert", "tb", 1, `{"v":1}`)
	if got := fmt.Sprint(ackRows(t, net, nA, req.Origin)); got != "[C:pending]" {
		t.Fatalf("A's acks while C is down: %s", got)
	}
	net.Restart(nC)
	atC := waitingAt(t, net.Node(nC), req.Origin)
	testnet.WaitFor(t, 30*time.Second, "A's ack sended", func() bool { return fmt.Sprint(ackRows(t, net, nA, req.Origin)) == "[C:sended]" })

	// 2. D is down during the broadcast.
	net.Stop(nD)
	decideAt(t, net, atC.ID, "accept", nil)
	settledOn := func(origin string, nodes []int) {
		testnet.WaitFor(t, 30*time.Second, "decision applied", func() bool {
			for _, i := range nodes {
				if r, err := net.Node(i).Review().RequestByOrigin(origin); err != nil || r.Status != "accepted" {
					return false
				}
			}
			return true
		})
	}
	settledOn(req.Origin, []int{nA, nB, nC})
	testnet.WaitFor(t, 30*time.Second, "C's acks for A and B sended, D's pending", func() bool {
		return fmt.Sprint(ackRows(t, net, nC, req.Origin)) == "[A:sended B:sended D:pending]"
	})
	net.Restart(nD)
	settled(t, net, req.Origin, "accepted", all)

	// 3. The reviewer decides, then restarts before anything is sent.
	req2 := submit(t, a, "insert", "tb", 2, `{"v":2}`)
	atC2 := waitingAt(t, net.Node(nC), req2.Origin)
	for _, i := range []int{nA, nB, nD} {
		net.Node(nC).CutLink(net.IDs[i])
	}
	decideAt(t, net, atC2.ID, "accept", nil)
	if got := fmt.Sprint(ackRows(t, net, nC, req2.Origin)); got != "[A:pending B:pending D:pending]" {
		t.Fatalf("C's acks before the restart: %s", got)
	}
	net.Restart(nC) // a fresh process: the cut is gone, the ledger is on disk
	settled(t, net, req2.Origin, "accepted", all)
	waitConverged(t, net, all, 30*time.Second, "tb")
	for _, i := range all {
		if got := net.Node(i).Review().Applied(); got != 2 {
			t.Errorf("node %d applied %d decisions, want 2 (each once)", i, got)
		}
	}
}

// TestRacingApplicants: A and B update the same row; the reviewer accepts
// both; every node applies them in the reviewer's order.
func TestRacingApplicants(t *testing.T) {
	net := reviewNet(t)
	all := []int{nA, nB, nC, nD}
	seed := submit(t, net.NATS(nC), "insert", "tb", 1, `{"owner":"none"}`)
	decideAt(t, net, seed.ID, "accept", nil)
	ra := submit(t, net.NATS(nA), "update", "tb", 1, `{"owner":"A"}`)
	rb := submit(t, net.NATS(nB), "update", "tb", 1, `{"owner":"B"}`)
	atA, atB := waitingAt(t, net.Node(nC), ra.Origin), waitingAt(t, net.Node(nC), rb.Origin)
	// Decide both at once; the reviewer's commit order is the order.
	done := make(chan error, 2)
	for _, id := range []uint64{atB.ID, atA.ID} {
		go func() {
			net.Node(nC).Decide(review.DecideRequest{RequestID: id, Decision: "accept"}, func(_ review.Row, err error) { done <- err })
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	settled(t, net, ra.Origin, "accepted", all)
	settled(t, net, rb.Origin, "accepted", all)
	sa := must2(net.Node(nC).Review().RequestByOrigin(ra.Origin)).Sequence
	sb := must2(net.Node(nC).Review().RequestByOrigin(rb.Origin)).Sequence
	winner := `"owner":"A"`
	if sb > sa {
		winner = `"owner":"B"`
	}
	for _, i := range all {
		if got := must2(net.Node(i).Review().RequestByOrigin(ra.Origin)).Sequence; got != sa {
			t.Errorf("node %d gives A's request sequence %d, the reviewer %d", i, got, sa)
		}
		if got := rowsOf(t, net.Node(i), "tb"); !bytes.Contains([]byte(got), []byte(winner)) {
			t.Errorf("node %d row %s, want the later decision %s", i, got, winner)
		}
	}
}

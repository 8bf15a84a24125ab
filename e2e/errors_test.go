package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/internal/wording"
	"github.com/ferrynet/ferry/node"
)

// words collects the error messages a test provoked and fails the test if
// any speaks Go (internal/wording) instead of the user's words.
type words struct {
	t    *testing.T
	seen int
}

// check fails the test when msg, the answer to input, speaks Go; what the
// input itself holds does not count (it is the user's text quoted back).
func (w *words) check(what, msg, input string) {
	w.t.Helper()
	w.seen++
	if g := wording.GoInternals(msg, input); g != "" {
		w.t.Errorf("%s: the message %q speaks Go (%q)", what, msg, g)
	}
}

// natsAnswer sends a request and returns the reply as a map.
func natsAnswer(t *testing.T, nc *nats.Conn, subject, body string) map[string]any {
	t.Helper()
	msg, err := nc.Request(subject, []byte(body), 10*time.Second)
	if err != nil {
		t.Fatalf("%s %s: %v", subject, body, err)
	}
	var out map[string]any
	if err := json.Unmarshal(msg.Data, &out); err != nil {
		t.Fatalf("%s %s: reply %q: %v", subject, body, msg.Data, err)
	}
	return out
}

func errMessage(out map[string]any) string {
	e, _ := out["error"].(map[string]any)
	s, _ := e["message"].(string)
	return s
}

// adminRaw sends a raw body to a node's admin API.
func adminRaw(t *testing.T, net *testnet.Net, i int, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+net.Node(i).AdminAddr()+path, strings.NewReader(body))
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
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: answer %q: %v", method, path, b, err)
	}
	return resp.StatusCode, out
}

// TestBadInputInTheUsersWords: every subject and admin call refuses bad
// input with a message that names the field and what it must be, never Go's
// type names; unknown members are refused by name. The canonical cases are
// checked word for word.
func TestBadInputInTheUsersWords(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Reviewer: testnet.At(1), Partners: map[int][]int{0: {1}, 1: {0}},
		Configure: func(_ int, c *node.Config) { c.Review.NATSDecide = true }})
	net.WaitMembers(20 * time.Second)
	a, r := net.NATS(0), net.NATS(1)
	w := &words{t: t}
	exact := map[string]string{
		`{"since":-1}`: "bad request: `since` must be a non-negative integer, got -1 (expected {\"since\": <version>, \"limit\"?: <n>})",
		`{"sinc":5}`:   "bad request: unknown field `sinc` (did you mean `since`?) (expected {\"since\": <version>, \"limit\"?: <n>})",
		`{"acton":"create","data_type":"vm","payload":{"id":"1"}}`:    "bad request: unknown field `acton` (did you mean `action`?) (expected {\"action\", \"data_type\", \"payload\", \"idempotency_key\"?})",
		`{"action":5,"data_type":"vm","payload":{"id":"1"}}`:          "bad request: `action` must be a string, got 5 (expected {\"action\", \"data_type\", \"payload\", \"idempotency_key\"?})",
		`{"type":"insert","table_name":"tb","table_id":-1,"data":{}}`: "bad request: `table_id` must be a non-negative integer, got -1 (expected {\"type\", \"table_name\", \"table_id\", \"data\", \"description\", \"idempotency_key\"?})",
	}
	for _, tc := range []struct{ subject, body, code string }{
		{"ferry.propagate", `{"acton":"create","data_type":"vm","payload":{"id":"1"}}`, "bad_request"},
		{"ferry.propagate", `{"action":5,"data_type":"vm","payload":{"id":"1"}}`, "bad_request"},
		{"ferry.propagate", `{"action":"create","data_type":["vm"],"payload":{"id":"1"}}`, "bad_request"},
		{"ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":true}}`, "bad_request"},
		{"ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"1"},"idempotency_key":5}`, "bad_request"},
		{"ferry.propagate", `[1,2]`, "bad_request"},
		{"ferry.propagate", `"x"`, "bad_request"},
		{"ferry.propagate", ``, "bad_request"},
		{"ferry.propagate", `{"action":"create",`, "bad_request"},
		{"ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"1"}} trailing`, "bad_request"},
		{"ferry.propagate", `{"action":"considers","data_type":"vm","payload":{"peer_ids":"x"}}`, "bad_request"},
		{"ferry.propagate", `{"action":"planner","data_type":"vm","payload":{"peer_id":5}}`, "bad_request"},
		{"ferry.propagate", `{"action":"close_planner","payload":{"peer_id":[1]}}`, "bad_request"},
		{"ferry.propagate", `{"action":"search","data_type":"vm","payload":{"search":5}}`, "bad_request"},
		{"ferry.propagate", `{"action":"search","data_type":"vm","payload":{"search":"x","limt":3}}`, "bad_request"},
		{"ferry.propagate", `{"action":"search","data_type":"vm","payload":{"search":"x","limit":"a"}}`, "bad_request"},
		{"ferry.changes", `{"since":-1}`, "bad_request"},
		{"ferry.changes", `{"since":"5"}`, "bad_request"},
		{"ferry.changes", `{"since":1.5}`, "bad_request"},
		{"ferry.changes", `{"sinc":5}`, "bad_request"},
		{"ferry.changes", `[1]`, "bad_request"},
		{"ferry.changes", `nope`, "bad_request"},
		{"ferry.review.submit", `{"type":"insert","table_name":"tb","table_id":-1,"data":{}}`, "bad_request"},
		{"ferry.review.submit", `{"type":"insert","table_name":"tb","table_id":"1","data":{}}`, "bad_request"},
		{"ferry.review.submit", `{"type":5,"table_name":"tb","table_id":1,"data":{}}`, "bad_request"},
		{"ferry.review.submit", `{"type":"insert","table_name":"tb","table_id":1,"data":{},"descripton":"x"}`, "bad_request"},
		{"ferry.review.submit", `{"type":"insert","table_name":"tb","table_id":1,"data":{},"description":{"sender":"x"}}`, "bad_request"},
		{"ferry.review.submit", `not json`, "bad_request"},
		{"ferry.delivery.status", `{"version":"x"}`, "bad_request"},
		{"ferry.delivery.status", `{"versoin":1}`, "bad_request"},
		{"ferry.delivery.status", `[1]`, "bad_request"},
		{"ferry.delivery.wait", `{"version":1,"timeout_ms":"soon"}`, "bad_request"},
		{"ferry.delivery.wait", `{"version":1,"receivers":"B"}`, "bad_request"},
		{"ferry.delivery.wait", `{"version":1,"receivers":["nope"]}`, "bad_request"},
	} {
		out := natsAnswer(t, a, tc.subject, tc.body)
		msg := errMessage(out)
		if out["ok"] != false || errCode(out) != tc.code || msg == "" {
			t.Errorf("%s %s: %v, want %s", tc.subject, tc.body, out, tc.code)
			continue
		}
		if want, ok := exact[tc.body]; ok && msg != want {
			t.Errorf("%s %s:\n got %s\nwant %s", tc.subject, tc.body, msg, want)
		}
		w.check(tc.subject+" "+tc.body, msg, tc.body)
	}
	// ferry.review.decide on the reviewer (review.nats_decide is on there).
	for _, body := range []string{`{"request_id":"x","decision":"accept"}`, `{"request_id":-1,"decision":"accept"}`,
		`{"request_id":1,"decison":"accept"}`, `{"request_id":1,"decision":"edit","set":{"a":1}}`} {
		out := natsAnswer(t, r, "ferry.review.decide", body)
		if out["ok"] != false || errCode(out) != "bad_request" {
			t.Errorf("ferry.review.decide %s: %v, want bad_request", body, out)
			continue
		}
		w.check("ferry.review.decide "+body, errMessage(out), body)
	}
	// The admin API: bodies, paths and queries.
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/api/v1/propagate", `{"action":"create","data_type":"vm","payload":{"id":"1"},"extra":1}`},
		{"POST", "/api/v1/propagate", `{"action":5}`},
		{"POST", "/api/v1/propagate", `[1]`},
		{"POST", "/api/v1/review/submit", `{"type":"insert","table_name":"tb","table_id":-1,"data":{}}`},
		{"POST", "/api/v1/partners", `{"peer_id":5}`},
		{"POST", "/api/v1/partners", `{"peerid":"x"}`},
		{"POST", "/api/v1/search", `{"data_type":"vm","search":"x","limit":"x"}`},
		{"POST", "/api/v1/requests/1/accept", `{"note":5}`},
		{"POST", "/api/v1/requests/x/accept", ``},
		{"GET", "/api/v1/changes?since=-1", ``},
		{"GET", "/api/v1/acks?limit=x", ``},
		{"GET", "/api/v1/acks?after=x", ``},
		{"GET", "/api/v1/resources?limit=0", ``},
	} {
		status, out := adminRaw(t, net, 0, tc.method, tc.path, tc.body)
		if status != 400 || errCode(out) != "bad_request" {
			t.Errorf("%s %s %s: %d %v, want 400 bad_request", tc.method, tc.path, tc.body, status, out)
			continue
		}
		w.check(tc.method+" "+tc.path+" "+tc.body, errMessage(out), tc.path+tc.body)
	}
	if w.seen < 40 {
		t.Fatalf("only %d messages checked", w.seen)
	}
}
